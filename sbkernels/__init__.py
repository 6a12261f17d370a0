"""sbkernels: fast Selective-Backprop selection for PyTorch.

Quick start::

    state = sbkernels.SelectorState(history_size=1024, seed=0, device="cuda")
    sel = sbkernels.select(logits, targets, state, beta=2.0)    # or sbkernels.SB(beta=2.0)(logits, targets)
    pool = sbkernels.SelectionPool(batch_size=128)
    pool.push(sel, images, labels)             # gathers the selected rows on the device, no sync
    for x, y in pool.ready_batches():          # exactly 128 rows each
        ...
"""

from . import library  # noqa: F401  (first: loads the compiled ops, or fails with the build instruction)
from .batch_spec import BackwardBatch
from .gather import gather_rows
from .policies import (
    POLICIES,
    SB,
    GradMatch,
    Importance,
    Keep,
    Policy,
    Uniform,
    select,
    select_gradmatch,
    select_importance,
    select_keep,
    select_losses,
    select_uniform,
)
from .pool import SelectionPool
from .schedule import Schedule, StaleSB
from .selection import Selection
from .state import SelectorState
from .trainer import SelectiveBackprop

__all__ = [
    "POLICIES",
    "SB",
    "BackwardBatch",
    "GradMatch",
    "Importance",
    "Keep",
    "Policy",
    "Schedule",
    "Selection",
    "SelectionPool",
    "SelectiveBackprop",
    "SelectorState",
    "StaleSB",
    "Uniform",
    "gather_rows",
    "select",
    "select_gradmatch",
    "select_importance",
    "select_keep",
    "select_losses",
    "select_uniform",
]

__version__ = "0.1.0"
