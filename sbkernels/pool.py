"""SelectionPool: collect selected rows across calls and hand out backward batches of exactly batch_size.

How it avoids stalling the GPU:

- ``push`` gathers ``tensor[sel.indices[:sel.count]]`` for every pushed tensor into device buffers with one
  ``gather_rows`` launch; the count is read on the device.
- After each push the buffer cursor is copied to pinned host memory and an event is recorded. The host
  learns how many rows arrived only when that event has completed (``event.query()``, never a wait), so a
  batch may surface one push late, but the host never blocks on the GPU.
- Popping a batch hands out a view of the first ``batch_size`` rows and moves the rest to a second set of
  buffers on the device (again ``gather_rows``, with the remaining count computed on the device).

The host keeps only lower and upper bounds on the rows held. Before a push it checks that even the upper
bound fits the capacity; only if it cannot be sure does it wait for an outstanding readback, and if the
pool really is full it raises. ``ready_batches`` likewise waits and drains when the bounds cannot show that
another push of the largest size seen fits, so a loop of push + ready_batches never finds the pool full.
Rows are never dropped. On CPU the same code runs synchronously; the tests also run the asynchronous
path on CPU, with readbacks that complete late.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .gather import CURSOR_INVALID, CURSOR_OFFSET, CURSOR_OVERFLOW, gather_rows, new_cursor
from .kernels.common import device_guard
from .selection import Selection


class Readback(Protocol):
    """A copy of the pool's cursor on its way to the host: ``host`` is valid once ``done()`` is True."""

    host: Tensor

    def done(self) -> bool: ...  # never waits

    def wait(self) -> None: ...  # blocks until done (the pool counts these in host_waits)


def pinned_like(t: Tensor) -> Tensor:
    """Page-locked host memory shaped like ``t`` (torch's caching host allocator reuses it)."""
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True)


class EventReadback:
    """The cursor copied to pinned host memory behind the queued work; a CUDA event marks the copy done.

    Copy and event go to the cursor's own GPU, not the current one: an event recorded on another device's
    stream would report done before the copy ran, and the pool would hand out rows never written.
    """

    def __init__(self, cursor: Tensor) -> None:
        with device_guard(cursor.device):
            self.host = pinned_like(cursor)
            self.host.copy_(cursor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(cursor.device))

    def done(self) -> bool:
        return self.event.query()

    def wait(self) -> None:
        self.event.synchronize()


@dataclass
class _Pending:
    readback: Readback
    rows_out: int  # rows handed out before this readback was enqueued
    rows_pushed: int  # rows this push could have added at most (its N)


@dataclass(frozen=True)
class _Layout:
    """How one pushed tensor is stored: trailing shape and dtype, and the dim order of its buffer."""

    trailing: tuple[int, ...]
    dtype: torch.dtype
    perm: tuple[int, ...]  # buffer dims = source dims permuted by perm (channels_last stays dense)

    @property
    def inverse(self) -> tuple[int, ...]:
        return tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__))


def _dense_order(t: Tensor) -> tuple[int, ...]:
    """Dim order (0 first) in which the rows of ``t`` are contiguous, e.g. NHWC for channels_last."""
    perm = (0, *sorted(range(1, t.dim()), key=lambda d: -t.stride(d)))
    rows = t.permute(perm)
    expected = 1
    for d in range(rows.dim() - 1, 0, -1):
        if rows.size(d) != 1 and rows.stride(d) != expected:
            return tuple(range(t.dim()))  # no dense order: gathered element-wise into a standard layout
        expected *= rows.size(d)
    return perm


