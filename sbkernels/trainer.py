"""SelectiveBackprop: the few lines a custom training loop needs.

A complete loop::

    sb = sbkernels.SelectiveBackprop(128, sbkernels.SB(beta=2.0))
    for epoch in range(epochs):
        sb.start_epoch(epoch)
        for x, y in loader:
            x, y = x.cuda(), y.cuda()
            with torch.no_grad():
                logits = model(x)                      # cheap scoring pass
            sb.observe(logits, y, x, y)                # select, gather selected rows, never syncs
            for batch in sb.ready_batches():           # exactly 128 selected rows each
                bx, by = batch.data
                loss = F.cross_entropy(model(bx), by)
                opt.zero_grad(); loss.backward(); opt.step()
        for batch in sb.flush():                       # end of epoch: what is left
            ...

Language models (SPEC section 9): ``observe(logits, labels, batch)`` with (B, T, V) logits and (B, T)
labels selects whole sequences; ``observe(hidden, labels, batch, lm_head=model.lm_head)`` scores them from
the last hidden states without forming the logits; ``batch`` may be a collator's dict, padded per batch.

The policy (``SB``, ``Keep``, ``Uniform``, ``Importance``, ``GradMatch``) picks the rows; a
:class:`~sbkernels.schedule.Schedule` turns selection off on some steps (the whole batch then goes to
the backward pass); a :class:`~sbkernels.schedule.StaleSB` skips the scoring pass in stale epochs
(``needs_forward`` is False: call ``observe(None, None, ..., sample_ids=ids)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from . import ops
from ._exclusive import ExclusiveUse
from ._saved_run import MISMATCHED_RUN, check_saved_run, plain_spec
from .distributed import check_same_batch_size
from .distributed._coordinator import StepCoordinator
from .lm import lm_head_parameters
from .policies import SB, Policy
from .pool._batch_spec import BackwardBatch, BatchSpec, PadValues
from .pool._pool import SelectionPool, checked_pool_state
from .pool._row_count import EventReadback, ReadbackFactory
from .schedule import Schedule, StaleSB
from .selection import Selection
from .state import SelectorState


class SelectiveBackprop:
    """Selection + pooling + schedule + Stale-SB around a selection policy.

    Args:
        batch_size: rows per backward batch.
        policy: a :class:`~sbkernels.policies.Policy`; default ``SB()`` (beta 1).
        schedule: when selection is active (default: always).
        stale: Stale-SB; needs ``sample_ids`` on every ``observe``.
        fields: for dict batches, the keys that travel to the backward batch (default: every field; a
            field that is not a per-row tensor is refused by name).
        pad_values: for batches padded to different lengths (dim 1), the pad value of each field: a dict
            by key (``labels`` -100 and ``attention_mask`` 0 by default; give ``input_ids`` the
            tokenizer's pad id), or one entry per tensor of a tuple batch (None: fixed length).
        capacity, readback: passed to the :class:`SelectionPool`.
        process_group: a ``torch.distributed`` group (DDP): the policy's state is made with it ("sb"
            selects globally), every rank takes the same number of backward steps
            (:class:`~sbkernels.distributed._coordinator.StepCoordinator`), and every batch carries ``weight``: train
            on ``(batch.weight * per_row_loss).sum()``, which DDP's gradient averaging turns into the mean
            over all rows of the step.
        lag: with a group, the pushes between a push and the step decision made from it; the host waits,
            if ever, only for the row count of the push ``lag`` pushes earlier.
    """

    def __init__(
        self,
        batch_size: int,
        policy: Policy | None = None,
        *,
        schedule: Schedule | None = None,
        stale: StaleSB | None = None,
        fields: tuple[str, ...] | None = None,
        pad_values: PadValues = None,
        capacity: int | None = None,
        readback: ReadbackFactory | None = None,
        process_group=None,
        lag: int = 2,
    ) -> None:
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be a sbkernels policy object (SB(), Keep(0.5), ...), got {policy!r}")
        self.batch_size = batch_size
        self.policy = policy if policy is not None else SB()
        self.schedule = schedule if schedule is not None else Schedule()
        self.stale = stale
        self.fields = fields
        self.pad_values = pad_values
        self.pool = SelectionPool(batch_size, capacity, readback)
        self._exclusive = ExclusiveUse("SelectiveBackprop")
        self.readback, self.lag = readback, lag
        self.coordinator: StepCoordinator | None = None
        if process_group is not None:
            self.use_process_group(process_group)
        self.spec: BatchSpec | None = None
        self.step = 0  # observe calls so far
        self.epoch = 0
        self.batch_in_epoch = 0  # observe calls since start_epoch
        #: examples seen by observe, scored by a forward pass, and handed to the backward pass
        self.counts = {"observed": 0, "scored": 0, "backward": 0}

    def use_process_group(self, process_group) -> None:
        """Select globally across the ranks of ``process_group`` from now on (see ``process_group`` above):
        what a framework integration calls once its strategy has made the group, before the first batch."""
        if self.coordinator is not None and self.coordinator.group is process_group:
            return
        if self.coordinator is not None or getattr(self, "spec", None) is not None:
            raise ValueError("use_process_group must come before the first observe, and only once")
        if self.policy.state is not None and self.policy.state.process_group is not process_group:
            raise ValueError("the policy's state belongs to another process group than process_group")
        self.policy.process_group = process_group
        self.coordinator = StepCoordinator(process_group, self.batch_size, self.lag, self.readback)

    @property
    def state(self) -> SelectorState | None:
        """The policy's selector state (None until the first batch)."""
        return self.policy.state

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batch_in_epoch = 0

    @property
    def needs_forward(self) -> bool:
        """False in Stale-SB's stale epochs: select from cached losses, skip the scoring forward pass."""
        return self.stale is None or self.stale.fresh(self.epoch)

    def selecting(self, step: int | None = None) -> bool:
        """Whether selection is active at ``step`` (default: the next observe call)."""
        if step is None:
            return self.schedule.active(self.step, self.epoch, self.batch_in_epoch)
        return self.schedule.active(step)

    def observe(
        self,
        scores: Tensor | None,
        targets: Tensor | None,
        *batch: Any,
        sample_ids: Tensor | None = None,
        features: Tensor | None = None,
        lm_head: nn.Module | Tensor | None = None,
        softcap: float | None = None,
        logit_scale: float = 1.0,
    ) -> Selection:
        """Select rows of this batch and queue them for the backward pass. Never synchronizes.

        Args:
            scores: (N, C) logits (with ``targets``), (N,) per-example losses (``targets=None``), (B, T, V)
                language-model logits (with (B, T) labels: whole sequences), (B, T, H) last hidden states
                with ``lm_head``, or None in a Stale-SB stale epoch (losses come from the cache).
            targets: (N,) class indices for logits, (B, T) labels for an LM; None for losses.
            batch: the tensors to train on (leading dim N), or a single dict of them.
            sample_ids: (N,) int64 dataset indices: needed for Stale-SB, and returned with each batch.
            features: (N, ...) penultimate activations, for ``GradMatch``.
            lm_head: the LM head (a module with ``.weight``, or the (V, H) weight) when ``scores`` are hidden
                states: the sequences are scored by :func:`sbkernels.linear_sequence_losses`.
            softcap, logit_scale: a language model's capped or scaled head (Gemma-2's
                ``final_logit_softcapping``, Cohere's ``logit_scale``), as in :func:`sbkernels.sequence_losses`.
        """
        with self._exclusive("observe"):
            return self._observe(scores, targets, batch, sample_ids, features, lm_head, (softcap, logit_scale))

    def _observe(
        self, scores: Tensor | None, targets: Tensor | None, batch: tuple[Any, ...], sample_ids: Tensor | None,
        features: Tensor | None, lm_head: nn.Module | Tensor | None, head: tuple[float | None, float] = (None, 1.0),
    ) -> Selection:  # fmt: skip
        first = self.spec is None
        if self.spec is None:
            self._set_spec(BatchSpec.record(batch, self.fields, sample_ids, self.policy.weighted))
        elif self.spec.keys is not None and self.spec.mapping is None and batch and isinstance(batch[0], Mapping):
            self.spec = dataclasses.replace(self.spec, mapping=type(batch[0]))  # a resumed run: not saved
        assert self.spec is not None
        spec = self.spec
        try:  # everything the pool would refuse, before the policy advances its state
            tensors = spec.tensors(batch, every_field=self.fields is None)
            n, device = tensors[0].shape[0], tensors[0].device
            stand_in = torch.empty(n, device=device) if spec.with_weight else None  # the weights come later
            self.pool.check_push(n, spec.flatten(tensors, sample_ids, stand_in))
        except Exception:
            if first:  # the batch that was refused is not the layout to expect
                self.spec = None
            raise
        if first and self.coordinator is not None:  # one synchronous check: every rank passes the same N
            check_same_batch_size(n, self.coordinator.group, device)
            if self.coordinator.readback is None and device.type == "cuda":
                self.coordinator.readback = EventReadback
        if self.stale is not None and sample_ids is None:
            raise ValueError("Stale-SB caches losses by dataset index: pass sample_ids=(the batch's indices)")
        fresh = scores is not None
        if scores is not None:
            source = scores
        elif self.stale is None or sample_ids is None:
            raise ValueError("observe(None, ...) selects from cached losses: needs stale=StaleSB(...)")
        else:
            source, targets = self.stale.cached(sample_ids), None
        flags = None
        if fresh and (lm_head is not None or source.dim() == 3):  # whole sequences of a language model
            source, flags = self._sequence_losses(source, targets, lm_head, head)
            targets = None
        if self.selecting() and flags is not None:
            selection = self.policy.select_rows(source, flags, self.policy.state_on(device))
        elif self.selecting():
            selection = self.policy(source, targets, features=features)
        else:  # schedule off or an interrupt step: the whole batch goes to the backward pass
            selection = self._everything(source, targets)
        if fresh and self.stale is not None and sample_ids is not None:
            self.stale.store(sample_ids, selection.loss)
        weight = None
        if self.policy.weighted:  # full-batch steps carry weight 1: every push has the same tensors
            weight = selection.weight if selection.weight is not None else torch.ones(n, device=device)
        self.pool.push_checked(selection, spec.flatten(tensors, sample_ids, weight))
        if self.coordinator is not None:
            self.coordinator.pushed(self.pool.rows_gathered())
        self.step += 1
        self.batch_in_epoch += 1
        self.counts["observed"] += n
        self.counts["scored"] += n if fresh else 0
        return selection

    def check(self) -> None:
        """Raise on any error counted on the device so far: out-of-range targets (the policy's state), rows
        lost to overflow or out-of-range indices (the pool), sample ids out of range (Stale-SB). Synchronizes."""
        if self.state is not None:
            self.state.check()
        self.pool.check()
        if self.stale is not None:
            self.stale.check()

    def refresh(self, sample_ids: Tensor, losses: Tensor) -> None:
        """Store fresh per-example losses (e.g. from a backward batch) in the Stale-SB cache."""
        if self.stale is not None:
            self.stale.store(sample_ids, losses)

    def ready_batches(self, sync: bool = False) -> Iterator[BackwardBatch]:
        """The backward batches known to be complete (exactly batch_size rows each).

        With a process group: the steps every rank takes now (``sync`` has no effect; see ``flush``).
        """
        if self.coordinator is None:
            for rows in self.pool.ready_batches(sync=sync):
                yield self._batch(rows)
            return
        for _ in range(self.coordinator.steps_ready()):
            rows = self.pool.take_batch()
            yield self._batch(rows, self.coordinator.step_weight(self.batch_size, rows[0].device))

    def flush(self) -> Iterator[BackwardBatch]:
        """End of epoch: every remaining full batch, then the final partial batch (synchronizes).

        With a process group: the same number of final batches on every rank (some short or empty),
        weighted so that each step's averaged gradient is the mean over its rows on all ranks.
        """
        if self.coordinator is None:
            yield from self.ready_batches(sync=True)
            rest = self.pool.flush()
            if rest is not None:
                yield self._batch(rest)
            return
        yield from self.ready_batches()
        rows = self.pool.drain()
        if rows is None:
            raise RuntimeError("flush before any observe: every rank must observe before the epoch ends")
        for start, count, weight in self.coordinator.final_batches(rows[0].shape[0], rows[0].device):
            yield self._batch(tuple(t[start : start + count] for t in rows), weight)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to select and step exactly as an uninterrupted one (synchronizes).
        Under a process group the policy state is the same on every rank; each rank saves its own rows."""
        return {
            "coordinator": None if self.coordinator is None else self.coordinator.state_dict(),
            "policy": self.policy.state_dict(),
            "pool": self.pool.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "counts": dict(self.counts),
            "stale": None if self.stale is None else self.stale.state_dict(),
            "spec": None if self.spec is None else plain_spec(self.spec),  # plain data: torch.load's default
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a checkpoint; refuses what no run could have saved (SPEC section 11), checking the plain
        fields and the pool's rows before anything is changed."""
        check_saved_run(state_dict)
        for name, mine in (("stale", self.stale), ("coordinator", self.coordinator)):
            if (state_dict[name] is None) != (mine is None):
                raise ValueError(MISMATCHED_RUN[name][mine is None])
        checked_pool_state(state_dict["pool"], self.pool.batch_size)
        spec = state_dict["spec"]
        if spec is not None:  # first: the pool learns its tensors' names and pad values before its rows
            self._set_spec(BatchSpec(**{**spec, "keys": None if spec["keys"] is None else tuple(spec["keys"])}))
        self.policy.load_state_dict(state_dict["policy"])
        self.pool.load_state_dict(state_dict["pool"])
        self.step, self.epoch = state_dict["step"], state_dict["epoch"]
        self.batch_in_epoch = state_dict.get("batch_in_epoch", 0)
        self.counts = dict(state_dict["counts"])
        if self.stale is not None:
            self.stale.load_state_dict(state_dict["stale"])
        if self.coordinator is not None:
            self.coordinator.load_state_dict(state_dict["coordinator"])

    def _set_spec(self, spec: BatchSpec) -> None:
        self.pool.describe(spec.names, spec.pad_values(self.pad_values))
        self.spec = spec

    def _sequence_losses(
        self,
        scores: Tensor,
        labels: Tensor | None,
        lm_head: nn.Module | Tensor | None,
        head: tuple[float | None, float],
    ) -> tuple[Tensor, Tensor]:
        """``(loss, flags)`` per sequence from LM logits, or from hidden states and the LM head; ``head`` is a
        capped or scaled head's ``(softcap, logit_scale)``."""
        if labels is None:
            raise ValueError("a language-model batch needs its (B, T) labels as targets")
        if lm_head is None:
            return self.policy.sequence_losses(scores, labels, *head)
        weight, bias = lm_head_parameters(lm_head)
        return self.policy.linear_sequence_losses(
            scores.detach(), weight.detach(), None if bias is None else bias.detach(), labels, *head
        )

    def _everything(self, scores: Tensor, targets: Tensor | None) -> Selection:
        """Every row, with its loss (the Stale-SB cache stores it), prob 1, weight 1."""
        n, device = scores.shape[0], scores.device
        if targets is None:
            loss = scores.detach().float()
        else:  # the loss of SPEC section 2 (bad targets give NaN, where F.cross_entropy would raise)
            loss, _ = ops.row_losses(
                logits=scores.detach(), targets=targets, ignore_index=self.policy.ignore_index,
                label_smoothing=getattr(self.policy, "label_smoothing", 0.0),
                backend=ops.resolve(self.policy.backend, device),
            )  # fmt: skip
        every = torch.arange(n, device=device)
        count = torch.full((), n, dtype=torch.int32, device=device)
        ones = torch.ones(n, device=device)
        return Selection(every, count, loss, ones, ones if self.policy.weighted else None)

    def _batch(self, rows: tuple[Tensor, ...], step_weight: Tensor | None = None) -> BackwardBatch:
        self.counts["backward"] += rows[0].shape[0]
        assert self.spec is not None  # rows exist only after observe() recorded the batch's layout
        batch = self.spec.unflatten(rows)
        if step_weight is None:
            return batch
        weight = step_weight if batch.weight is None else step_weight * batch.weight
        return batch._replace(weight=weight)
