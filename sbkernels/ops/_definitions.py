"""The registered Python ops (``torch.ops.sbkernels.<name>``): each one's argument check and body.

Every body looks its kernel up in :data:`~sbkernels.ops.backends.KERNELS` by the resolved ``backend``
argument, so the backend choice stays in that one table. Positional signatures are the ops' schemas
(``torch.library`` infers them); :mod:`sbkernels.ops` wraps them in typed keyword functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks as checks
from .._rows import row_flags
from ..slots import META_SIZE
from ._op_checks import check_op_inputs
from ._registry import register_op
from .backends import check_resolved, kernel


def _check_select_sb(
    logits, targets, losses, flags, history, meta, beta, floor, prime, ignore_index, label_smoothing, backend
) -> None:
    check_op_inputs(logits, targets, losses, flags, history, meta, backend)
    checks.check_sb_params(beta, floor, prime, label_smoothing)


@register_op("select_sb", mutates_args={"history", "meta"}, check=_check_select_sb)
def _select_sb(
    logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, flags: Tensor | None, history: Tensor,
    meta: Tensor, beta: float, floor: float, prime: int, ignore_index: int, label_smoothing: float, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return kernel("select_sb", backend)(
        logits=logits, targets=targets, losses=losses, flags=flags, history=history, meta=meta, beta=beta,
        floor=floor, prime=prime, ignore_index=ignore_index, label_smoothing=label_smoothing, fixed_prob=-1.0,
    )  # fmt: skip


def _check_uniform(logits, targets, losses, flags, history, meta, rate, k, row_offset, ignore_index, backend) -> None:
    source = check_op_inputs(logits, targets, losses, flags, history, meta, backend)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate <= 1.0:  # NaN fails too
        raise ValueError(f"rate must be in [0, 1], or negative to draw exactly k rows, got {rate!r}")
    if rate < 0:
        checks.check_k(k, source.shape[0])
    checks.check_row_offset(row_offset, source.shape[0])


@register_op("uniform", mutates_args={"history", "meta"}, check=_check_uniform)
def _uniform(
    logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, flags: Tensor | None, history: Tensor,
    meta: Tensor, rate: float, k: int, row_offset: int, ignore_index: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """With ``rate >= 0``: the "sb" kernel with that fixed probability (pushes the losses); else k rows."""
    if rate >= 0:
        return kernel("select_sb", backend)(
            logits=logits, targets=targets, losses=losses, flags=flags, history=history, meta=meta, beta=1.0,
            floor=0.0, prime=0, ignore_index=ignore_index, label_smoothing=0.0, fixed_prob=rate,
        )  # fmt: skip
    out = kernel("sample_rows", backend)(
        logits=logits, targets=targets, losses=losses, flags=flags, meta=meta, policy="uniform", param=0.0, k=k,
        ignore_index=ignore_index, row_offset=row_offset,
    )  # fmt: skip
    return out[:4]


def _check_keep(logits, targets, losses, flags, meta, keep, row_offset, ignore_index, backend) -> None:
    source = check_op_inputs(logits, targets, losses, flags, None, meta, backend)
    checks.check_fraction("keep", keep)
    checks.check_row_offset(row_offset, source.shape[0])


@register_op("keep", mutates_args={"meta"}, check=_check_keep)
def _keep(
    logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, flags: Tensor | None, meta: Tensor,
    keep: float, row_offset: int, ignore_index: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    out = kernel("sample_rows", backend)(
        logits=logits, targets=targets, losses=losses, flags=flags, meta=meta, policy="keep", param=keep, k=0,
        ignore_index=ignore_index, row_offset=row_offset,
    )  # fmt: skip
    return out[:4]


def _check_importance(logits, targets, meta, k, row_offset, ignore_index, backend) -> None:
    check_op_inputs(logits, targets, None, None, None, meta, backend)
    checks.check_k(k, logits.shape[0])
    checks.check_row_offset(row_offset, logits.shape[0])


@register_op("importance", mutates_args={"meta"}, check=_check_importance)
def _importance(
    logits: Tensor, targets: Tensor, meta: Tensor, k: int, row_offset: int, ignore_index: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return kernel("sample_rows", backend)(
        logits=logits, targets=targets, losses=None, flags=None, meta=meta, policy="importance", param=0.0, k=k,
        ignore_index=ignore_index, row_offset=row_offset,
    )  # fmt: skip


def _check_gradmatch(logits, targets, features, meta, k, steps, ignore_index, backend) -> None:
    check_op_inputs(logits, targets, None, None, None, meta, backend)
    checks.check_k(k, logits.shape[0], smallest=1)
    checks.check_gradmatch_steps(steps)
    checks.check_features(features, logits)


@register_op("gradmatch", mutates_args={"meta"}, check=_check_gradmatch)
def _gradmatch(
    logits: Tensor, targets: Tensor, features: Tensor | None, meta: Tensor, k: int, steps: int, ignore_index: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return kernel("gradmatch", backend)(
        logits=logits, targets=targets, features=features, meta=meta, k=k, steps=steps, ignore_index=ignore_index
    )


def _check_row_losses(logits, targets, losses, ignore_index, label_smoothing, backend) -> None:
    check_op_inputs(logits, targets, losses, None, None, None, backend)
    checks.check_label_smoothing(label_smoothing)


@register_op("row_losses", mutates_args={}, check=_check_row_losses)
def _row_losses(
    logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, ignore_index: int, label_smoothing: float,
    backend: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(loss, flags)`` per row: the loss of SPEC section 2 and :func:`~sbkernels._rows.row_flags`."""
    if logits is None:
        assert losses is not None
        loss = losses.to(torch.float32, copy=True)
        return loss, torch.zeros(loss.shape, dtype=torch.int8, device=loss.device)
    unused_meta = torch.zeros(META_SIZE, dtype=torch.int64, device=logits.device)  # no uniforms are drawn
    loss, ignored, bad = kernel("row_losses", backend)(
        logits=logits, targets=targets, meta=unused_meta, ignore_index=ignore_index, label_smoothing=label_smoothing
    )
    return loss, row_flags(ignored, bad)


