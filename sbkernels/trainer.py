"""SelectiveBackprop: the few lines a custom training loop needs.

A complete loop::

    sb = sbkernels.SelectiveBackprop(batch_size=128, beta=2.0, device="cuda")
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

Schedules (Composer / seed 003): selection is active only for steps in ``[start, end) * total_steps`` and
not on every ``interrupt``-th step; otherwise the whole batch goes to the backward pass. Stale-SB
(Jiang et al.): with ``staleness=n`` and ``num_samples``, epochs whose index is not a multiple of n select
from a device-resident cache of each sample's last loss (``needs_forward`` is False: skip the scoring
pass and call ``observe(None, None, ..., sample_ids=ids)``); every fresh loss refreshes the cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import gradmatch, ops, policies
from .pool import SelectionPool
from .selection import Selection
from .state import SelectorState

POLICIES = ("sb", "keep", "uniform", "importance", "gradmatch")
WEIGHTED_POLICIES = ("importance", "gradmatch")


class BackwardBatch(NamedTuple):
    """One backward batch: the pushed tensors (tuple, or dict when a dict was observed), the sample ids
    when they were given, and the unbiasing weights for policies that return them ("importance")."""

    data: tuple[Tensor, ...] | dict[str, Tensor]
    sample_ids: Tensor | None
    weight: Tensor | None


class SelectiveBackprop:
    """Selection + pooling + schedules + Stale-SB around :func:`sbkernels.select` and the peer policies.

    Args:
        batch_size: rows per backward batch.
        policy: "sb" (default), "keep", "uniform", "importance" or "gradmatch" (pass the penultimate
            features to ``observe(..., features=h)`` to match the weight gradient too).
        beta, floor, prime, history_size, seed: policy "sb" parameters (see :func:`sbkernels.select`).
        keep: fraction for policy "keep". rate / k: policy "uniform" (one of them); k: "importance",
            "gradmatch".
        start, end: fractions of ``total_steps`` between which selection is active.
        interrupt: if > 0, every ``interrupt``-th step backpropagates the whole batch.
        total_steps: steps (observe calls) of the whole run; needed when start > 0 or end < 1.
        staleness: n > 1 enables Stale-SB; needs ``num_samples`` (the dataset size, for the cache).
        fields: for dict batches, the keys that travel to the backward batch (default: every tensor
            whose leading dim is N).
        capacity: pool capacity (default derived from the first batch; see :class:`SelectionPool`).
    """

    def __init__(
        self,
        batch_size: int,
        *,
        policy: str = "sb",
        beta: float = 1.0,
        floor: float = 0.0,
        prime: int = 0,
        keep: float = 0.5,
        rate: float | None = None,
        k: int | None = None,
        history_size: int = 1024,
        seed: int = 0,
        device: torch.device | str = "cpu",
        start: float = 0.0,
        end: float = 1.0,
        interrupt: int = 0,
        total_steps: int | None = None,
        staleness: int = 1,
        num_samples: int | None = None,
        fields: tuple[str, ...] | None = None,
        capacity: int | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        backend: str | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
        if (start > 0 or end < 1) and not total_steps:
            raise ValueError("start/end fractions need total_steps (the number of observe calls in the run)")
        if isinstance(interrupt, bool) or not isinstance(interrupt, int) or interrupt < 0:
            raise ValueError(f"interrupt must be an int >= 0, got {interrupt!r}")
        if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 1:
            raise ValueError(f"staleness must be an int >= 1, got {staleness!r}")
        if staleness > 1 and not num_samples:
            raise ValueError("staleness > 1 (Stale-SB) needs num_samples, the dataset size, for the loss cache")
        if policy == "uniform" and (rate is None) == (k is None):
            raise ValueError('policy "uniform" needs exactly one of rate or k')
        if policy in WEIGHTED_POLICIES and k is None:
            raise ValueError(f'policy "{policy}" needs k, the rows to pick per batch')
        self.batch_size = batch_size
        self.policy = policy
        self.params = {"beta": beta, "floor": floor, "prime": prime, "keep": keep, "rate": rate, "k": k}
        self.start, self.end, self.interrupt, self.total_steps = start, end, interrupt, total_steps
        self.staleness = staleness
        self.fields = fields
        self.ignore_index, self.label_smoothing, self.backend = ignore_index, label_smoothing, backend
        self.state = SelectorState(history_size, seed=seed, device=device)
        self.pool = SelectionPool(batch_size, capacity)
        self.loss_cache = torch.full((num_samples,), float("nan"), device=device) if staleness > 1 else None
        self.step = 0  # observe calls so far
        self.epoch = 0
        #: examples seen by observe, scored by a forward pass, and handed to the backward pass
        self.counts = {"observed": 0, "scored": 0, "backward": 0}
        self._keys: tuple[str, ...] | None = None  # dict batches: the fields that travel
        self._has_ids = False
        self._has_weight = False

    # ------------------------------------------------------------------------------------ schedule
    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def needs_forward(self) -> bool:
        """False in Stale-SB's stale epochs: select from cached losses, skip the scoring forward pass."""
        return self.staleness <= 1 or self.epoch % self.staleness == 0

    def selecting(self, step: int | None = None) -> bool:
        """Whether selection is active at ``step`` (default: the next observe call)."""
        step = self.step if step is None else step
        if self.total_steps and not self.start * self.total_steps <= step < self.end * self.total_steps:
            return False
        return not (self.interrupt and step % self.interrupt == 0)

    # ------------------------------------------------------------------------------------- observe
    def observe(
        self,
        scores: Tensor | None,
        targets: Tensor | None,
        *batch: Any,
        sample_ids: Tensor | None = None,
        features: Tensor | None = None,
    ) -> Selection:
        """Select rows of this batch and queue them for the backward pass. Never synchronizes.

        Args:
            scores: (N, C) logits (with ``targets``), (N,) per-example losses (``targets=None``), or None
                in a Stale-SB stale epoch (losses come from the cache; needs ``sample_ids``).
            targets: (N,) class indices for logits; None for losses.
            batch: the tensors to train on (leading dim N), or a single dict of them.
            sample_ids: (N,) int64 dataset indices: needed for Stale-SB, and returned with each batch.
            features: (N, ...) penultimate activations, for policy "gradmatch".
        """
        tensors = self._flatten(batch)
        n = tensors[0].shape[0]
        if sample_ids is not None:
            self._has_ids = True
        selection = self._select(scores, targets, n, tensors[0].device, sample_ids, features)
        extra = [sample_ids] if sample_ids is not None else []
        if self.policy in WEIGHTED_POLICIES:  # full-batch steps carry weight 1: every push has the same tensors
            self._has_weight = True
            extra.append(selection.weight if selection.weight is not None else torch.ones(n, device=tensors[0].device))
        self.pool.push(selection, *tensors, *extra)
        self.step += 1
        self.counts["observed"] += n
        return selection

    def refresh(self, sample_ids: Tensor, losses: Tensor) -> None:
        """Store fresh per-example losses (e.g. from a backward batch) in the Stale-SB cache."""
        if self.loss_cache is not None:
            self.loss_cache[sample_ids] = losses.detach().float()

    # ------------------------------------------------------------------------------------- batches
    def ready_batches(self, sync: bool = False) -> Iterator[BackwardBatch]:
        """The backward batches known to be complete (exactly batch_size rows each)."""
        for rows in self.pool.ready_batches(sync=sync):
            yield self._unflatten(rows)

    def flush(self) -> Iterator[BackwardBatch]:
        """End of epoch: every remaining full batch, then the final partial batch (synchronizes)."""
        yield from self.ready_batches(sync=True)
        rest = self.pool.flush()
        if rest is not None:
            yield self._unflatten(rest)

    # --------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "selector": self.state.state_dict(),
            "pool": self.pool.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "counts": dict(self.counts),
            "loss_cache": None if self.loss_cache is None else self.loss_cache.clone(),
            "layout": (self._keys, self._has_ids, self._has_weight),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state.load_state_dict(state_dict["selector"])
        self.pool.load_state_dict(state_dict["pool"])
        self.step, self.epoch = state_dict["step"], state_dict["epoch"]
        self.counts = dict(state_dict["counts"])
        if self.loss_cache is not None:
            self.loss_cache.copy_(state_dict["loss_cache"])
        self._keys, self._has_ids, self._has_weight = state_dict["layout"]

    # ------------------------------------------------------------------------------------- private
    def _select(
        self,
        scores: Tensor | None,
        targets: Tensor | None,
        n: int,
        device: torch.device,
        ids: Tensor | None,
        features: Tensor | None,
    ) -> Selection:
        if scores is None:
            if self.loss_cache is None or ids is None:
                raise ValueError("observe(None, ...) selects from cached losses: needs staleness > 1 and sample_ids")
            scores, targets = self.loss_cache[ids], None
        else:
            self.counts["scored"] += n
            if self.loss_cache is not None and ids is not None and targets is None:
                self.refresh(ids, scores)
        if not self.selecting():  # schedule off or an interrupt step: the whole batch goes to the backward
            rows = torch.arange(n, device=device)
            count = torch.full((), n, dtype=torch.int32, device=device)
            return Selection(rows, count, torch.full((n,), float("nan"), device=device), torch.ones(n, device=device))
        selection = self._policy(scores, targets, features)
        if self.loss_cache is not None and ids is not None and targets is not None:
            self.refresh(ids, selection.loss)
        return selection

    def _policy(self, scores: Tensor, targets: Tensor | None, features: Tensor | None) -> Selection:
        p, common = dict(self.params), {"backend": self.backend}
        if p["k"] is not None:
            p["k"] = min(p["k"], scores.shape[0])  # a short last batch of the epoch
        if self.policy == "sb":
            if targets is None:
                return ops.select_losses(scores, self.state, p["beta"], p["floor"], p["prime"], **common)
            return ops.select(
                scores, targets, self.state, p["beta"], p["floor"], p["prime"], self.ignore_index,
                self.label_smoothing, **common,
            )  # fmt: skip
        common["ignore_index"] = self.ignore_index
        if self.policy == "keep":
            return policies.select_keep(scores, targets, self.state, p["keep"], **common)
        if self.policy == "uniform":
            return policies.select_uniform(scores, targets, self.state, p["rate"], p["k"], **common)
        if self.policy == "gradmatch":
            if targets is None:
                raise ValueError('policy "gradmatch" needs logits and targets, not losses')
            return gradmatch.select_gradmatch(scores, targets, self.state, p["k"], features, **common)
        return policies.select_importance(scores, targets, self.state, p["k"], **common)

    def _flatten(self, batch: tuple[Any, ...]) -> list[Tensor]:
        if len(batch) == 1 and isinstance(batch[0], Mapping):
            fields = batch[0]
            if self._keys is None:
                n = next(v for v in fields.values() if isinstance(v, Tensor)).shape[0]
                self._keys = self.fields or tuple(
                    key for key, v in fields.items() if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n
                )
            missing = [key for key in self._keys if key not in fields]
            if missing:
                raise ValueError(f"batch dict lacks the fields {missing} that travel to the backward pass")
            return [fields[key] for key in self._keys]
        if not batch or not all(isinstance(t, Tensor) for t in batch):
            raise ValueError("observe needs the batch tensors to train on (tensors, or one dict of tensors)")
        return list(batch)

    def _unflatten(self, rows: tuple[Tensor, ...]) -> BackwardBatch:
        self.counts["backward"] += rows[0].shape[0]
        rows = list(rows)
        weight = rows.pop() if self._has_weight else None
        ids = rows.pop() if self._has_ids else None
        data = dict(zip(self._keys, rows, strict=True)) if self._keys is not None else tuple(rows)
        return BackwardBatch(data, ids, weight)
