"""StepCoordinator: equal backward steps on every rank of a process group (SPEC section 8).

Under DDP every rank must run the same number of backward passes, or the gradient all-reduce hangs. A
step happens only when every rank has a full local batch, and every rank must decide that identically,
without a decision depending on when a host poll happens to see an event complete. So:

- after every push, each rank's count of rows gathered since the last flush (a device tensor) is
  all-reduced with MIN on the device, and its copy to the host is started (a readback);
- ``lag`` pushes later, every rank reads that value (waiting for it if it is not there yet: the only wait,
  on work enqueued ``lag`` pushes earlier) and takes ``min // batch_size - steps_taken`` steps. The decision
  depends only on the push count, so it is the same on every rank, on CPU and GPU alike;
- rows a rank gathered beyond the global minimum stay in its pool (never dropped or duplicated);
- at the end of the epoch, :meth:`final_batches` splits every rank's remaining rows into the same number of
  batches (``ceil(max_rows / batch_size)``, some possibly short or empty), each row weighted by
  ``W / rows_in_that_step_on_all_ranks``, so that DDP's average of the ranks' ``(weight * loss).sum()``
  gradients is the mean over every row backpropagated in the step.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..pool._row_count import ReadbackFactory


class StepCoordinator:
    def __init__(self, group, batch_size: int, lag: int = 2, readback: ReadbackFactory | None = None) -> None:
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
            raise ValueError(f"lag must be an int >= 0, got {lag!r}")
        self.group, self.batch_size, self.lag = group, batch_size, lag
        self.world = dist.get_world_size(group)
        self.readback = readback
        self.steps_taken = 0  # regular steps since the last flush
        self.agreed_rows = 0  # the global minimum of rows gathered, as of `lag` pushes ago
        self.host_waits = 0  # waits for an all-reduced count that had not reached the host yet
        self._pending: deque = deque()  # per push: a Readback of the reduced count, or the count (int)

    def pushed(self, rows_gathered: Tensor) -> None:
        """After a push: all-reduce (MIN) this rank's rows gathered since the last flush, on the device."""
        reduced = rows_gathered.reshape(1).clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.MIN, group=self.group)
        self._pending.append(int(reduced) if self.readback is None else self.readback(reduced))

    def steps_ready(self) -> int:
        """Steps every rank takes now: decided from the count all-reduced ``lag`` pushes ago."""
        for pending in self._pending:  # poll every count in flight (never waits), oldest first
            if not isinstance(pending, int):
                pending.done()
        while len(self._pending) > self.lag:
            oldest = self._pending.popleft()
            if not isinstance(oldest, int):
                if not oldest.done():
                    self.host_waits += 1
                    oldest.wait()
                oldest = int(oldest.host[0])
            self.agreed_rows = oldest
        ready = self.agreed_rows // self.batch_size - self.steps_taken
        self.steps_taken += ready
        return ready

    def step_weight(self, rows: int, device: torch.device) -> Tensor:
        """Per-row weights of a regular step: every rank has batch_size rows, so 1 / batch_size."""
        return torch.full((rows,), 1.0 / self.batch_size, device=device)

    def final_batches(self, held: int, device: torch.device) -> list[tuple[int, int, Tensor]]:
        """``(start, rows, weight)`` of this rank's final batches; the same count on every rank.

        Reads the ranks' row counts (a collective and a host read: call it at the end of the epoch).
        """
        most = torch.tensor([held], dtype=torch.int64, device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.group)
        count = math.ceil(int(most) / self.batch_size)
        sizes = [min(self.batch_size, max(0, held - i * self.batch_size)) for i in range(count)]
        totals = torch.tensor(sizes, dtype=torch.float32, device=device)
        dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=self.group)
        out = []
        for i, rows in enumerate(sizes):
            weight = torch.full((rows,), float(self.world), device=device) / totals[i]
            out.append((i * self.batch_size, rows, weight))
        self.restart()
        return out

    def restart(self) -> None:
        """A new epoch: the pools are empty, the counts start again from 0."""
        self._pending.clear()
        self.steps_taken = self.agreed_rows = 0

    def state_dict(self) -> dict[str, Any]:
        """The decisions still to come (waits for the counts in flight: a checkpoint synchronizes)."""
        pending = [v if isinstance(v, int) else (v.wait(), int(v.host[0]))[1] for v in self._pending]
        self._pending = deque(pending)
        return {"steps_taken": self.steps_taken, "agreed_rows": self.agreed_rows, "pending": pending}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the decisions to come; refuses counts a run could not have produced (negative, not ints)."""
        if not isinstance(state_dict, dict) or not {"steps_taken", "agreed_rows", "pending"} <= state_dict.keys():
            raise ValueError("corrupted StepCoordinator state: need steps_taken, agreed_rows and pending")
        values = [state_dict["steps_taken"], state_dict["agreed_rows"], *state_dict["pending"]]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"corrupted StepCoordinator state: counts must be ints >= 0, got {values!r:.120}")
        self.steps_taken, self.agreed_rows = state_dict["steps_taken"], state_dict["agreed_rows"]
        self._pending = deque(state_dict["pending"])
