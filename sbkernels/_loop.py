"""A selective training loop's pieces, for the tools that run one on copies of the user's model: the estimate
(``sbkernels.estimate``) and the pilot (``sbkernels.pilot``), on their own or through an integration.

- :class:`Trainee`: a fresh copy of the model and its optimizer (hyperparameters, parameter groups and state)
  for each run, so that the user's objects are never touched.
- :class:`LoopSteps`: how a loader batch is scored and observed, and a backward batch's loss. The default
  scores a Hugging Face LM from its last hidden states and output embeddings (the route
  ``SelectiveBackpropTrainer`` takes), anything else from its logits; an integration supplies its own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .integrations._lm_scoring import has_hidden_state_route, head_transform
from .selection import Selection
from .trainer import SelectiveBackprop

Batch = tuple[Tensor, ...] | Mapping[str, Tensor]
#: A factory of the user's optimizer for a copy's parameters.
OptimizerFactory = Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
#: The optimizer used when the user names none (said in the report).
DEFAULT_OPTIMIZER = "AdamW(lr=0.001)"


def rows_of(batch: Any) -> int:
    if isinstance(batch, Mapping):
        first = batch["labels"] if "labels" in batch else next(iter(batch.values()))
        return int(first.shape[0])
    return int(batch[0].shape[0])


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    return tuple(t.to(device) if isinstance(t, Tensor) else t for t in batch)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------- the model and optimizer
@dataclass(frozen=True)
class Trainee:
    """The user's model and optimizer (an instance of the model's, a factory ``params -> optimizer``, or None
    for :data:`DEFAULT_OPTIMIZER`); :meth:`copy` gives each run its own."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | OptimizerFactory | None

    def __post_init__(self) -> None:
        optimizer = self.optimizer
        if optimizer is None or (callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer)):
            return
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be the model's torch.optim.Optimizer or a factory params -> optimizer, "
                            f"got {optimizer!r}")  # fmt: skip
        mine = {id(p) for p in self.model.parameters()}
        if any(id(p) not in mine for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "optimizer holds parameters that are not the model's: pass the optimizer built on this model's "
                "parameters, or a factory (e.g. lambda params: torch.optim.AdamW(params, lr=1e-3))"
            )

    def describe(self) -> str:
        if self.optimizer is None:
            return f"{DEFAULT_OPTIMIZER} (the default: pass optimizer= yours)"
        if isinstance(self.optimizer, torch.optim.Optimizer):
            hyper = ", ".join(f"{k}={v}" for k, v in self.optimizer.defaults.items() if k in ("lr", "momentum"))
            return f"{type(self.optimizer).__name__}({hyper}) (yours, copied with its state)"
        name = getattr(self.optimizer, "__name__", "factory")
        return f"{name} (yours)" if "(" in name else f"{name}(parameters) (yours)"

    def copy(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        if isinstance(self.optimizer, torch.optim.Optimizer):
            # One deepcopy of both: the copied optimizer's groups hold the copied parameters, with their state.
            model, optimizer = copy.deepcopy((self.model, self.optimizer))
            return model.train(), optimizer
        model = copy.deepcopy(self.model).train()
        params = list(model.parameters())
        if self.optimizer is None:
            return model, torch.optim.AdamW(params, lr=1e-3)
        return model, self.optimizer(params)


# ---------------------------------------------------------------------------------- scoring and loss
def forward(model: nn.Module, batch: Batch) -> Any:
    return model(**batch) if isinstance(batch, Mapping) else model(batch[0])


def default_loss(outputs: Any, batch: Batch, weight: Tensor | None = None) -> Tensor:
    """The LM's own ``.loss``; otherwise cross-entropy, weighted per row when the policy gives weights."""
    if getattr(outputs, "loss", None) is not None:
        return outputs.loss
    logits = getattr(outputs, "logits", outputs)
    targets = batch["labels"] if isinstance(batch, Mapping) else batch[1]
    if weight is None:
        return F.cross_entropy(logits, targets)
    return (F.cross_entropy(logits, targets, reduction="none") * weight).mean()


@dataclass(frozen=True)
class LoopSteps:
    """Scoring (eval mode, no_grad) and ``observe`` of a loader batch, and a backward batch's loss.

    ``route="hidden"``: a Hugging Face LM (a dict batch with (B, T) labels, a model with ``base_model`` and
    output embeddings) scored from its last hidden states, as ``SelectiveBackpropTrainer`` scores it;
    ``"logits"``: from the logits (a classifier, or any other model)."""

    route: str = "logits"
    loss_fn: Callable[[Any, Batch], Tensor] | None = None  # loss_fn(outputs, batch), else default_loss

    @classmethod
    def for_model(cls, model: Any, batch: Any, scoring: str = "auto", loss_fn=None) -> LoopSteps:
        if scoring not in ("auto", "hidden", "logits"):
            raise ValueError(f"scoring must be 'auto', 'hidden' or 'logits', got {scoring!r}")
        has_route = (
            isinstance(batch, Mapping)
            and getattr(batch.get("labels"), "dim", lambda: 0)() == 2
            and has_hidden_state_route(model)
        )
        if scoring == "hidden" and not has_route:
            raise ValueError("scoring='hidden' needs a dict batch with (B, T) labels and a model with base_model "
                             "and output embeddings")  # fmt: skip
        return cls("hidden" if has_route and scoring != "logits" else "logits", loss_fn)

    def scores(self, model: Any, batch: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """(scores, targets, observe's keyword arguments); called under no_grad, in eval mode."""
        if not isinstance(batch, Mapping):
            return model(batch[0]), batch[1], {}
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if self.route == "hidden":
            hidden = model.base_model(**inputs).last_hidden_state
            return hidden, batch["labels"], {"lm_head": model.get_output_embeddings(), **head_transform(model)}
        return model(**inputs).logits, batch["labels"], {}

    def score(self, model: nn.Module, batch: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """The scoring pass: :meth:`scores` in eval mode, under no_grad."""
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.scores(model, batch)
        finally:
            model.train(training)

    @staticmethod
    def push(sb: SelectiveBackprop, batch: Any, scored: tuple[Tensor, Tensor, dict[str, Any]]) -> Selection:
        """``sb.observe`` of a scored loader batch."""
        scores, targets, kwargs = scored
        with torch.no_grad():
            return sb.observe(scores, targets, *((dict(batch),) if isinstance(batch, Mapping) else tuple(batch)),
                              **kwargs)  # fmt: skip

    def observe(self, sb: SelectiveBackprop, model: nn.Module, batch: Any) -> Selection:
        """The scoring pass and ``sb.observe`` of one loader batch."""
        return self.push(sb, batch, self.score(model, batch))

    def loss(self, model: nn.Module, batch: Any, weight: Tensor | None = None) -> Tensor:
        outputs = forward(model, batch)
        return self.loss_fn(outputs, batch) if self.loss_fn is not None else default_loss(outputs, batch, weight)

    def train(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any, weight=None) -> Tensor:
        """One training step; the detached loss."""
        loss = self.loss(model, batch, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
