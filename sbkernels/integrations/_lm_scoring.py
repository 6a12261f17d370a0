"""What the Hugging Face integration checks once, on its first loader batch, so that it never selects on
losses that are not the model's own (SPEC section 9).

- The labels' alignment. A causal LM scores position t against label t + 1 (the policy's ``shift=True``);
  a masked LM scores each position against its own label. The model's class says which one it uses
  (``*ForMaskedLM``, ``*ForCausalLM``, ``config.is_decoder``); where it does not, the alignment whose
  token-mean cross-entropy matches the model's own loss better decides. A wrong ``shift`` raises.
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


def declared_shift(model: Any) -> bool | None:
    """The label alignment a model declares: True for a causal LM (a ``*ForCausalLM`` or ``*LMHeadModel`` class,
    or ``config.is_decoder``), False for a masked LM (a ``*ForMaskedLM`` class), None when it says neither."""
    name = type(model).__name__
    if "MaskedLM" in name:
        return False
    if (
        "CausalLM" in name
        or name.endswith("LMHeadModel")
        or getattr(getattr(model, "config", None), "is_decoder", False)
    ):
        return True
    return None


def check_label_alignment(
    model_loss: Tensor | None, logits: Tensor, labels: Tensor, policy: Any, declared: bool | None = None
) -> None:
    """Raise when the policy's ``shift`` is not the model's label alignment: the one the model declares
    (:func:`declared_shift`), or, where it declares none, the one whose token-mean cross-entropy matches the
    model's own loss better. Warn when neither matches (a loss with other terms, e.g. a router's, cannot be
    checked this way). Both alignments are computed: on an untrained model they are close to each other,
    so a tolerance around the model's loss would accept either."""
    shift, ignore_index = policy.shift, policy.ignore_index
    mine = _token_mean(logits, labels, shift, ignore_index)
    other = _token_mean(logits, labels, not shift, ignore_index)
    target = None if model_loss is None else float(model_loss)
    better = target is not None and abs(other - target) < abs(mine - target)
    if (declared is not None and declared != shift) or (declared is None and better):
        kind = {True: "a causal LM (labels shifted by one)", False: "a masked LM (labels at their own positions)",
                None: f"scored with shift={not shift}"}[declared]  # fmt: skip
        found = "" if target is None else f" (its loss {target:.4f}; shift={not shift} gives {other:.4f}, {mine:.4f})"
        raise ValueError(
            f"the model is {kind}{found}, while the policy scores with shift={shift}: pass the policy "
            f"shift={not shift} (e.g. sbkernels.SB(shift={not shift}))"
        )
    if target is not None and abs(mine - target) > 1e-3 + 1e-2 * abs(target):
        warnings.warn(
            f"SelectiveBackpropTrainer could not confirm that it scores the model's loss: the model's loss on the "
            f"first batch is {target:.4f}, the token-mean cross-entropy of its logits {mine:.4f} (shift={shift}); "
            "a loss with other terms (e.g. a router's auxiliary loss) explains this",
            stacklevel=3,
        )


def has_hidden_state_route(model: Any) -> bool:
    """Whether the model has what scoring from hidden states needs: a base model apart from itself, whose
    ``last_hidden_state`` it returns, and output embeddings (the LM head)."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    return base is not None and base is not model and head is not None


def head_transform(model: Any) -> dict[str, Any]:
    """``softcap`` and ``logit_scale`` of a model whose logits are a capped or scaled ``hidden @ W.T``, read from
    its config: Gemma-2/3's ``final_logit_softcapping``, Cohere's ``logit_scale`` (a factor), Granite's
    ``logits_scaling`` (a divisor). Empty for a plain head."""
    config = getattr(model, "config", None)
    transform: dict[str, Any] = {}
    softcap = getattr(config, "final_logit_softcapping", None)
    if isinstance(softcap, (int, float)) and softcap > 0:
        transform["softcap"] = float(softcap)
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
        transform["logit_scale"] = float(scale)
    divisor = getattr(config, "logits_scaling", None)
    if isinstance(divisor, (int, float)) and not isinstance(divisor, bool) and divisor > 0:
        transform["logit_scale"] = transform.get("logit_scale", 1.0) / float(divisor)
    return transform


def hidden_state_error(
    logits: Tensor, hidden: Tensor, head: Any, labels: Tensor, policy: Any, softcap: float | None = None,
    logit_scale: float = 1.0,
) -> float:  # fmt: skip
    """The largest difference between the batch's per-sequence losses from the model's logits and from the
    hidden states and ``head`` with the head's transform (over the sequences both score as finite)."""
    from_logits, _ = policy.sequence_losses(logits, labels)
    weight, bias = lm_head_parameters(head)
    from_hidden, _ = policy.linear_sequence_losses(
        hidden, weight.detach(), None if bias is None else bias.detach(), labels, softcap, logit_scale
    )
    both = torch.isfinite(from_logits) & torch.isfinite(from_hidden)
    return float((from_logits - from_hidden).abs().masked_fill(~both, 0.0).max()) if both.numel() else 0.0
