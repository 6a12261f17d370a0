"""Language models: per-sequence losses for sequence-level Selective-Backprop (SPEC section 9).

For a causal LM the unit that saves compute is the sequence: a dropped sequence runs neither forward with
gradients nor backward, while a dropped token saves nothing. These functions reduce a batch to one loss
per sequence, without a host sync:

- :func:`sequence_losses`: from logits (B, T, V), in one pass over them (a Triton kernel on CUDA, native
  C++ on CPU), reading any strides along B and T in place;
- :func:`linear_sequence_losses`: from the last hidden states (B, T, H) and the LM head (V, H), so the
  (B, T, V) logits never exist (at V = 128,256 and 8 x 1024 tokens they would take 2 GB in bf16): on CUDA
  one fused Triton kernel (``tl.dot`` vocabulary tiles in registers, an online logsumexp); on CPU one
  (tokens, vocabulary) tile at a time (a matrix product, then the native tile statistics).

Every policy takes LM batches directly: ``SB(beta=1)(logits, labels)`` with (B, T, V) logits selects whole
sequences, and :meth:`sbkernels.SelectiveBackprop.observe` takes the same (or ``lm_head=`` with hidden
states).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import _checks as checks
from . import ops
from .ops import TILE_BYTES


def sequence_losses(
    logits: Tensor,
    labels: Tensor,
    *,
    shift: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    backend: str | None = None,
) -> Tensor:
    """(B,) float32 loss per sequence of LM logits (B, T, V) and labels (B, T).

    Args:
        logits: (B, T, V) float32 / bfloat16 / float16, unit stride along V (any strides along B and T).
        labels: (B, T) int64 / int32; tokens labelled ``ignore_index`` do not count.
        shift: the causal shift of Hugging Face models: position t is scored against label t + 1.
        reduction: "mean" over each sequence's valid tokens, or "sum".
        label_smoothing: as in ``F.cross_entropy``, in [0, 1).
        softcap, logit_scale: a capped or scaled head's transform of every logit before the loss,
            ``softcap * tanh(logit_scale * x / softcap)`` (:func:`sbkernels.reference.head_logits`): Gemma-2's
            ``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``.
        backend: "auto" (Triton on CUDA, native C++ on CPU), "native", "triton" or "reference".

    A sequence with no valid token gets loss 0 (policies treat it as an ignored row: never selected); one
    with a label outside [0, V) gets NaN.
    """
    checks.check_sequence_logits(logits, labels)
    checks.check_sequence_options(shift, reduction, label_smoothing)
    checks.check_head_transform(softcap, logit_scale)
    loss, _ = ops.sequence_losses(
        logits=logits, labels=labels, shift=shift, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, softcap=softcap, logit_scale=logit_scale,
        backend=ops.resolve(backend, logits.device),
    )  # fmt: skip
    return loss


def linear_sequence_losses(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    shift: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    tile_bytes: int = TILE_BYTES,
    backend: str | None = None,
) -> Tensor:
    """:func:`sequence_losses` of ``hidden @ weight.T + bias`` without forming those (B, T, V) logits.

    ``hidden`` (B, T, H) are the last hidden states (``output_hidden_states=True``, the last entry, after
    the final norm) and ``weight`` (V, H) the LM head's (``model.get_output_embeddings().weight``), in
    the same dtype; under autocast both are cast to its dtype first, as the head's own ``F.linear`` would
    (:func:`autocast_head`). The logits are formed and reduced one tile of at most ``tile_bytes`` at a time
    (on CPU; on CUDA one Triton kernel keeps each tile in registers), so the extra memory is one tile,
    whatever B, T and V. ``softcap`` and ``logit_scale`` as in :func:`sequence_losses`, applied to each tile
    (in the fused Triton kernel, in registers).
    """
    hidden, weight, bias = autocast_head(hidden, weight, bias)
    checks.check_sequence_hidden(hidden, weight, bias, labels)
    checks.check_sequence_options(shift, reduction, label_smoothing)
    checks.check_head_transform(softcap, logit_scale)
    checks.check_int("tile_bytes", tile_bytes, 1, 2**62)
    loss, _ = ops.linear_sequence_losses(
        hidden=hidden, weight=weight, bias=bias, labels=labels, shift=shift, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, softcap=softcap, logit_scale=logit_scale,
        tile_bytes=tile_bytes,
        backend=ops.resolve(backend, hidden.device),
    )  # fmt: skip
    return loss


def autocast_head(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The hidden states and the LM head as the head's ``F.linear`` sees them: under autocast on the hidden
    states' device, the tensors cast to its dtype (so the logits are formed in the precision the model's own
    would be), else unchanged. Anything that is not a tensor passes as it is, for the checks to name."""
    if not isinstance(hidden, Tensor) or not _autocast_enabled(hidden.device):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(hidden.device.type)

    def cast(t: Any) -> Any:
        return t.to(dtype) if isinstance(t, Tensor) else t

    return cast(hidden), cast(weight), cast(bias)


def _autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``; a device type with no autocast (``meta``) has it off, so that the
    argument checks, not the autocast query, say what is wrong with such tensors."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return False


def lm_head_parameters(lm_head: nn.Module | Tensor) -> tuple[Tensor, Tensor | None]:
    """``(weight, bias)`` of an LM head given as a module with ``weight`` (e.g. ``nn.Linear``) or a tensor."""
    if isinstance(lm_head, Tensor):
        return lm_head, None
    weight = getattr(lm_head, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(
            f"lm_head must be the LM head module (with .weight, e.g. model.get_output_embeddings()) or its "
            f"(V, H) weight, got {type(lm_head).__name__}"
        )
    bias = getattr(lm_head, "bias", None)
    return weight, bias if isinstance(bias, Tensor) else None
