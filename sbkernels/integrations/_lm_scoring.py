"""What the Hugging Face integration checks once, on its first loader batch, so that it never selects on
losses that are not the model's own (SPEC section 9).

- The labels' alignment. A causal LM scores position t against label t + 1 (the policy's ``shift=True``);
  a masked LM scores each position against its own label. The model's own loss tells which one it uses:
  when it is the token mean of the other alignment, the policy's ``shift`` is wrong and the call raises.
- Scoring from hidden states. ``linear_sequence_losses(last_hidden_state, output_embeddings)`` is the
  model's loss only when its logits are exactly that product. A masked LM's head transforms the hidden
  states first; some models scale or cap their logits. The per-sequence losses of both routes are compared
  on the batch, and the hidden-state route is used only when they agree.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from ..lm import lm_head_parameters, sequence_losses

#: Largest difference, in nats, between a sequence's loss from the hidden states and from the model's logits
#: that still counts as the same loss: autocast's bf16 rounding stays far below it; a missing head transform
#: or a logit cap on a trained model does not.
HIDDEN_STATE_TOLERANCE = 0.02


def _token_mean(logits: Tensor, labels: Tensor, shift: bool, ignore_index: int) -> float:
    total = sequence_losses(logits, labels, shift=shift, ignore_index=ignore_index, reduction="sum").sum()
    scored = labels[:, 1:] if shift else labels
    return float(total / (scored != ignore_index).sum().clamp_min(1))


def check_label_alignment(model_loss: Tensor | None, logits: Tensor, labels: Tensor, policy: Any) -> None:
    """Raise when the model's own loss is the token-mean cross-entropy under the other ``shift``; warn when
    it matches neither (a loss with other terms, e.g. a router's, cannot be checked this way)."""
    if model_loss is None:
        return
    target = float(model_loss)
    shift, ignore_index = policy.shift, policy.ignore_index

    def close(value: float) -> bool:
        return abs(value - target) <= 1e-3 + 1e-2 * abs(target)

    mine = _token_mean(logits, labels, shift, ignore_index)
    if close(mine):
        return
    other = _token_mean(logits, labels, not shift, ignore_index)  # only on a mismatch: which one is it?
    if close(other):
        raise ValueError(
            f"the model's own loss ({target:.4f}) is the cross-entropy of its logits with shift={not shift} "
            f"({other:.4f}), while the policy scores with shift={shift} ({mine:.4f}): pass the policy "
            f"shift={not shift} (e.g. sbkernels.SB(shift=False) for a masked LM, whose labels sit at their "
            "own positions)"
        )
    warnings.warn(
        f"SelectiveBackpropTrainer could not confirm that it scores the model's loss: the model's loss on the "
        f"first batch is {target:.4f}, the token-mean cross-entropy of its logits {mine:.4f} (shift={shift}); "
        "a loss with other terms (e.g. a router's auxiliary loss) explains this",
        stacklevel=3,
    )


def hidden_state_error(logits: Tensor, hidden: Tensor, head: Any, labels: Tensor, policy: Any) -> float:
    """The largest difference between the batch's per-sequence losses from the model's logits and from the
    hidden states and ``head`` (over the sequences both score as finite)."""
    from_logits, _ = policy.sequence_losses(logits, labels)
    weight, bias = lm_head_parameters(head)
    from_hidden, _ = policy.linear_sequence_losses(
        hidden, weight.detach(), None if bias is None else bias.detach(), labels
    )
    both = torch.isfinite(from_logits) & torch.isfinite(from_hidden)
    return float((from_logits - from_hidden).abs().masked_fill(~both, 0.0).max()) if both.numel() else 0.0
