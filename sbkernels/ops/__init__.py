"""The ops layer: every registered op of sbkernels, each with one typed function (SPEC section 1).

The policies, the distributed selection and the trainer call these functions with keyword arguments; the
functions are the only code that names an op. Below them the op body (:mod:`._definitions`) takes its
kernel from the one backend table (:data:`.backends.KERNELS`): Triton, native C++ or the reference. The
arguments are trusted here: the public functions (:mod:`sbkernels.policies`) check them first, and a direct
``torch.ops.sbkernels.<op>`` call runs the op's own checks.

Each selection op mutates the state it is given (``history``, ``meta``) on the device and returns a
:class:`~sbkernels.Selection`; none synchronizes with the host.
"""

from __future__ import annotations

from torch import Tensor

from ..selection import Selection
from . import _definitions, _fakes  # noqa: F401  (registers the Python ops and the C++ ops' fakes)
from ._gather import gather_rows, new_cursor
from ._registry import call, python_implementation
from ._sequence import TILE_BYTES
from .backends import BACKENDS, resolve

__all__ = [
    "BACKENDS",
    "TILE_BYTES",
    "gather_rows",
    "gradmatch",
    "importance",
    "keep",
    "linear_sequence_losses",
    "new_cursor",
    "python_implementation",
    "resolve",
    "row_losses",
    "select_sb",
    "sequence_losses",
    "uniform",
]


def select_sb(
    *, logits: Tensor | None = None, targets: Tensor | None = None, losses: Tensor | None = None,
    flags: Tensor | None = None, history: Tensor, meta: Tensor, beta: float, floor: float, prime: int,
    ignore_index: int = -100, label_smoothing: float = 0.0, backend: str,
) -> Selection:  # fmt: skip
    """Policy "sb" (SPEC section 2): from (N, C) ``logits`` and ``targets``, or from (N,) ``losses`` (with
    their ``flags`` when they were gathered from the ranks of a group)."""
    return Selection(
        *call(
            "select_sb", logits, targets, losses, flags, history, meta, float(beta), float(floor), prime,
            ignore_index, float(label_smoothing), backend,
        )
    )  # fmt: skip


def uniform(
    *, logits: Tensor | None = None, targets: Tensor | None = None, losses: Tensor | None = None,
    flags: Tensor | None = None, history: Tensor, meta: Tensor, rate: float | None = None, k: int | None = None,
    row_offset: int = 0, ignore_index: int = -100, backend: str,
) -> Selection:  # fmt: skip
    """Policy "uniform": each valid row with probability ``rate`` (pushes the losses), or exactly ``k`` rows."""
    return Selection(
        *call(
            "uniform", logits, targets, losses, flags, history, meta, -1.0 if rate is None else float(rate),
            -1 if k is None else k, row_offset, ignore_index, backend,
        )
    )  # fmt: skip


def keep(
    *, logits: Tensor | None = None, targets: Tensor | None = None, losses: Tensor | None = None,
    flags: Tensor | None = None, meta: Tensor, keep: float, row_offset: int = 0, ignore_index: int = -100,
    backend: str,
) -> Selection:  # fmt: skip
    """Policy "keep" (Composer): ``int(keep * N)`` rows drawn by rank weight without replacement."""
    return Selection(
        *call("keep", logits, targets, losses, flags, meta, float(keep), row_offset, ignore_index, backend)
    )


def importance(
    *, logits: Tensor, targets: Tensor, meta: Tensor, k: int, row_offset: int = 0, ignore_index: int = -100,
    backend: str,
) -> Selection:  # fmt: skip
    """Policy "importance": k draws proportional to ``||softmax - onehot||_2``, with unbiasing weights."""
    return Selection(*call("importance", logits, targets, meta, k, row_offset, ignore_index, backend))


def gradmatch(
    *, logits: Tensor, targets: Tensor, features: Tensor | None = None, meta: Tensor, k: int, steps: int,
    ignore_index: int = -100, backend: str,
) -> Selection:  # fmt: skip
    """Policy "gradmatch": k rows and weights matching the batch's mean last-layer gradient."""
    return Selection(*call("gradmatch", logits, targets, features, meta, k, steps, ignore_index, backend))


def row_losses(
    *, logits: Tensor | None = None, targets: Tensor | None = None, losses: Tensor | None = None,
    ignore_index: int = -100, label_smoothing: float = 0.0, backend: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(loss, flags)`` per row (SPEC section 2; flags from :func:`sbkernels._rows.row_flags`), no state touched."""
    return call("row_losses", logits, targets, losses, ignore_index, float(label_smoothing), backend)


def sequence_losses(
    *, logits: Tensor, labels: Tensor, shift: bool = True, ignore_index: int = -100, reduction: str = "mean",
    label_smoothing: float = 0.0, softcap: float | None = None, logit_scale: float = 1.0, backend: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(loss, flags)`` per sequence of LM logits (B, T, V) and labels (B, T) (SPEC section 9); a capped or
    scaled head's transform (:func:`sbkernels.reference.head_logits`) applied to the logits first."""
    return call(
        "sequence_losses", logits, labels, shift, ignore_index, reduction, float(label_smoothing),
        float(softcap or 0.0), float(logit_scale), backend,
    )  # fmt: skip


def linear_sequence_losses(
    *, hidden: Tensor, weight: Tensor, bias: Tensor | None = None, labels: Tensor, shift: bool = True,
    ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
    softcap: float | None = None, logit_scale: float = 1.0, tile_bytes: int = TILE_BYTES,
    backend: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """As :func:`sequence_losses` with ``logits = hidden @ weight.T + bias``, never holding more than a tile
    of ``tile_bytes`` of those logits."""
    return call(
        "linear_sequence_losses", hidden, weight, bias, labels, shift, ignore_index, reduction,
        float(label_smoothing), float(softcap or 0.0), float(logit_scale), tile_bytes, backend,
    )  # fmt: skip
