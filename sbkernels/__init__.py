"""sbkernels: fast Selective-Backprop selection for PyTorch.

The training loop is in :class:`SelectiveBackprop`'s docstring and the README; the contract is docs/SPEC.md.
Layers, top down: :mod:`.integrations` (Hugging Face, Lightning), :mod:`.estimate` and :mod:`.pilot`; :mod:`.trainer`
(``SelectiveBackprop``), :mod:`.lm` (per-sequence losses), :mod:`.policies`, :mod:`.distributed`,
:mod:`.pool`, :mod:`.ops` (one typed function per registered op, one backend table), :mod:`.kernels`
(Triton), ``csrc/`` (C++/CUDA), and :mod:`.reference`, the definition every kernel is tested against.
"""

from . import slots  # noqa: F401  (first: loads the compiled ops, or fails with the build instruction)
from .distributed import release_collective_tensors
from .estimate import Estimate, estimate
from .lm import linear_sequence_losses, sequence_losses
from .ops import gather_rows, new_cursor
from .pilot import PilotReport, pilot
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
from .pool import BackwardBatch, SelectionPool
from .schedule import ComposerSchedule, Schedule, StaleSB
from .selection import Selection
from .state import SelectorState
from .trainer import SelectiveBackprop

__all__ = [
    "POLICIES",
    "SB",
    "BackwardBatch",
    "ComposerSchedule",
    "Estimate",
    "GradMatch",
    "Importance",
    "Keep",
    "PilotReport",
    "Policy",
    "Schedule",
    "Selection",
    "SelectionPool",
    "SelectiveBackprop",
    "SelectorState",
    "StaleSB",
    "Uniform",
    "estimate",
    "gather_rows",
    "linear_sequence_losses",
    "new_cursor",
    "pilot",
    "release_collective_tensors",
    "select",
    "select_gradmatch",
    "select_importance",
    "select_keep",
    "select_losses",
    "select_uniform",
    "sequence_losses",
]

__version__ = "0.1.0"
