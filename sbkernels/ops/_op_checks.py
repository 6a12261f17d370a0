"""Checks of the registered ops' own arguments (SPEC section 11).

``torch.ops.sbkernels.<op>`` is public: a direct call gets these checks before the op touches memory (the
Triton interpreter would read outside a short tensor). The typed functions of :mod:`sbkernels.ops` run the
op bodies without them (the public functions have checked their arguments), so the hot path pays for one
set of checks. They read metadata only: no synchronization.
"""

from __future__ import annotations

import torch

from .._checks import _describe, _fail, check_logits_targets, check_losses
from ..slots import META_SIZE
from .backends import check_resolved


def check_op_source(
    logits: torch.Tensor | None, targets: torch.Tensor | None, losses: torch.Tensor | None
) -> torch.Tensor:
    """Exactly one of (N, C) logits with (N,) targets and (N,) losses; returns the one given."""
    if (logits is None) == (losses is None):
        _fail(f"pass logits (with targets) or losses, not {'both' if logits is not None else 'neither'}")
    if logits is not None:
        if targets is None:
            raise ValueError("logits need targets (N,), got None")
        check_logits_targets(logits, targets)
        return logits
    if targets is not None:
        _fail("targets go with logits; losses take none")
    assert losses is not None  # one of the two was given (checked above)
    check_losses(losses)
    return losses


def check_flags(flags: torch.Tensor | None, source: torch.Tensor, losses: torch.Tensor | None) -> None:
    if flags is None:
        return
    if losses is None:
        _fail("flags go with losses, not with logits")
    n = source.shape[0]
    if flags.dtype != torch.int8 or flags.shape != (n,) or flags.device != source.device:
        _fail(f"flags must be int8 of shape ({n},) on {source.device}, got {flags.dtype} {tuple(flags.shape)}")


def check_state_tensors(history: torch.Tensor | None, meta: torch.Tensor, device: torch.device) -> None:
    """``meta`` (and ``history`` when given) as a :class:`SelectorState` holds them, on ``device``."""
    if not isinstance(meta, torch.Tensor) or meta.dtype != torch.int64 or meta.shape != (META_SIZE,):
        _fail(f"meta must be SelectorState.meta (int64 of shape ({META_SIZE},)), got {_describe(meta)}")
    if not meta.is_contiguous() or meta.device != device:
        _fail(f"meta must be contiguous and on {device}, got strides {meta.stride()} on {meta.device}")
    if history is None:
        return
    if not isinstance(history, torch.Tensor) or history.dtype != torch.float32 or history.dim() != 1:
        _fail(f"history must be SelectorState.history (float32 of shape (R,)), got {_describe(history)}")
    if history.numel() < 1 or not history.is_contiguous() or history.device != device:
        _fail(f"history must hold R >= 1 contiguous entries on {device}, got {_describe(history)} on {history.device}")


def check_op_inputs(
    logits: torch.Tensor | None,
    targets: torch.Tensor | None,
    losses: torch.Tensor | None,
    flags: torch.Tensor | None,
    history: torch.Tensor | None,
    meta: torch.Tensor | None,
    backend: object,
) -> torch.Tensor:
    """The tensor arguments every policy op shares (``meta=None``: an op without state); returns the source."""
    source = check_op_source(logits, targets, losses)
    check_flags(flags, source, losses)
    if meta is not None:
        check_state_tensors(history, meta, source.device)
    check_resolved(backend, source.device)
    return source
