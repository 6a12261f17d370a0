"""sbkernels: fast Selective-Backprop selection for PyTorch.

Quick start::

    state = sbkernels.SelectorState(history_size=1024, seed=0, device="cuda")
    sel = sbkernels.select(logits, targets, state, beta=2.0)
    pool = sbkernels.SelectionPool(batch_size=128)
    pool.push(sel, images, labels)             # gathers the selected rows on the device, no sync
    for x, y in pool.ready_batches():          # exactly 128 rows each
        ...
"""

from .gradmatch import select_gradmatch
from .ops import select, select_losses
from .policies import select_importance, select_keep, select_uniform
from .selection import Selection
from .state import SelectorState

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


def __getattr__(name: str):
    # The pool and gather need the compiled extension; importing them lazily keeps `select` usable in a
    # checkout that has not been built.
    if name == "SelectionPool":
        from .pool import SelectionPool

        return SelectionPool
    if name in ("SelectiveBackprop", "BackwardBatch"):
        from . import trainer

        return getattr(trainer, name)
    if name == "gather_rows":
        from .gather import gather_rows

        return gather_rows
    raise AttributeError(f"module 'sbkernels' has no attribute {name!r}")


__version__ = "0.1.0"
