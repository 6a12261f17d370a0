"""sbkernels: fast Selective-Backprop selection for PyTorch.

Quick start::

    state = sbkernels.SelectorState(history_size=1024, seed=0, device="cuda")
    sel = sbkernels.select(logits, targets, state, beta=2.0)
    pool = sbkernels.SelectionPool(batch_size=128)
    pool.push(sel, images, labels)             # gathers the selected rows on the device, no sync
    for x, y in pool.ready_batches():          # exactly 128 rows each
        ...
"""

from . import library  # noqa: F401  (first: loads the compiled ops, or fails with the build instruction)
from .gather import gather_rows
from .gradmatch import select_gradmatch
from .ops import select, select_losses
from .policies import select_importance, select_keep, select_uniform
from .pool import SelectionPool
from .selection import Selection
from .state import SelectorState
from .trainer import BackwardBatch, SelectiveBackprop

__all__ = [
    "BackwardBatch",
    "Selection",
    "SelectionPool",
    "SelectiveBackprop",
    "SelectorState",
    "gather_rows",
    "select",
    "select_gradmatch",
    "select_importance",
    "select_keep",
    "select_losses",
    "select_uniform",
]

__version__ = "0.1.0"
