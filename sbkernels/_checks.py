"""Argument checks run before any launch. They read tensor metadata only, so they never synchronize.

Each error names the value and the fix."""

from __future__ import annotations

import math
from typing import TypeGuard

import torch

from .slots import ROW_IGNORED
from .state import SelectorState

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TARGET_DTYPES = (torch.int64, torch.int32)
LOSS_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _fail(message: str) -> None:
    raise ValueError(message)


def check_state(state: SelectorState, device: torch.device, what: str) -> None:
    if not isinstance(state, SelectorState):
        raise TypeError(f"state must be a sbkernels.SelectorState, got {type(state).__name__}")
    if state.device != device:
        _fail(f"state lives on {state.device} but {what} is on {device}; create the state on the same device")


def check_logits_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("logits and targets must be tensors")
    if logits.dim() != 2:
        _fail(f"logits must be 2-D (N, C), got shape {tuple(logits.shape)}")
    n, num_classes = logits.shape
    if n < 1:
        _fail("logits must have at least one row (N >= 1)")
    if num_classes < 2:
        _fail(f"logits must have at least 2 classes (C >= 2), got C = {num_classes}")
    if logits.dtype not in LOGIT_DTYPES:
        _fail(f"logits dtype must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.stride(1) != 1:
        _fail(f"logits must have unit stride along the class dim (stride(1) == 1), got strides {logits.stride()}")
    if targets.dim() != 1 or targets.shape[0] != n:
        _fail(f"targets must have shape ({n},) to match logits, got {tuple(targets.shape)}")
    if targets.dtype not in TARGET_DTYPES:
        _fail(f"targets dtype must be int64 or int32, got {targets.dtype}")
    if targets.device != logits.device:
        _fail(f"targets are on {targets.device} but logits are on {logits.device}")


def check_losses(losses: torch.Tensor) -> None:
    if not isinstance(losses, torch.Tensor):
        raise TypeError("losses must be a tensor")
    if losses.dim() != 1 or losses.shape[0] < 1:
        _fail(f"losses must be 1-D with at least one element, got shape {tuple(losses.shape)}")
    if losses.dtype not in LOSS_DTYPES:
        _fail(f"losses dtype must be a floating type, got {losses.dtype}")


def _is_real(x: object) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_sb_params(beta: float, floor: float, prime: int, label_smoothing: float = 0.0) -> None:
    if not _is_real(beta) or beta <= 0:
        _fail(f"beta must be a finite number > 0, got {beta!r}")
    if not _is_real(floor) or not 0.0 <= floor <= 1.0:
        _fail(f"floor must be in [0, 1], got {floor!r}")
    if isinstance(prime, bool) or not isinstance(prime, int) or prime < 0:
        _fail(f"prime must be an int >= 0, got {prime!r}")
    check_label_smoothing(label_smoothing)


def check_label_smoothing(label_smoothing: float) -> None:
    if not _is_real(label_smoothing) or not 0.0 <= label_smoothing < 1.0:
        _fail(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")


def check_k(k: object, n: int, smallest: int = 0) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not smallest <= k <= n:
        _fail(f"k must be an int in [{smallest}, N={n}], got {k!r}")


def check_fraction(name: str, value: object, low_open: bool = True) -> None:
    """``value`` in (0, 1] (or [0, 1] with ``low_open=False``)."""
    ok = _is_real(value) and (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0)
    if not ok:
        _fail(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")


def check_source(source: torch.Tensor, targets: torch.Tensor | None, state: SelectorState) -> None:
    """(N, C) logits with (N,) targets, or (N,) losses with ``targets=None``; the state on their device."""
    if targets is not None:
        check_logits_targets(source, targets)
    else:
        check_losses(source)
    check_state(state, source.device, "logits" if targets is not None else "losses")


# Projected-gradient iterations of each OMP refit (sbkernels.ops._omp.omp_nnls): 60 by default; the refit starts
# from the previous weights, so a few hundred converge, and k * steps bounds the op's time.
MAX_GRADMATCH_STEPS = 1000


def check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(f"{name} must be an int in [{low}, {high}], got {value!r}")


def check_ignore_index(ignore_index: object) -> None:
    """The target value of rows to skip: any int64 (a float, a tensor or a larger int is refused here, by name,
    instead of by the C++ op's argument parser)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not -(2**63) <= ignore_index < 2**63:
        _fail(f"ignore_index must be an int64 target value (e.g. -100, the default), got {ignore_index!r}")


def check_row_offset(row_offset: object, n: int) -> None:
    check_int("row_offset", row_offset, 0, 2**32 - n)


def check_gradmatch_steps(steps: object) -> None:
    """The refit's iteration count: >= 1 (0 would leave every weight 0 and select nothing), bounded above."""
    check_int("steps", steps, 1, MAX_GRADMATCH_STEPS)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} of shape {tuple(x.shape)}"
    return type(x).__name__


def check_features(features: torch.Tensor | None, logits: torch.Tensor) -> None:
    """gradmatch's optional penultimate features: leading dim N, on the logits' device."""
    n = logits.shape[0]
    if features is not None and (
        not isinstance(features, torch.Tensor)
        or features.dim() < 1
        or features.shape[0] != n
        or features.device != logits.device
    ):
        _fail(f"features must have leading dim {n} and live on {logits.device}, got {_describe(features)}")


def check_rate_or_k(rate: float | None, k: int | None) -> None:
    """Policy "uniform": exactly one of a rate in [0, 1] and a count k."""
    if (rate is None) == (k is None):
        _fail("pass exactly one of rate or k")
    if rate is not None:
        check_fraction("rate", rate, low_open=False)


REDUCTIONS = ("mean", "sum")


def check_sequence_logits(logits: object, labels: object) -> None:
    """Language-model logits (B, T, V) with unit stride along V and labels (B, T) on their device."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"logits and labels must be tensors, got {_describe(logits)} and {_describe(labels)}")
    if logits.dim() != 3:
        _fail(f"logits must be 3-D (B, T, V) for per-sequence losses, got shape {tuple(logits.shape)}")
    batch, length, vocab = logits.shape
    if batch < 1 or length < 1 or vocab < 2:
        _fail(f"logits need B >= 1, T >= 1 and V >= 2, got shape {tuple(logits.shape)}")
    if logits.dtype not in LOGIT_DTYPES:
        _fail(f"logits dtype must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.stride(2) != 1 or min(logits.stride()) < 0:
        _fail(f"logits need unit stride along V (stride(2) == 1), got strides {logits.stride()}; pass .contiguous()")
    _check_labels(labels, batch, length, logits.device)


def _check_labels(labels: torch.Tensor, batch: int, length: int, device: torch.device) -> None:
    if tuple(labels.shape) != (batch, length):
        _fail(f"labels must have shape (B, T) = ({batch}, {length}), got {tuple(labels.shape)}")
    if labels.dtype not in TARGET_DTYPES:
        _fail(f"labels dtype must be int64 or int32, got {labels.dtype}")
    if labels.device != device or min(labels.stride()) < 0:
        _fail(f"labels must be on {device} with non-negative strides, got {labels.device}, {labels.stride()}")


def check_sequence_hidden(hidden: object, weight: object, bias: object, labels: object) -> None:
    """Last hidden states (B, T, H), the LM head's weight (V, H) (and bias (V,)) and labels (B, T)."""
    tensors = (hidden, weight, labels)
    if not all(isinstance(t, torch.Tensor) for t in tensors) or not isinstance(bias, (torch.Tensor, type(None))):
        raise TypeError("hidden, weight and labels must be tensors (bias a tensor or None)")
    assert isinstance(hidden, torch.Tensor) and isinstance(weight, torch.Tensor) and isinstance(labels, torch.Tensor)
    if hidden.dim() != 3 or min(hidden.shape) < 1:
        _fail(f"hidden must be 3-D (B, T, H) with B, T, H >= 1, got shape {tuple(hidden.shape)}")
    width = hidden.shape[2]
    if weight.dim() != 2 or weight.shape[1] != width or weight.shape[0] < 2:
        _fail(f"weight must be the LM head's (V, H) = (V >= 2, {width}), got shape {tuple(weight.shape)}")
    if hidden.dtype not in LOGIT_DTYPES or weight.dtype != hidden.dtype:
        _fail(
            f"hidden and weight must share a float32/bfloat16/float16 dtype, got {hidden.dtype}, {weight.dtype}: "
            "score under the model's autocast (both are then cast as the LM head's F.linear would cast them) "
            "or cast one to the other's dtype"
        )
    if weight.device != hidden.device:
        _fail(f"weight is on {weight.device} but hidden is on {hidden.device}")
    if bias is not None:
        assert isinstance(bias, torch.Tensor)
        if tuple(bias.shape) != (weight.shape[0],) or bias.dtype != hidden.dtype or bias.device != hidden.device:
            _fail(f"bias must be ({weight.shape[0]},) {hidden.dtype} on {hidden.device}, got {_describe(bias)}")
    _check_labels(labels, hidden.shape[0], hidden.shape[1], hidden.device)


def check_head_transform(softcap: object, logit_scale: object) -> None:
    """A capped or scaled LM head: ``softcap`` None or a finite number > 0, ``logit_scale`` finite > 0."""
    if softcap is not None and (not _is_real(softcap) or softcap <= 0):
        _fail(f"softcap must be None or a finite number > 0 (e.g. config.final_logit_softcapping), got {softcap!r}")
    if not _is_real(logit_scale) or logit_scale <= 0:
        _fail(f"logit_scale must be a finite number > 0 (e.g. config.logit_scale), got {logit_scale!r}")


def check_sequence_options(shift: object, reduction: object, label_smoothing: object) -> None:
    if not isinstance(shift, bool):
        _fail(f"shift must be a bool, got {shift!r}")
    if reduction not in REDUCTIONS:
        _fail(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_label_smoothing(label_smoothing)  # type: ignore[arg-type]


def valid_flags(valid: object, source: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor | None:
    """Row flags (sbkernels._rows.row_flags) from a caller's (N,) bool mask of given losses: rows not valid are
    ignored rows. None without a mask; with logits (``targets`` given) a mask is refused."""
    if valid is None:
        return None
    if targets is not None:
        _fail("valid= marks rows of given losses; with logits, mark rows by ignore_index")
    return with_valid(torch.zeros(source.shape[0], dtype=torch.int8, device=source.device), valid, "losses")


def with_valid(flags: torch.Tensor, valid: object, what: str) -> torch.Tensor:
    """``flags`` with every row that the caller's (N,) bool mask ``valid`` leaves out marked ignored (no sync)."""
    n = flags.shape[0]
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != (n,):
        _fail(f"valid must be a bool tensor of shape ({n},) (one entry per row of the {what}), got {_describe(valid)}")
    assert isinstance(valid, torch.Tensor)
    if valid.device != flags.device:
        _fail(f"valid is on {valid.device} but the {what} are on {flags.device}")
    return flags.masked_fill(~valid, ROW_IGNORED)