class SelectionPool:
    """Accumulates selected rows and yields backward batches of exactly ``batch_size`` rows.

    Args:
        batch_size: rows per backward batch.
        capacity: rows the device buffers hold. Default: ``batch_size + 2 * N`` for the largest N pushed
            so far (the buffers grow, on the device, when a larger push arrives), so that the host never
            waits while the GPU is at most one push behind. An explicit capacity is fixed and must be at
            least ``batch_size - 1 + N`` for every push (checked, with a clear error); the tighter it is,
            the more often the host waits for a row count.
        readback: how the row count reaches the host (a :class:`Readback` factory called with the cursor
            after each push). Default: :class:`EventReadback` on CUDA (asynchronous), at once on CPU.

    Every selected row comes out exactly once, in selection order: in a batch from ``ready_batches`` or
    in the final batch from ``flush``. A yielded batch is a view into the pool, valid until the next
    batch is produced: clone it to keep it longer.
    """

    def __init__(
        self, batch_size: int, capacity: int | None = None, readback: Callable[[Tensor], Readback] | None = None
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if capacity is not None and (
            isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < batch_size
        ):
            raise ValueError(f"capacity must be an int >= batch_size ({batch_size}), got {capacity!r}")
        self.batch_size = batch_size
        self._capacity = capacity
        self._growable = capacity is None
        self._layouts: list[_Layout] | None = None
        self._buffers: list[Tensor] = []
        self._spare: list[Tensor] = []
        self._cursor: Tensor | None = None
        self._spare_cursor: Tensor | None = None
        self._shift: Tensor | None = None  # arange(batch_size, capacity): rows kept after a pop
        self._rows_out = 0  # rows handed out (exact)
        self._rows_in = 0  # rows gathered in, as far as completed readbacks tell (a lower bound)
        # How the cursor reaches the host: None reads it at once (CPU); a Readback factory reads it late
        # (CUDA: EventReadback; the tests inject readbacks that complete late on the CPU).
        self._readback = readback
        self._pending: deque[_Pending] = deque()
        self._largest_push = 0  # the largest N pushed: ready_batches keeps room for one more such push
        #: times the host waited for an outstanding readback to be sure the next push fits (0 at the default
        #: capacity while the GPU is at most one push behind)
        self.host_waits = 0

    # ----------------------------------------------------------------------------------------- public
    @property
    def capacity(self) -> int | None:
        return self._capacity

    @property
    def device(self) -> torch.device | None:
        return self._cursor.device if self._cursor is not None else None

    def rows_known(self) -> int:
        """Rows the host knows are in the pool (a lower bound on CUDA; exact after ``flush``)."""
        self._poll()
        return self._rows_in - self._rows_out

    def push(self, selection: Selection, *tensors: Tensor) -> None:
        """Append the selected rows of each tensor (leading dim N, aligned with the selection)."""
        if not tensors:
            raise ValueError("push needs at least one tensor to gather rows from")
        n = selection.indices.shape[0]
        device = selection.indices.device
        for i, t in enumerate(tensors):
            if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[0] != n:
                raise ValueError(f"tensor {i} must have leading dim {n} to match the selection")
            if t.device != device:
                raise ValueError(f"tensor {i} is on {t.device} but the selection is on {device}")
        if self._layouts is None:
            self._allocate(tensors, n, device)
        self._check_matches(tensors, device)
        self._largest_push = max(self._largest_push, n)
        self._reserve(n)
        sources = [t.permute(layout.perm) for t, layout in zip(tensors, self._layouts, strict=True)]
        gather_rows(sources, selection.indices, selection.count, self._buffers, self._cursor)
        self._read_back(n)

    def ready_batches(self, sync: bool = False):
        """Yield every batch of exactly ``batch_size`` rows the host knows is complete.

        Does not wait for the GPU unless ``sync=True`` (use that at epoch end, before ``flush``) or the
        capacity is too tight to be sure the next push fits; then it waits and drains, so that a loop of
        ``push`` + ``ready_batches`` never finds the pool full.
        """
        if self._layouts is None:
            return
        if sync:
            self._wait_all()
        while True:
            self._poll()
            while self._rows_in - self._rows_out >= self.batch_size:
                yield self._pop()
            if not self._pending or self._upper_bound() + self._largest_push <= self._capacity:
                return
            # The bounds cannot show that a push as large as the largest so far will fit, and push cannot
            # hand out batches: learn the real count now (waits for the GPU) and drain.
            self.host_waits += 1
            self._pending[0].readback.wait()

    def flush(self) -> tuple[Tensor, ...] | None:
        """Synchronize and return every row still in the pool as one batch (None if empty).

        After ``ready_batches(sync=True)`` this is the final partial batch, shorter than batch_size. The
        returned tensors are copies: the pool is empty afterwards.
        """
        if self._layouts is None:
            return None
        self._wait_all()
        held = self._rows_in - self._rows_out
        if held == 0:
            return None
        batch = tuple(t.clone() for t in self._views(held))
        self._cursor.narrow(0, CURSOR_OFFSET, 1).zero_()
        self._rows_out += held
        return batch

    def check(self) -> None:
        """Synchronize and raise if any row was ever dropped (overflow) or any index was out of range."""
        if self._cursor is None:
            return
        counters = (self._cursor + self._spare_cursor)[[CURSOR_OVERFLOW, CURSOR_INVALID]]  # cursors swap on pop
        overflow, invalid = (int(v) for v in counters.tolist())
        if overflow or invalid:
            raise RuntimeError(f"SelectionPool: {overflow} row(s) overflowed, {invalid} index(es) out of range")

    def state_dict(self) -> dict[str, Any]:
        """The rows still held (synchronizes) and the counters, for checkpointing mid-epoch."""
        if self._layouts is None:
            return {"batch_size": self.batch_size, "capacity": self._capacity, "growable": self._growable, "rows": None}
        self._wait_all()
        held = self._rows_in - self._rows_out
        rows = [t.clone() for t in self._views(held)]
        return {"batch_size": self.batch_size, "capacity": self._capacity, "growable": self._growable, "rows": rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["batch_size"] != self.batch_size:
            raise ValueError(f"batch_size mismatch: saved {state_dict['batch_size']}, pool {self.batch_size}")
        rows = state_dict["rows"]
        self.__init__(self.batch_size, None if state_dict.get("growable") else state_dict["capacity"], self._readback)
        if rows is None or rows[0].shape[0] == 0:
            return
        held = rows[0].shape[0]
        everything = torch.ones(held, dtype=torch.bool, device=rows[0].device)
        indices = torch.arange(held, device=rows[0].device)
        self.push(Selection(indices, everything.sum().to(torch.int32), everything, everything), *rows)

    # ---------------------------------------------------------------------------------------- private
    def _allocate(self, tensors: tuple[Tensor, ...], n: int, device: torch.device) -> None:
        if self._capacity is None:
            self._capacity = self.batch_size + 2 * n
        self._layouts = [_Layout(tuple(t.shape[1:]), t.dtype, _dense_order(t)) for t in tensors]
        for layout in self._layouts:
            shape = (self._capacity, *(layout.trailing[d - 1] for d in layout.perm[1:]))
            self._buffers.append(torch.empty(shape, dtype=layout.dtype, device=device))
            self._spare.append(torch.empty(shape, dtype=layout.dtype, device=device))
        self._cursor = new_cursor(device)
        self._spare_cursor = new_cursor(device)
        if self._readback is None and device.type == "cuda":
            self._readback = EventReadback
        self._shift = torch.arange(self.batch_size, self._capacity, dtype=torch.int64, device=device)

    def _check_matches(self, tensors: tuple[Tensor, ...], device: torch.device) -> None:
        if len(tensors) != len(self._layouts):
            raise ValueError(f"push got {len(tensors)} tensors, the pool holds {len(self._layouts)}")
        for i, (t, layout) in enumerate(zip(tensors, self._layouts, strict=True)):
            if tuple(t.shape[1:]) != layout.trailing or t.dtype != layout.dtype:
                raise ValueError(
                    f"tensor {i} has rows {tuple(t.shape[1:])} {t.dtype}, the pool holds "
                    f"{layout.trailing} {layout.dtype}"
                )
        if device != self._cursor.device:
            raise ValueError(f"the pool lives on {self._cursor.device}, this push is on {device}")

    def _views(self, rows: int) -> tuple[Tensor, ...]:
        """The first ``rows`` rows of every buffer, in the pushed tensors' dim order (no copy)."""
        return tuple(buf[:rows].permute(lay.inverse) for buf, lay in zip(self._buffers, self._layouts, strict=True))

    def _grow(self, capacity: int) -> None:
        """Larger buffers for the default capacity; the rows held are copied on the device (no sync)."""
        for buffers in (self._buffers, self._spare):
            for i, old in enumerate(buffers):
                new = torch.empty((capacity, *old.shape[1:]), dtype=old.dtype, device=old.device)
                new[: old.shape[0]].copy_(old)
                buffers[i] = new
        self._capacity = capacity
        self._shift = torch.arange(self.batch_size, capacity, dtype=torch.int64, device=self._cursor.device)

    def _reserve(self, n: int) -> None:
        """Make sure a push of n rows cannot overflow: wait for readbacks only if the bound says so."""
        if self._growable and self.batch_size + 2 * n > self._capacity:
            self._grow(max(2 * self._capacity, self.batch_size + 2 * n))
        if self.batch_size - 1 + n > self._capacity:
            raise ValueError(
                f"SelectionPool capacity {self._capacity} is too small for a push of {n} rows on top of up to "
                f"{self.batch_size - 1} waiting rows: use capacity >= {self.batch_size - 1 + n} or the default"
            )
        self._poll()
        while self._upper_bound() + n > self._capacity and self._pending:
            self.host_waits += 1
            self._pending[0].readback.wait()
            self._poll()
        if self._upper_bound() + n > self._capacity:
            raise RuntimeError(
                f"SelectionPool is full ({self._rows_in - self._rows_out} of {self._capacity} rows held): take "
                "the ready batches (ready_batches()) before pushing more"
            )

    def _upper_bound(self) -> int:
        return self._rows_in - self._rows_out + sum(r.rows_pushed for r in self._pending)

    def _read_back(self, rows_pushed: int) -> None:
        if self._readback is None:  # synchronous device: the count is known at once
            self._rows_in = int(self._cursor[CURSOR_OFFSET]) + self._rows_out
            return
        self._pending.append(_Pending(self._readback(self._cursor), self._rows_out, rows_pushed))

    def _poll(self) -> None:
        while self._pending and self._pending[0].readback.done():
            done = self._pending.popleft()
            self._rows_in = max(self._rows_in, int(done.readback.host[CURSOR_OFFSET]) + done.rows_out)

    def _wait_all(self) -> None:
        while self._pending:
            self._pending[-1].readback.wait()
            self._poll()

    def _pop(self) -> tuple[Tensor, ...]:
        """Hand out the first batch_size rows; move the rest to the spare buffers on the device."""
        batch = self._views(self.batch_size)
        remaining = self._cursor[CURSOR_OFFSET] - self.batch_size  # device-side count of rows kept
        self._spare_cursor.narrow(0, CURSOR_OFFSET, 1).zero_()
        gather_rows(self._buffers, self._shift, remaining, self._spare, self._spare_cursor)
        self._buffers, self._spare = self._spare, self._buffers
        self._cursor, self._spare_cursor = self._spare_cursor, self._cursor
        self._rows_out += self.batch_size
        return batch
