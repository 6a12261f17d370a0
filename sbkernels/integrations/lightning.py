"""Selective-Backprop in a Lightning ``Trainer`` (SPEC section 10): a ``LightningModule`` base class.

    class Model(SelectiveBackpropModule):
        def __init__(self):
            super().__init__(sbkernels.SelectiveBackprop(64, sbkernels.SB(beta=1.0)), accumulate_grad_batches=2)
            self.net = ...
        def forward(self, x):
            return self.net(x)
        def configure_optimizers(self):
            ...

    lightning.Trainer(max_epochs=10).fit(Model(), train_loader, val_loader)

It uses Lightning's manual optimization. Each ``training_step`` gets a loader batch: the scoring pass
(:meth:`score`, eval mode, no_grad, Lightning's precision context) feeds ``SelectiveBackprop.observe``, and
every backward batch that completes is trained on (:meth:`backward_loss`, ``manual_backward``), with the
optimizer and a per-step learning-rate scheduler stepped every ``accumulate_grad_batches`` backward batches.
So ``global_step``, the schedule and the logs count optimizer steps actually taken. The last loader batch
of an epoch flushes the pool (the epoch's last, partial backward batch), so an epoch-end checkpoint holds
no pending rows. Validation and testing use ``validation_step`` / ``test_step`` as usual: no selection,
no change of the selection state. Checkpoints carry the selection state (``on_save_checkpoint``); a run
resumed from an epoch-end checkpoint selects as the uninterrupted one.

Defaults: a dict batch with ``labels`` is a language model's (``self(**inputs).logits``, whole sequences,
training loss ``self(**batch).loss``); a tuple ``(inputs, targets)`` a classifier's (``self(inputs)``,
mean cross-entropy). Override :meth:`score` and :meth:`backward_loss` for anything else.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

try:
    import lightning as L
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("sbkernels.integrations.lightning needs lightning: pip install 'sbkernels[lightning]'") from error

from ..pilot import PilotReport
from ..pool._batch_spec import BackwardBatch
from ..scoring import check_scale_factor, downsample_for_scoring
from ..trainer import SelectiveBackprop
from ._engine import SelectionEngine, sequence_cross_entropy
from ._lm_scoring import head_transform
from ._pilot import module_pilot

CHECKPOINT_KEY = "selective_backprop"


class SelectiveBackpropModule(L.LightningModule):
    """A ``LightningModule`` that backpropagates only the rows ``selective_backprop`` keeps (module doc).

    Args:
        selective_backprop: the :class:`~sbkernels.SelectiveBackprop` (its ``batch_size`` is the backward
            batch size; the loader's is the scoring batch size).
        accumulate_grad_batches: backward batches per optimizer step (the Trainer's own must stay 1: with
            manual optimization, this module accumulates).
        scale_factor: the default :meth:`score` of ``(inputs, targets)`` batches scores on inputs resized by
            this factor in (0, 1] (Composer's option; :func:`sbkernels.scoring.downsample_for_scoring`).
    """

    def __init__(
        self, selective_backprop: SelectiveBackprop, accumulate_grad_batches: int = 1, scale_factor: float = 1.0
    ) -> None:
        super().__init__()
        if isinstance(accumulate_grad_batches, bool) or not isinstance(accumulate_grad_batches, int) or (
            accumulate_grad_batches < 1
        ):  # fmt: skip
            raise ValueError(f"accumulate_grad_batches must be an int >= 1, got {accumulate_grad_batches!r}")
        check_scale_factor(scale_factor)
        self.scale_factor = scale_factor
        self.automatic_optimization = False
        # the selection, the position in the data, the backward batches waiting for a step, the checkpoint entry
        self.engine = SelectionEngine(selective_backprop, accumulate_grad_batches)
        self.selective_backprop = selective_backprop
        self.accumulate_grad_batches = accumulate_grad_batches
        self._resume_at: dict[str, int] | None = None  # the position of a mid-epoch restore
        self._replay: Iterator[Any] | None = None  # this epoch's loader batches after such a restore
        self._gradients_to_restore: list[Tensor | None] | None = None

    # ------------------------------------------------------------------------- to override if needed
    def score(self, batch: Any) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Any]:
        """``(logits, targets)`` of the scoring pass (called in eval mode under no_grad), or ``(hidden, labels,
        lm_head)`` to score a language model from its last hidden states without forming the (B, T, V) logits
        (:func:`sbkernels.linear_sequence_losses`). For a Hugging Face model held as ``self.model``::

            def score(self, batch):
                inputs = {key: value for key, value in batch.items() if key != "labels"}
                hidden = self.model.base_model(**inputs).last_hidden_state
                return hidden, batch["labels"], self.model.get_output_embeddings()
        """
        if isinstance(batch, Mapping):
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            return self(**inputs).logits, batch["labels"]
        inputs, targets = batch[0], batch[1]
        return self(downsample_for_scoring(inputs, self.scale_factor)), targets

    def head_transform(self) -> dict[str, Any]:
        """``softcap`` / ``logit_scale`` of a capped or scaled LM head, for scoring from hidden states: read from
        the config of a Hugging Face model held as ``self.model`` (Gemma-2's ``final_logit_softcapping``,
        Cohere's ``logit_scale``, Granite's ``logits_scaling``); override for another model."""
        return head_transform(getattr(self, "model", None))

    def _scored(self, batch: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """:meth:`score`'s output as ``observe`` takes it: (scores, targets, the LM head and its transform when
        :meth:`score` returned hidden states)."""
        scored = self.score(batch)
        if len(scored) < 3:
            return scored[0], scored[1], {}
        return scored[0], scored[1], {"lm_head": scored[2], **self.head_transform()}

    def backward_loss(self, batch: Any, weight: Tensor | None = None) -> Tensor:
        """The training loss of one backward batch: the mean over its rows, or, when ``weight`` is given, the
        weighted sum ``(weight * per_row_loss).sum()`` (weighted policies such as ``Importance``, and every
        step under DDP, SPEC section 8). An override that takes no ``weight`` serves unweighted runs only."""
        if isinstance(batch, Mapping):
            if weight is None:
                return self(**batch).loss
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            policy = self.selective_backprop.policy
            losses = sequence_cross_entropy(self(**inputs).logits, batch["labels"], policy.shift, policy.ignore_index)
            return (weight * losses).sum()
        inputs, targets = batch[0], batch[1]
        if weight is None:
            return F.cross_entropy(self(inputs), targets)
        return (weight * F.cross_entropy(self(inputs), targets, reduction="none")).sum()

    def pilot(self, train_loader: Any, budget: float, *, val_loader: Any = None, evaluate: Any = None,
              **options: Any) -> PilotReport:  # fmt: skip
        """Will selection pay here? :func:`sbkernels.pilot` on copies of this module (before ``fit``), trained as
        ``training_step`` trains it, with its first optimizer, policy and schedule, and the mean
        :meth:`backward_loss` on ``val_loader`` (or ``evaluate``); ``options``: the pilot's. The module is not
        trained."""
        return module_pilot(self, train_loader, budget, val_loader, evaluate, **options)

    # --------------------------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str) -> None:
        """Under a multi-process strategy (``strategy="ddp"``), select globally over its process group: every
        rank then takes the same steps (SPEC section 8). Runs before a checkpoint is restored."""
        if stage == "fit" and self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            self.selective_backprop.use_process_group(dist.group.WORLD)

    def on_train_epoch_start(self) -> None:
        self.selective_backprop.start_epoch(self.current_epoch)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        batch = self._resumed_batch(batch, batch_idx)
        sb = self.selective_backprop
        training = self.training
        self.eval()
        try:
            with torch.no_grad(), self.trainer.precision_plugin.forward_context():
                scores, targets, head = self._scored(batch)
                # observe inside the precision context: the LM head is applied as the model applies it
                sb.observe(scores, targets, *(batch if isinstance(batch, tuple | list) else (batch,)), **head)
        finally:
            self.train(training)
        self.engine.remember_filler(batch)
        self.engine.position.update(epoch=self.current_epoch, batches=batch_idx + 1)
        for ready in sb.ready_batches():
            self._train_on(ready)
        if batch_idx + 1 == self.trainer.num_training_batches:  # the epoch's last loader batch
            for ready in sb.flush():
                self._train_on(ready)
            if self.engine.accumulated:
                self._step()
            self.engine.position.update(epoch=self.current_epoch + 1, batches=0)
            self._replay = None
        counts = sb.counts
        self.log_dict(
            {"sb_selected_fraction": counts["backward"] / max(counts["scored"], 1),
             "sb_scored_rows": float(counts["scored"]), "sb_backward_rows": float(counts["backward"])},
            on_step=True, on_epoch=False, prog_bar=False,
        )  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The gradients of the backward batches waiting for a step travel with the entry (a checkpoint holds
        # none); read here, at save time, not after every backward pass.
        self.engine.gradients = None
        if self.engine.accumulated:
            self.engine.gradients = [None if p.grad is None else p.grad.detach() for p in self.parameters()]
        checkpoint[CHECKPOINT_KEY] = self.engine.gathered_state_dict()  # every rank's rows: Lightning saves rank 0's

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            raise ValueError(f"the checkpoint has no {CHECKPOINT_KEY!r} entry: it was not saved by this module")
        self.engine.load_state_dict(checkpoint[CHECKPOINT_KEY], where=f"checkpoint entry {CHECKPOINT_KEY!r}")
        self._replay = None
        self._resume_at = dict(self.engine.position) if self.engine.position["batches"] else None
        self._gradients_to_restore = self.engine.gradients

    def _resumed_batch(self, batch: Any, batch_idx: int) -> Any:
        """The loader batch ``batch_idx`` of this epoch. Resumed from a checkpoint taken mid-epoch, Lightning
        continues at the saved ``batch_idx`` but restarts a loader that keeps no state from its first batch,
        which would train the epoch's first batches again and never the rest. The module knows how many
        batches of the epoch were scored, so it iterates the training loader itself from there to the end of
        the epoch (the same order where the sampler's order depends on the epoch only: no shuffle, or a
        DistributedSampler; a RandomSampler draws another order after any restart)."""
        resume_at, self._resume_at = self._resume_at, None
        if resume_at is not None and resume_at == {"epoch": self.current_epoch, "batches": batch_idx}:
            replay = iter(self.trainer.train_dataloader)  # type: ignore[arg-type]
            for _ in range(batch_idx):
                next(replay)
            self._replay = replay
        if self._replay is None:
            return batch
        return self.trainer.strategy.batch_to_device(next(self._replay))

    # ---------------------------------------------------------------------------------------- steps
    def _train_on(self, ready: BackwardBatch) -> None:
        data, weight = self.engine.nonempty(ready, self.engine.step_weights(ready))
        if weight is None:
            loss = self.backward_loss(data)
        elif "weight" in inspect.signature(self.backward_loss).parameters:
            loss = self.backward_loss(data, weight=weight)
        else:
            raise TypeError(
                f"this run's backward batches carry per-row weights ({type(self.selective_backprop.policy).__name__}"
                f"{' under a process group' if self.selective_backprop.coordinator else ''}), which "
                f"{type(self).__name__}.backward_loss(self, batch) cannot apply: give it a weight argument and "
                "return (weight * per_row_loss).sum(), or leave backward_loss to the default"
            )
        loss = loss / self.accumulate_grad_batches
        if self._gradients_to_restore is not None:  # resumed with backward batches waiting
            self._restore_gradients(self._gradients_to_restore)
        self._gradients_to_restore = None
        self.manual_backward(loss)
        self.engine.accumulated += 1
        if self.engine.accumulated == self.accumulate_grad_batches:
            self._step()

    def _restore_gradients(self, gradients: list[Tensor | None]) -> None:
        parameters = list(self.parameters())
        if len(gradients) != len(parameters) or any(
            g is not None and g.shape != p.shape for g, p in zip(gradients, parameters, strict=True)
        ):  # fmt: skip
            raise ValueError("the checkpoint's accumulated gradients do not fit this module's parameters")
        for parameter, gradient in zip(parameters, gradients, strict=True):
            parameter.grad = None if gradient is None else gradient.to(parameter.device).clone()

    def _step(self) -> None:
        optimizers = self.optimizers()
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            optimizer.step()
            optimizer.zero_grad()
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if scheduler is not None:
                scheduler.step()
        self.engine.accumulated = 0