def _check_sequence_losses(
    logits, labels, shift, ignore_index, reduction, label_smoothing, softcap, logit_scale, backend
) -> None:
    checks.check_sequence_logits(logits, labels)
    checks.check_sequence_options(shift, reduction, label_smoothing)
    checks.check_head_transform(softcap or None, logit_scale)
    check_resolved(backend, logits.device)


@register_op("sequence_losses", mutates_args={}, check=_check_sequence_losses)
def _sequence_losses(
    logits: Tensor, labels: Tensor, shift: bool, ignore_index: int, reduction: str, label_smoothing: float,
    softcap: float, logit_scale: float, backend: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(loss, flags)`` per sequence of LM logits (B, T, V) and labels (B, T) (SPEC section 9); ``softcap``
    0 means none (the schema has no optional float)."""
    return kernel("sequence_losses", backend)(
        logits=logits, labels=labels, shift=shift, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, softcap=softcap or None, logit_scale=logit_scale,
    )  # fmt: skip


def _check_linear_sequence_losses(
    hidden, weight, bias, labels, shift, ignore_index, reduction, label_smoothing, softcap, logit_scale, tile_bytes,
    backend,
) -> None:  # fmt: skip
    checks.check_sequence_hidden(hidden, weight, bias, labels)
    checks.check_sequence_options(shift, reduction, label_smoothing)
    checks.check_head_transform(softcap or None, logit_scale)
    checks.check_int("tile_bytes", tile_bytes, 1, 2**62)
    check_resolved(backend, hidden.device)


@register_op("linear_sequence_losses", mutates_args={}, check=_check_linear_sequence_losses)
def _linear_sequence_losses(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, shift: bool, ignore_index: int,
    reduction: str, label_smoothing: float, softcap: float, logit_scale: float, tile_bytes: int, backend: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(loss, flags)`` per sequence from the last hidden states and the LM head, never forming (B, T, V)."""
    return kernel("linear_sequence_losses", backend)(
        hidden=hidden, weight=weight, bias=bias, labels=labels, shift=shift, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, tile_bytes=tile_bytes, softcap=softcap or None,
        logit_scale=logit_scale,
    )  # fmt: skip
