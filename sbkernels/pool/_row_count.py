"""RowCount: the pool's host side. What the host knows about the rows held, without waiting for the GPU.

After each push the device's cursor is read back asynchronously (a :class:`Readback`); the host learns how
many rows arrived only when that readback is done, so it keeps bounds:

- lower: rows known to have arrived (completed readbacks) minus rows handed out;
- upper: the lower bound plus, for every readback still in flight, the most its push could add (its N).

A batch is handed out only when the lower bound shows ``batch_size`` rows; a push is accepted without
waiting when the upper bound shows it fits. Waiting is explicit (:meth:`wait_oldest`, :meth:`wait_all`)
and counted in ``host_waits``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..kernels import device_guard
from ..slots import CURSOR_OFFSET


class Readback(Protocol):
    """A copy of the pool's cursor on its way to the host: ``host`` is valid once ``done()`` is True."""

    host: Tensor

    def done(self) -> bool: ...  # never waits

    def wait(self) -> None: ...  # blocks until done


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


ReadbackFactory = Callable[[Tensor], Readback]


Widths = tuple[int | None, ...]  # per pooled tensor: its dim 1 in one push (None: a tensor of fixed shape)


@dataclass
class _InFlight:
    readback: Readback
    rows_out: int  # rows handed out before this readback was started
    rows_pushed: int  # the most its push could add (its N)
    widths: Widths  # the push's widths, for the batches its rows end up in


class RowCount:
    """Host bookkeeping of one pool. ``readback`` None: the cursor is read at once (a synchronous device)."""

    def __init__(self, readback: ReadbackFactory | None) -> None:
        self.readback = readback
        self.rows_out = 0  # rows handed out (exact)
        self.rows_in = 0  # rows gathered in, as far as completed readbacks tell
        self.largest_push = 0
        self.host_waits = 0  # waits for a readback, each one a host-GPU sync on CUDA
        self._in_flight: deque[_InFlight] = deque()
        #: pushes whose rows are counted and not all handed out: (rows in after the push, its widths)
        self._pushes: deque[tuple[int, Widths]] = deque()

    def pushed(self, cursor: Tensor, rows_pushed: int, widths: Widths = ()) -> None:
        """Record a push of at most ``rows_pushed`` rows of dim-1 ``widths`` whose gather advanced ``cursor``."""
        self.largest_push = max(self.largest_push, rows_pushed)
        if self.readback is None:
            self.rows_in = int(cursor[CURSOR_OFFSET]) + self.rows_out
            self._pushes.append((self.rows_in, widths))
            return
        self._in_flight.append(_InFlight(self.readback(cursor), self.rows_out, rows_pushed, widths))

    def poll(self) -> None:
        """Take in every readback that is done, oldest first; never waits."""
        while self._in_flight and self._in_flight[0].readback.done():
            done = self._in_flight.popleft()
            self.rows_in = max(self.rows_in, int(done.readback.host[CURSOR_OFFSET]) + done.rows_out)
            self._pushes.append((self.rows_in, done.widths))

    @property
    def known(self) -> int:
        """Rows certainly held (the lower bound)."""
        return self.rows_in - self.rows_out

    @property
    def upper_bound(self) -> int:
        return self.known + sum(f.rows_pushed for f in self._in_flight)

    @property
    def in_flight(self) -> bool:
        return bool(self._in_flight)

    def wait_oldest(self) -> None:
        self.host_waits += 1
        self._in_flight[0].readback.wait()
        self.poll()

    def wait_all(self) -> None:
        """Learn the exact count (waits for every readback; use at epoch end or for a checkpoint)."""
        while self._in_flight:
            self._in_flight[-1].readback.wait()
            self.poll()

    def took(self, rows: int) -> Widths | None:
        """Hand out the next ``rows`` rows (known to be held); returns, per tensor, the widest any of them was
        pushed at (rows are handed out in push order, so they came from the pushes counted first), or None
        when no push told its widths."""
        start, end = self.rows_out, self.rows_out + rows
        self.rows_out = end
        widest: Widths | None = None
        for pushed_end, widths in self._pushes:
            if pushed_end > start and widths:
                widest = widths if widest is None else tuple(_wider(a, b) for a, b in zip(widest, widths, strict=True))
            if pushed_end >= end:
                break
        while self._pushes and self._pushes[0][0] <= end:  # pushes whose rows are all handed out
            self._pushes.popleft()
        return widest

    def reset(self, held: int, rows_out: int = 0, widths: Widths = ()) -> None:
        """Start over knowing exactly ``held`` rows (of ``widths``) and ``rows_out`` handed out (after a flush, a
        checkpoint)."""
        self.wait_all()
        self.rows_in, self.rows_out = rows_out + held, rows_out
        self._pushes = deque([(self.rows_in, widths)] if held else [])


def _wider(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)
