"""sbkernels: fast Selective-Backprop selection for PyTorch.

Quick start::

    state = sbkernels.SelectorState(history_size=1024, seed=0, device="cuda")
    sel = sbkernels.select(logits, targets, state, beta=2.0)
    rows = sel.indices[: int(sel.count)]   # or hand `sel` to a SelectionPool, which never syncs
"""

from .ops import select, select_losses
from .selection import Selection
from .state import SelectorState

__all__ = ["Selection", "SelectorState", "select", "select_losses"]
__version__ = "0.1.0"
