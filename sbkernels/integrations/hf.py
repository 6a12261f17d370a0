"""Selective-Backprop inside Hugging Face ``transformers.Trainer`` (SPEC section 10).

    trainer = SelectiveBackpropTrainer(
        model=model, args=TrainingArguments(..., max_steps=1000), train_dataset=train, eval_dataset=held_out,
        data_collator=collator, processing_class=tokenizer,
        selective_backprop=sbkernels.SelectiveBackprop(16, sbkernels.SB(beta=1.0, history_size=64)),
    )
    trainer.train()                                  # or trainer.train(resume_from_checkpoint=True)

How it fits the Trainer: the training dataloader is wrapped. For each loader batch the wrapper runs the
scoring pass (the model in eval mode, under no_grad and the Trainer's autocast; from the last hidden
states and the LM head where the model has output embeddings, so the (B, T, V) logits never exist), lets
``SelectiveBackprop`` select whole sequences, and yields the owned backward batches it completes. The
Trainer then does what it always does with the batches it is given, so gradient accumulation,
``num_items_in_batch`` (counted over the backward batches' labels), clipping, the optimizer, the
learning-rate schedule (counted in optimizer steps taken) and logging are the Trainer's own. Evaluation
uses the evaluation dataloader, untouched: no selection, no change of the selection state.

- The first batch is checked against the model's own loss (``_lm_scoring``): a policy ``shift`` that
  does not match the model's label alignment (a masked LM needs ``shift=False``) raises; hidden states
  that do not give the model's losses (a head transform, a logit cap) make ``scoring="auto"`` use the
  logits, with a warning.
- Padding: batches of different lengths are re-padded (each backward batch as wide as the widest loader
  batch its rows came from), ``input_ids``
  with the tokenizer's pad id (``processing_class``, or the collator's ``tokenizer``) unless the
  ``SelectiveBackprop``'s ``pad_values`` names it; ``labels`` with -100 and ``attention_mask`` with 0.
- Epochs: ``num_train_epochs`` passes over the training set (``max_steps``, when given, wins, as in the
  Trainer). How many backward batches a pass yields depends on the selection, so the Trainer is told the
  most steps the passes could take (every row selected): its learning-rate schedule spans those, and
  training ends when the passes do. The wrapper passes over the training set
  again and again (``set_epoch`` each pass, the last partial batch flushed at each pass's end);
  the logs carry ``sb_epoch`` (passes over the data, with the fraction of the current one),
  ``sb_selected_fraction``, ``sb_scored_rows`` and ``sb_backward_rows``.
- Checkpoints: the selection state (the engine's entry, :mod:`._engine`: the policy's history and seed
  step, the pool's rows not yet trained on, the position in the data) is saved in every checkpoint as
  ``selective_backprop.pt`` and restored by ``train(resume_from_checkpoint=...)``, which then selects as the
  uninterrupted run would. The Trainer's own skipping of seen batches is replaced by the wrapper's: it
  skips the loader batches already scored without scoring them again.
- Several processes (``torchrun`` / ``accelerate launch``, DDP): the trainer selects globally over the
  ranks by itself (SPEC section 8), so every rank takes the same optimizer steps; a rank whose share of a
  pass's last step is empty trains one row with its labels ignored (the Trainer averages tokens over the
  ranks, ``average_tokens_across_devices``, required). The checkpoint file holds every rank's state and
  resumes only at the same world size. Weighted policies (``Importance``, ``GradMatch``) are refused: the
  Trainer trains on the model's own unweighted loss. Under FSDP (GPUs: accelerate shards models there only,
  and a request for it on CPU is refused) the sequences are scored from the root model's logits.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("sbkernels.integrations.hf needs transformers: pip install 'sbkernels[hf]'") from error

from ..pilot import PilotReport
from ..trainer import SelectiveBackprop
from ._engine import SelectionEngine
from ._lm_scoring import (
    HIDDEN_STATE_TOLERANCE,
    check_label_alignment,
    declared_shift,
    has_hidden_state_route,
    head_transform,
    hidden_state_error,
)
from ._pilot import trainer_pilot

STATE_FILE = "selective_backprop.pt"


class SelectiveBackpropTrainer(Trainer):
    """A ``transformers.Trainer`` that backpropagates only the sequences ``selective_backprop`` keeps.

    Args:
        selective_backprop: the :class:`~sbkernels.SelectiveBackprop` (its ``batch_size`` is the backward
            batch size; the loader's batch size is the scoring batch size).
        scoring: "hidden" (from the last hidden states and the output embeddings), "logits" (the model's
            logits), or "auto": "hidden" when the model has output embeddings and a base model.
        Every other argument is the Trainer's (``num_train_epochs`` counts passes; ``max_steps`` wins).
    """

    def __init__(self, *args: Any, selective_backprop: SelectiveBackprop, scoring: str = "auto", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.engine = SelectionEngine(selective_backprop)  # the selection, the position, the checkpoint entry
        if selective_backprop.policy.weighted:
            raise ValueError(
                f"{type(selective_backprop.policy).__name__} returns per-row weights, and the Trainer trains on the "
                "model's own (unweighted) loss: use SB, Keep or Uniform with SelectiveBackpropTrainer, or a "
                "weighted policy in Lightning (backward_loss(batch, weight)) or your own loop"
            )
        #: passes over the training data to train for: num_train_epochs, unless max_steps is given (it wins)
        self.passes: int | None = None
        if self.args.max_steps is None or self.args.max_steps <= 0:
            epochs = self.args.num_train_epochs
            if not float(epochs).is_integer() or epochs < 1:
                raise ValueError(
                    f"num_train_epochs={epochs!r}: SelectiveBackpropTrainer trains whole passes over the data, so it "
                    "needs a whole number >= 1 (or max_steps)"
                )
            self.passes = int(epochs)
        if scoring not in ("auto", "hidden", "logits"):
            raise ValueError(f"scoring must be 'auto', 'hidden' or 'logits', got {scoring!r}")
        self.selective_backprop = selective_backprop
        self.scoring = scoring
        if self.args.fsdp and not self.is_fsdp_enabled:
            raise ValueError(
                f"TrainingArguments(fsdp={self.args.fsdp!r}) asks for FSDP, but accelerate shards models on GPUs only: "
                "here the Trainer would train the whole model under DDP without a word. Drop fsdp= to train with "
                "DDP on this machine, or run on GPUs"
            )
        if self.args.world_size > 1:  # torchrun / accelerate launch: select globally over the ranks
            self._use_process_group()
        self._counts_at_start = dict(selective_backprop.counts)
        self._train_loader: Any = None  # the Trainer's own training dataloader, inside the wrapper
        self._hidden_scoring: bool | None = None  # decided on the first batch with a valid token (_decide_scoring)
        self.add_callback(_SelectionCallback(self))

    def _use_process_group(self) -> None:
        """Global selection over the accelerator's processes (SPEC section 8): every rank then takes the same
        steps. The Trainer's own loss weights uneven shares of a final step right only when it averages
        tokens across the ranks (its default), and a rank with no rows trains one unlabeled filler row."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("TrainingArguments.world_size > 1 but no torch.distributed process group exists")
        if not self.args.average_tokens_across_devices:
            raise ValueError(
                "SelectiveBackpropTrainer on several processes needs TrainingArguments(average_tokens_across_devices"
                "=True) (the default): the ranks' shares of a final step differ in size, and only a loss averaged "
                "over every rank's tokens weights each row alike"
            )
        self.selective_backprop.use_process_group(dist.group.WORLD)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        """The Trainer's loss, except for an empty share's filler row (several processes): a loss of 0 that
        still runs the forward through every parameter, so each rank's backward joins the gradient all-reduce
        (the model's own loss of a row whose labels are all ignored can be NaN, e.g. a classifier's)."""
        if not self._is_filler(inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        loss = outputs.logits.sum() * 0.0
        return (loss, outputs) if return_outputs else loss

    def _is_filler(self, inputs: dict[str, Any]) -> bool:
        labels = inputs.get("labels") if isinstance(inputs, Mapping) else None
        sb = self.selective_backprop
        return (
            sb.coordinator is not None and isinstance(labels, torch.Tensor) and labels.shape[0] == 1
            and bool((labels == sb.policy.ignore_index).all())
        )  # fmt: skip

    @property
    def position(self) -> dict[str, int]:
        """Passes over the training data (``epoch``) and loader batches scored in this one (``batches``)."""
        return self.engine.position

    # ------------------------------------------------------------------------------- the Trainer's hooks
    def get_train_dataloader(self):
        return _SelectedBatches(self, super().get_train_dataloader())

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # training logs carry the selection's counts; evaluation logs stay as they are
            logs = {**logs, **self.selection_logs()}
            self.state.epoch = logs["sb_epoch"]  # the Trainer's own epoch counts one endless pass
        if "train_samples_per_second" in logs and logs.get("train_runtime"):
            # The Trainer counts max_steps x batch x accumulation; what ran is the rows scored and trained.
            # In place: the same dict is the train() call's returned metrics.
            counts, start = self.selective_backprop.counts, self._counts_at_start
            runtime = logs["train_runtime"]
            logs["train_samples_per_second"] = round((counts["scored"] - start["scored"]) / runtime, 3)
            logs["train_backward_samples_per_second"] = round((counts["backward"] - start["backward"]) / runtime, 3)
        super().log(logs, *args, **kwargs)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        return dataloader  # the selection state knows the position in the data (see train())

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, str):
            self._load_selection(checkpoint)
        self._counts_at_start = dict(self.selective_backprop.counts)  # this call's rows, for the speed logs
        if self.passes is not None:
            self.args.max_steps = self._most_steps(self.passes)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _most_steps(self, passes: int) -> int:
        """The optimizer steps of ``passes`` passes if every row were selected: what the Trainer is told in
        advance (its learning-rate schedule spans them); training ends when the passes do, usually sooner."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__"):
            raise ValueError("num_train_epochs needs a training dataset with a length (or pass max_steps)")
        rows = math.ceil(len(dataset) / self.args.world_size)
        batches = math.ceil(rows / self.selective_backprop.batch_size)
        return math.ceil(passes * batches / self.args.gradient_accumulation_steps)

    def pilot(self, budget: float, *, evaluate: Callable[[Any], float] | None = None, **options: Any) -> PilotReport:
        """Will selection pay here? :func:`sbkernels.pilot` on copies of this trainer's model, with its training
        loader, optimizer, policy and schedule, and the mean loss on ``eval_dataset`` (or ``evaluate``);
        ``options``: the pilot's (``segment``, ``repeats``, ``clock``, ``seed``). The model is not trained."""
        return trainer_pilot(self, budget, evaluate, **options)

    # ------------------------------------------------------------------------------------ selection
    def score(self, batch: dict[str, Any]) -> None:
        """The scoring pass of one loader batch, then ``observe``: eval mode, no_grad, the Trainer's autocast."""
        model: Any = self.model  # a PreTrainedModel (or a module with the same calls)
        if model is None:
            raise ValueError("SelectiveBackpropTrainer needs a model to score the batches")
        training = model.training
        if self.selective_backprop.spec is None:  # the first batch: its fields are recorded now
            self._default_input_ids_pad(batch.keys())
        self.engine.remember_filler(batch)
        model.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                labels = batch["labels"]
                inputs = {key: value for key, value in batch.items() if key != "labels"}
                if labels.dim() == 1:  # a classifier (one class per row): its rows' cross-entropy
                    self.selective_backprop.observe(model(**inputs).logits, _class_labels(labels), batch)
                    return
                if self._hidden_scoring is None and _has_valid_tokens(labels, self.selective_backprop.policy):
                    self._hidden_scoring = self._decide_scoring(model, batch)
                if self._hidden_scoring:  # None (no batch with a valid token yet): from the logits
                    hidden = model.base_model(**inputs).last_hidden_state
                    self.selective_backprop.observe(
                        hidden, labels, batch, lm_head=model.get_output_embeddings(), **head_transform(model)
                    )
                else:
                    self.selective_backprop.observe(model(**inputs).logits, labels, batch)
        finally:
            model.train(training)

    def _decide_scoring(self, model: Any, batch: dict[str, Any]) -> bool:
        """Whether to score from the hidden states, checked on the first batch against the model's own loss
        and logits (:mod:`._lm_scoring`): a wrong ``shift`` raises; hidden states that do not give the
        model's losses raise with ``scoring="hidden"`` and fall back to the logits with ``"auto"``."""
        out = model(**batch)  # with the labels: the model's own loss
        labels, policy = batch["labels"], self.selective_backprop.policy
        check_label_alignment(getattr(out, "loss", None), out.logits, labels, policy, declared_shift(model))
        if self.scoring == "logits":
            return False
        if self.is_fsdp_enabled:  # the sharded LM head is whole only inside the root module's forward
            if self.scoring == "hidden":
                raise ValueError("scoring='hidden' reads the whole LM head, which FSDP shards: use scoring='logits'")
            return False
        if not has_hidden_state_route(model):
            if self.scoring == "hidden":
                raise ValueError("scoring='hidden' needs a model with output embeddings and a base model")
            return False
        head = model.get_output_embeddings()
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        hidden = model.base_model(**inputs).last_hidden_state
        error = hidden_state_error(out.logits, hidden, head, labels, policy, **head_transform(model))
        if error <= HIDDEN_STATE_TOLERANCE:
            return True
        message = (
            f"the losses from the last hidden states and the output embeddings differ from the model's own by "
            f"{error:.3g} (> {HIDDEN_STATE_TOLERANCE}): its logits are not last_hidden_state @ weight.T (a head "
            "transform, a logit scale or cap)"
        )
        if self.scoring == "hidden":
            raise ValueError(message + "; use scoring='logits'")
        warnings.warn(message + "; scoring from the logits instead", stacklevel=3)
        return False

    def _default_input_ids_pad(self, fields: Iterable[object]) -> None:
        """Re-pad ``input_ids`` with the tokenizer's pad id (``processing_class``, or the collator's tokenizer)
        unless ``pad_values`` names it: the collator pads with that id, and the pool needs the same value to
        keep batches of different lengths. Set before the batch's fields are recorded (the first batch, or a
        checkpoint's)."""
        pads = self.selective_backprop.pad_values
        if "input_ids" not in fields or not (pads is None or isinstance(pads, Mapping)):
            return
        if pads is not None and "input_ids" in pads:
            return
        tokenizer = self.processing_class or getattr(self.data_collator, "tokenizer", None)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if isinstance(pad_id, int):
            self.selective_backprop.pad_values = {**(pads or {}), "input_ids": pad_id}

    def _load_selection(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{checkpoint} has no {STATE_FILE}: it was not saved by SelectiveBackpropTrainer")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state = saved.get("selective_backprop") if isinstance(saved, dict) else None
        spec = state.get("spec") if isinstance(state, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("keys"), (list, tuple)):  # else refused by the load
            self._default_input_ids_pad(spec["keys"])
        self.engine.load_state_dict(saved, self.args.device, where=path)

    def save_selection(self, checkpoint: str) -> None:
        """Write the selection state into ``checkpoint``: every rank's (a collective: call it on every rank),
        written once, by the main process."""
        entry = self.engine.gathered_state_dict()
        if self.is_world_process_zero():
            torch.save(entry, os.path.join(checkpoint, STATE_FILE))

    def selection_logs(self) -> dict[str, float]:
        counts = self.selective_backprop.counts
        passes = self.position["epoch"]
        total = _length(self._train_loader) if self._train_loader is not None else None
        fraction = self.position["batches"] / total if total else 0.0
        return {
            "sb_epoch": passes + fraction,
            "sb_selected_fraction": counts["backward"] / max(counts["scored"], 1),
            "sb_scored_rows": counts["scored"],
            "sb_backward_rows": counts["backward"],
        }


class _SelectedBatches:
    """The training dataloader as the Trainer sees it: the backward batches, pass after pass (no length)."""

    def __init__(self, trainer: SelectiveBackpropTrainer, loader) -> None:
        self.trainer, self.loader = trainer, loader
        trainer._train_loader = loader

    def set_epoch(self, epoch: int) -> None:
        pass  # the wrapper counts its own passes over the data (the Trainer's epoch is one endless pass)

    def __iter__(self) -> Iterator[Any]:
        set_epoch = functools.partial(_set_epoch, self.loader)
        engine = self.trainer.engine
        for ready in engine.passes(self.loader, self.trainer.score, set_epoch, self.trainer.passes):
            yield engine.nonempty(ready, ready.weight)[0]  # the Trainer's loss weights the ranks' tokens


class _SelectionCallback(TrainerCallback):
    def __init__(self, trainer: SelectiveBackpropTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        passes = self.trainer.passes  # the Trainer's own epoch is one pass of the wrapper; it stops there
        if passes is not None and self.trainer.position["epoch"] >= passes:
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        self.trainer.save_selection(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))


def _class_labels(labels: torch.Tensor) -> torch.Tensor:
    """A classifier's labels as class indices; float labels (regression, multi-label) have no cross-entropy
    to rank rows by."""
    if labels.is_floating_point():
        raise ValueError(
            f"SelectiveBackpropTrainer scores a classifier's rows by their cross-entropy and needs integer class "
            f"labels, got {labels.dtype}: regression and multi-label problems are not supported"
        )
    return labels


def _has_valid_tokens(labels: torch.Tensor, policy: Any) -> bool:
    """Whether a batch has a token the policy scores: the first-batch checks compare losses, and on a batch
    whose labels are all ignored every loss is the same, so they would pass any model (a host read; made
    only until the checks have run)."""
    scored = labels[:, 1:] if policy.shift else labels
    return bool((scored != policy.ignore_index).any())


def _set_epoch(loader, epoch: int) -> None:
    """The loader's (and its samplers') ``set_epoch``, as the Trainer calls it at each epoch."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    targets = (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None),
               getattr(batch_sampler, "batch_sampler", None))  # fmt: skip
    for target in targets:
        if target is not None and hasattr(target, "set_epoch"):
            target.set_epoch(epoch)


def _length(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
