"""When selection runs (Schedule) and when the scoring pass can be skipped (StaleSB), for SelectiveBackprop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Schedule:
    """Selection is active only for steps in ``[start, end) * total_steps`` and not on every ``interrupt``-th
    step (Composer / seed 003); on the other steps the whole batch goes to the backward pass.

    Args:
        start, end: fractions of ``total_steps`` between which selection is active.
        interrupt: if > 0, every ``interrupt``-th step (0, n, 2n, ...) backpropagates the whole batch.
        total_steps: observe calls of the whole run; needed when start > 0 or end < 1.
    """

    def __init__(
        self, start: float = 0.0, end: float = 1.0, interrupt: int = 0, total_steps: int | None = None
    ) -> None:
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
        if (start > 0 or end < 1) and not total_steps:
            raise ValueError("start/end fractions need total_steps (the number of observe calls in the run)")
        if isinstance(interrupt, bool) or not isinstance(interrupt, int) or interrupt < 0:
            raise ValueError(f"interrupt must be an int >= 0, got {interrupt!r}")
        self.start, self.end, self.interrupt, self.total_steps = start, end, interrupt, total_steps

    def active(self, step: int, epoch: int = 0, batch_in_epoch: int = 0) -> bool:
        """Whether selection runs at ``step`` (the 0-based observe call; ``epoch`` and ``batch_in_epoch``
        are the ones :class:`ComposerSchedule` counts by)."""
        if self.total_steps and not self.start * self.total_steps <= step < self.end * self.total_steps:
            return False
        return not (self.interrupt and step % self.interrupt == 0)


class ComposerSchedule(Schedule):
    """MosaicML Composer's selective-backprop schedule, exactly (SPEC section 10).

    Selection runs on a batch when ``start <= elapsed < end`` and, with ``interrupt > 0``, not when
    ``(batch_in_epoch + 1) % interrupt == 0``. ``elapsed`` is the fraction of the run done before the batch,
    in the unit of Composer's ``max_duration``: batches done / ``max_duration`` with ``unit="batch"``, or
    epochs done / ``max_duration`` with ``unit="epoch"`` (it then changes only at epoch boundaries). Composer's
    defaults: start 0.5, end 0.9, interrupt 2 (every second batch of an epoch backpropagates everything).
    :class:`Schedule` differs: it counts steps from the run's start and interrupts steps 0, n, 2n, ...
    """

    def __init__(
        self, start: float = 0.5, end: float = 0.9, interrupt: int = 2, *, max_duration: int, unit: str = "batch"
    ) -> None:
        if isinstance(max_duration, bool) or not isinstance(max_duration, int) or max_duration < 1:
            raise ValueError(f"max_duration must be an int >= 1 (batches or epochs of the run), got {max_duration!r}")
        if unit not in ("batch", "epoch"):
            raise ValueError(f"unit must be 'batch' or 'epoch' (Composer's max_duration unit), got {unit!r}")
        super().__init__(start, end, interrupt, total_steps=None if (start == 0 and end == 1) else max_duration)
        self.max_duration, self.unit = max_duration, unit

    def active(self, step: int, epoch: int = 0, batch_in_epoch: int = 0) -> bool:
        elapsed = (step if self.unit == "batch" else epoch) / self.max_duration
        in_interval = self.start <= elapsed < self.end
        return in_interval and (self.interrupt == 0 or (batch_in_epoch + 1) % self.interrupt != 0)


class StaleSB:
    """Stale-SB (Jiang et al.): only every ``every``-th epoch scores the data; the others select from a cache
    of each sample's last loss, indexed by dataset index, and skip the scoring forward pass.

    The cache lives on the device of the first losses stored. Every fresh loss refreshes it: the scoring
    pass's (also on steps where the schedule backpropagates the whole batch), and those given to
    ``SelectiveBackprop.refresh`` from the backward batches.

    A sample id outside ``[0, num_samples)`` is never written into another sample's slot, nor read from
    one: it is stored in a spare slot past the end, read back as NaN (never selected, counted non-finite)
    and counted in ``bad_ids`` on the device (no sync); :meth:`check` raises on it.
    """

    def __init__(self, every: int, num_samples: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 2:
            raise ValueError(f"every must be an int >= 2 (1 would never be stale), got {every!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be the dataset size (an int >= 1), got {num_samples!r}")
        self.every, self.num_samples = every, num_samples
        self._cache: Tensor | None = None  # (num_samples + 1,) float32, NaN where never scored; the last: spare
        self.bad_ids: Tensor | None = None  # 0-d int64: sample ids seen outside [0, num_samples)

    @property
    def cache(self) -> Tensor | None:
        """(num_samples,) float32: each sample's last loss, NaN where never scored."""
        return None if self._cache is None else self._cache[: self.num_samples]

    def fresh(self, epoch: int) -> bool:
        """Whether ``epoch`` scores the data (else it selects from the cache)."""
        return epoch % self.every == 0

    def store(self, sample_ids: Tensor, losses: Tensor) -> None:
        if self._cache is None:
            self._cache = torch.full((self.num_samples + 1,), float("nan"), device=losses.device)
            self.bad_ids = torch.zeros((), dtype=torch.int64, device=losses.device)
        slots, _ = self._slots(sample_ids, losses.shape[0])
        self._cache[slots] = losses.detach().float()  # made above

    def cached(self, sample_ids: Tensor) -> Tensor:
        if self._cache is None:
            raise ValueError("a stale epoch came before any loss was stored: the first epoch must score the data")
        slots, bad = self._slots(sample_ids, sample_ids.shape[0] if isinstance(sample_ids, Tensor) else -1)
        return torch.where(bad, float("nan"), self._cache[slots])

    def check(self) -> None:
        """Raise ``ValueError`` if any sample id was outside ``[0, num_samples)`` (reads a device counter:
        synchronizes); the counter is reset when reported."""
        if self.bad_ids is not None and (bad := int(self.bad_ids)):
            self.bad_ids.zero_()
            raise ValueError(
                f"{bad} sample id(s) were outside [0, num_samples={self.num_samples}): pass each row's dataset "
                "index (e.g. from a Dataset that returns it) and the dataset's size as num_samples"
            )

    def _slots(self, sample_ids: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """Cache slots of the ids (the spare slot for ids out of range) and which ids were out of range."""
        assert self._cache is not None and self.bad_ids is not None  # store() or cached() made them
        if not isinstance(sample_ids, Tensor) or sample_ids.dim() != 1 or sample_ids.shape[0] != n:
            raise ValueError(f"sample_ids must be a 1-D tensor of {n} dataset indices, got {sample_ids!r:.80}")
        if sample_ids.dtype not in (torch.int64, torch.int32) or sample_ids.device != self._cache.device:
            raise ValueError(
                f"sample_ids must be int64 or int32 on {self._cache.device}, "
                f"got {sample_ids.dtype} on {sample_ids.device}"
            )
        bad = (sample_ids < 0) | (sample_ids >= self.num_samples)
        self.bad_ids.add_(bad.sum())
        return torch.where(bad, self.num_samples, sample_ids.long()), bad

    def state_dict(self) -> dict[str, Any]:
        return {"cache": None if self._cache is None else self._cache[: self.num_samples].clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the cache; refuses one of another size or dtype (its values are any losses, NaN included)."""
        cache = state_dict.get("cache") if isinstance(state_dict, dict) else None
        if not isinstance(state_dict, dict) or "cache" not in state_dict:
            raise ValueError("corrupted StaleSB state: need a dict with 'cache'")
        if cache is None:
            self._cache = self.bad_ids = None
            return
        shape = (self.num_samples,)
        if not isinstance(cache, Tensor) or cache.dtype != torch.float32 or tuple(cache.shape) != shape:
            raise ValueError(f"StaleSB cache must be float32 of shape {shape} (num_samples), got {cache!r:.80}")
        self._cache = torch.cat([cache, cache.new_full((1,), float("nan"))])
        self.bad_ids = torch.zeros((), dtype=torch.int64, device=cache.device)
