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

    def active(self, step: int) -> bool:
        """Whether selection runs at ``step`` (the 0-based observe call)."""
        if self.total_steps and not self.start * self.total_steps <= step < self.end * self.total_steps:
            return False
        return not (self.interrupt and step % self.interrupt == 0)


class StaleSB:
    """Stale-SB (Jiang et al.): only every ``every``-th epoch scores the data; the others select from a cache
    of each sample's last loss, indexed by dataset index, and skip the scoring forward pass.

    The cache lives on the device of the first losses stored. Every fresh loss refreshes it: the scoring
    pass's (also on steps where the schedule backpropagates the whole batch), and those given to
    ``SelectiveBackprop.refresh`` from the backward batches.
    """

    def __init__(self, every: int, num_samples: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 2:
            raise ValueError(f"every must be an int >= 2 (1 would never be stale), got {every!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be the dataset size (an int >= 1), got {num_samples!r}")
        self.every, self.num_samples = every, num_samples
        self.cache: Tensor | None = None  # (num_samples,) float32, NaN where never scored

    def fresh(self, epoch: int) -> bool:
        """Whether ``epoch`` scores the data (else it selects from the cache)."""
        return epoch % self.every == 0

    def store(self, sample_ids: Tensor, losses: Tensor) -> None:
        if self.cache is None:
            self.cache = torch.full((self.num_samples,), float("nan"), device=losses.device)
        self.cache[sample_ids] = losses.detach().float()

    def cached(self, sample_ids: Tensor) -> Tensor:
        if self.cache is None:
            raise ValueError("a stale epoch came before any loss was stored: the first epoch must score the data")
        return self.cache[sample_ids]

    def state_dict(self) -> dict[str, Any]:
        return {"cache": None if self.cache is None else self.cache.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cache = None if state_dict["cache"] is None else state_dict["cache"].clone()
