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

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import lightning as L
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("sbkernels.integrations.lightning needs lightning: pip install 'sbkernels[lightning]'") from error

from ..scoring import check_scale_factor, downsample_for_scoring
from ..trainer import SelectiveBackprop

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
        if not isinstance(selective_backprop, SelectiveBackprop):
            raise TypeError(f"selective_backprop must be a sbkernels.SelectiveBackprop, got {selective_backprop!r}")
        if isinstance(accumulate_grad_batches, bool) or not isinstance(accumulate_grad_batches, int) or (
            accumulate_grad_batches < 1
        ):  # fmt: skip
            raise ValueError(f"accumulate_grad_batches must be an int >= 1, got {accumulate_grad_batches!r}")
        check_scale_factor(scale_factor)
        self.scale_factor = scale_factor
        self.automatic_optimization = False
        self.selective_backprop = selective_backprop
        self.accumulate_grad_batches = accumulate_grad_batches
        self._accumulated = 0  # backward batches whose gradients wait for the next optimizer step

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

    def backward_loss(self, batch: Any) -> Tensor:
        """The training loss of one backward batch (a mean over its rows)."""
        if isinstance(batch, Mapping):
            return self(**batch).loss
        inputs, targets = batch
        return F.cross_entropy(self(inputs), targets)

    # --------------------------------------------------------------------------------- Lightning hooks
    def on_train_epoch_start(self) -> None:
        self.selective_backprop.start_epoch(self.current_epoch)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        sb = self.selective_backprop
        training = self.training
        self.eval()
        try:
            with torch.no_grad(), self.trainer.precision_plugin.forward_context():
                scored = self.score(batch)
                lm_head = scored[2] if len(scored) == 3 else None
                # observe inside the precision context: the LM head is applied as the model applies it
                sb.observe(scored[0], scored[1], *(batch if isinstance(batch, tuple | list) else (batch,)),
                           lm_head=lm_head)  # fmt: skip
        finally:
            self.train(training)
        for ready in sb.ready_batches():
            self._train_on(ready.data)
        if batch_idx + 1 == self.trainer.num_training_batches:  # the epoch's last loader batch
            for ready in sb.flush():
                self._train_on(ready.data)
            if self._accumulated:
                self._step()
        counts = sb.counts
        self.log_dict(
            {"sb_selected_fraction": counts["backward"] / max(counts["scored"], 1),
             "sb_scored_rows": float(counts["scored"]), "sb_backward_rows": float(counts["backward"])},
            on_step=True, on_epoch=False, prog_bar=False,
        )  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"state": self.selective_backprop.state_dict(), "accumulated": self._accumulated}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if not isinstance(saved, dict) or set(saved) != {"state", "accumulated"}:
            raise ValueError(f"the checkpoint has no valid {CHECKPOINT_KEY!r} entry: it was not saved by this module")
        accumulated = saved["accumulated"]
        if isinstance(accumulated, bool) or not isinstance(accumulated, int) or not 0 <= accumulated:
            raise ValueError(f"corrupted checkpoint: accumulated must be an int >= 0, got {accumulated!r}")
        self.selective_backprop.load_state_dict(saved["state"])
        self._accumulated = accumulated

    # ---------------------------------------------------------------------------------------- steps
    def _train_on(self, data: Any) -> None:
        loss = self.backward_loss(data) / self.accumulate_grad_batches
        self.manual_backward(loss)
        self._accumulated += 1
        if self._accumulated == self.accumulate_grad_batches:
            self._step()

    def _step(self) -> None:
        optimizers = self.optimizers()
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            optimizer.step()
            optimizer.zero_grad()
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if scheduler is not None:
                scheduler.step()
        self._accumulated = 0
