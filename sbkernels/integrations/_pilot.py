"""The pilot (``sbkernels.pilot``, SPEC section 13) on an integration's own model and data: the trainer's or
the module's model, training loader, optimizer, policy, schedule and backward batch size, its scoring route
and loss, and a held-out loss from its evaluation data. No framework is imported here: the two entry points
take the framework's objects and read what the pilot needs from them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._loop import LoopSteps, rows_of, to_device
from ..pilot import PilotReport, pilot


def trainer_pilot(trainer: Any, budget: float, evaluate: Callable[[Any], float] | None = None,
                  **options: Any) -> PilotReport:  # fmt: skip
    """``SelectiveBackpropTrainer.pilot``: the Trainer's training dataloader (its collator and batch size), the
    optimizer it would create (or the one it was given), and by default the mean ``.loss`` over its
    ``eval_dataset``; LMs scored on the route the trainer scores them on."""
    from transformers import Trainer

    _one_process(trainer.args.world_size)
    model = trainer.model
    loader = Trainer.get_train_dataloader(trainer)  # the Trainer's own loader, not the selecting wrapper
    if evaluate is None:
        if trainer.eval_dataset is None:
            raise ValueError("the pilot compares held-out losses: give the Trainer an eval_dataset, or pass "
                             "evaluate=(model -> held-out loss)")  # fmt: skip
        evaluate = mean_loss(trainer.get_eval_dataloader(), lambda model, batch: model(**batch).loss)
    given = trainer.optimizer
    optimizer = given if given is not None else trainer.create_optimizer()
    trainer.optimizer = given  # the Trainer still creates its own for train()
    first = to_device(next(iter(loader)), next(model.parameters()).device)
    trainer._default_input_ids_pad(first.keys())  # the collator's pad id, as train() sets it
    training = model.training
    model.eval()
    try:
        with torch.no_grad():  # the route the trainer's scoring pass takes, decided as it decides it
            hidden = (
                first["labels"].dim() == 2 and trainer.scoring != "logits" and trainer._decide_scoring(model, first)
            )
    finally:
        model.train(training)
    sb = trainer.selective_backprop
    options.setdefault("accumulate", trainer.args.gradient_accumulation_steps)
    return pilot(model, loader, optimizer, evaluate, budget=budget, policy=sb.policy, schedule=sb.schedule,
                 batch_size=sb.batch_size, loop=LoopSteps("hidden" if hidden else "logits"), fields=sb.fields,
                 pad_values=sb.pad_values, **options)  # fmt: skip


@dataclass(frozen=True)
class ModuleSteps(LoopSteps):
    """A ``SelectiveBackpropModule``'s own scoring (:meth:`score`, :meth:`head_transform`) and training loss
    (:meth:`backward_loss`), so that the pilot trains the module as ``training_step`` does (``route="module"``)."""

    def scores(self, model: Any, batch: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return model._scored(batch)  # as training_step observes

    def loss(self, model: Any, batch: Any, weight: Tensor | None = None) -> Tensor:
        # an override of backward_loss may take no weight: it then serves unweighted policies only
        return model.backward_loss(batch) if weight is None else model.backward_loss(batch, weight=weight)


def module_pilot(module: Any, train_loader: Iterable[Any], budget: float, val_loader: Iterable[Any] | None = None,
                 evaluate: Callable[[Any], float] | None = None, **options: Any) -> PilotReport:  # fmt: skip
    """``SelectiveBackpropModule.pilot``: the module's first optimizer from ``configure_optimizers``, and by
    default the mean :meth:`backward_loss` over ``val_loader``."""
    _one_process(dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
    if evaluate is None:
        if val_loader is None:
            raise ValueError("the pilot compares held-out losses: pass val_loader= (held-out batches) or "
                             "evaluate=(module -> held-out loss)")  # fmt: skip
        evaluate = mean_loss(val_loader, lambda model, batch: model.backward_loss(batch))
    sb = module.selective_backprop
    options.setdefault("accumulate", module.accumulate_grad_batches)
    return pilot(module, train_loader, first_optimizer(module.configure_optimizers()), evaluate, budget=budget,
                 policy=sb.policy, schedule=sb.schedule, batch_size=sb.batch_size, loop=ModuleSteps("module"),
                 fields=sb.fields, pad_values=sb.pad_values, **options)  # fmt: skip


def _one_process(world_size: int) -> None:
    """The pilot trains copies, not the distributed model: under N processes each would pilot on its own shard
    and print its own verdict."""
    if world_size > 1:
        raise RuntimeError(
            f"the pilot runs in one process, and this one is 1 of {world_size}: call it from a single process "
            "(python script.py, not torchrun or a multi-process strategy) before launching the distributed run"
        )


def first_optimizer(config: Any) -> torch.optim.Optimizer:
    """The first optimizer of what ``configure_optimizers`` returns (an optimizer, a list or tuple, a dict with
    ``"optimizer"``, or ``(optimizers, schedulers)``)."""
    if isinstance(config, torch.optim.Optimizer):
        return config
    if isinstance(config, Mapping) and "optimizer" in config:
        return first_optimizer(config["optimizer"])
    if isinstance(config, (list, tuple)) and config:
        return first_optimizer(config[0])
    raise TypeError(f"configure_optimizers() returned {config!r}: the pilot needs at least one torch optimizer")


def mean_loss(loader: Iterable[Any], loss_of: Callable[[Any, Any], Tensor]) -> Callable[[Any], float]:
    """``evaluate(model)``: the row-weighted mean loss over ``loader`` (the pilot calls it in eval mode, under
    no_grad)."""

    def evaluate(model: Any) -> float:
        device = next(model.parameters()).device
        losses, rows = [], []
        for batch in loader:
            batch = to_device(batch if isinstance(batch, Mapping) else tuple(batch), device)
            losses.append(float(loss_of(model, batch)))
            rows.append(rows_of(batch))
        if not rows:
            raise ValueError("the held-out loader yielded no batches")
        return sum(loss * n for loss, n in zip(losses, rows, strict=True)) / sum(rows)

    return evaluate
