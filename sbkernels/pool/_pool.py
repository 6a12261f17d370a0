"""SelectionPool: collect selected rows across calls and hand out backward batches of exactly batch_size.

Two halves: :class:`~sbkernels.pool._buffers.RowBuffers` holds the rows on the device and gathers them there
(``gather_rows`` reads each selection's count on the device); :class:`~sbkernels.pool._row_count.RowCount` is what
the host knows about them, from cursor readbacks that complete asynchronously on CUDA (pinned memory +
event, ``EventReadback``), so a batch may surface a push late but the host never blocks on the GPU.

Before a push the host checks that the upper bound on the rows held leaves room; only if it cannot be
sure does it wait for an outstanding readback, and if the pool really is full it raises. ``ready_batches``
likewise waits and drains when the bounds cannot show that another push of the largest size seen fits, so
a loop of push + ready_batches never finds the pool full. Rows are never dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .._exclusive import ExclusiveUse
from ..selection import Selection
from ..slots import CURSOR_OFFSET
from ._buffers import Layout, RowBuffers
from ._row_count import EventReadback, ReadbackFactory, RowCount


class SelectionPool:
    """Accumulates selected rows and yields backward batches of exactly ``batch_size`` rows.

    Args:
        batch_size: rows per backward batch.
        capacity: rows the device buffers hold. Default: ``batch_size + 2 * N`` for the largest N pushed
            so far (the buffers grow, on the device, when a larger push arrives), so that the host never
            waits while the GPU is at most one push behind. An explicit capacity is fixed and must be at
            least ``batch_size - 1 + N`` for every push (checked, with a clear error); the tighter it is,
            the more often the host waits for a row count.
        readback: how the row count reaches the host: a factory called with the cursor after each push,
            returning a :class:`~sbkernels.pool._row_count.Readback`. Default: ``EventReadback`` on CUDA
            (asynchronous), an immediate read on CPU.

    Every selected row comes out exactly once, in selection order: in a batch from ``ready_batches`` or
    in the final batch from ``flush``. Every batch handed out owns its tensors (a copy made on the device,
    no sync): it stays valid however long it is kept, e.g. while gradient accumulation fetches several
    batches before using any (SPEC section 10).

    Variable lengths (SPEC section 9): ``pad_values`` gives, per pushed tensor, the value that pads its dim 1
    (None: that tensor's shape is fixed). The pool then keeps every row of batches padded to different
    lengths, re-padding each such tensor; a batch handed out is cut to the widest push its rows came from,
    which the host knows from each push's width and row count (no wait). ``names`` name the tensors in errors.

    Threads: a pool belongs to one thread at a time. A call that overlaps another thread's call on the same
    pool raises ``RuntimeError`` instead of handing out rows twice; guard a shared pool with a lock.
    """

    def __init__(
        self,
        batch_size: int,
        capacity: int | None = None,
        readback: ReadbackFactory | None = None,
        *,
        pad_values: Sequence[int | float | None] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if capacity is not None and (
            isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < batch_size
        ):
            raise ValueError(f"capacity must be an int >= batch_size ({batch_size}), got {capacity!r}")
        self.batch_size = batch_size
        self._fixed_capacity = capacity
        self._readback = readback
        self._buffers: RowBuffers | None = None
        self._count = RowCount(readback)
        self._exclusive = ExclusiveUse("SelectionPool")  # held during each call: detects a second thread
        self.describe(names, pad_values)

    def describe(
        self, names: Sequence[str] | None = None, pad_values: Sequence[int | float | None] | None = None
    ) -> None:
        """Name the tensors (for errors) and give their pad values, before the first push of them."""
        self._names = list(names) if names is not None else None
        self._pads = list(pad_values) if pad_values is not None else None

    @property
    def capacity(self) -> int | None:
        return self._buffers.capacity if self._buffers is not None else self._fixed_capacity

    @property
    def device(self) -> torch.device | None:
        return self._buffers.device if self._buffers is not None else None

    @property
    def _held(self) -> RowBuffers:
        """The buffers, which exist from the first push (or load) on."""
        if self._buffers is None:
            raise RuntimeError("the pool holds no rows yet: push a selection first")
        return self._buffers

    @property
    def host_waits(self) -> int:
        """Times the host waited for a row count to be sure the next push fits (0 at the default capacity
        while the GPU is at most one push behind)."""
        return self._count.host_waits

    def push(self, selection: Selection, *tensors: Tensor) -> None:
        """Append the selected rows of each tensor (leading dim N, aligned with the selection)."""
        with self._exclusive("push"):
            self._push(selection, tensors)

    def push_checked(self, selection: Selection, tensors: Sequence[Tensor]) -> None:
        """:meth:`push` of tensors that :meth:`check_push` has accepted (the caller checked them first)."""
        with self._exclusive("push"):
            self._push(selection, tuple(tensors), checked=True)

    def check_push(self, n: int, tensors: Sequence[Tensor]) -> None:
        """Raise on anything :meth:`push` refuses in ``tensors`` (leading dim ``n``), changing nothing. A
        caller that selects before it pushes (``SelectiveBackprop.observe``) checks first, so that a refused
        batch leaves the selection state as it was."""
        if not tensors:
            raise ValueError("push needs at least one tensor to gather rows from")
        names = self._tensor_names(len(tensors))
        for name, t in zip(names, tensors, strict=True):
            if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[0] != n:
                raise ValueError(f"{name} must have leading dim {n} to match the selection")
        pads = self._padded(len(tensors))
        for name, t, pad in zip(names, tensors, pads, strict=True):
            check_pad_value(name, t.dtype, pad)
        if self._buffers is not None:
            self._buffers.matches(tuple(tensors), names, pads)
        if self._fixed_capacity is not None:
            self._check_capacity(self._fixed_capacity, n)

    def _push(self, selection: Selection, tensors: tuple[Tensor, ...], checked: bool = False) -> None:
        n = selection.indices.shape[0]
        if not checked:
            self.check_push(n, tensors)
        widths = self._widths(tensors)  # before re-padding: the push's own widths
        if self._buffers is None:
            self._start(tensors, n, selection.indices.device)
        tensors = self._fit(tensors)
        self._make_room(n)
        self._held.append(selection.indices, selection.count, tensors)
        self._count.pushed(self._held.cursor, n, widths)

    def ready_batches(self, sync: bool = False) -> Iterator[tuple[Tensor, ...]]:
        """Yield every batch of exactly ``batch_size`` rows the host knows is complete.

        Does not wait for the GPU unless ``sync=True`` (use that at epoch end, before ``flush``) or the
        capacity is too tight to be sure the next push fits; then it waits and drains, so that a loop of
        ``push`` + ``ready_batches`` never finds the pool full.
        """
        if self._buffers is None:
            return
        if sync:
            with self._exclusive("ready_batches"):
                self._count.wait_all()
        while True:
            with self._exclusive("ready_batches"):  # not held across the yield: the caller runs meanwhile
                batch = self._next_ready()
            if batch is None:
                return
            yield batch

    def _next_ready(self) -> tuple[Tensor, ...] | None:
        """The next complete batch, or None when the host knows of none and the next push surely fits."""
        count = self._count
        while True:
            count.poll()
            if count.known >= self.batch_size:
                return self._held.take_batch(count.took(self.batch_size))
            if not count.in_flight or count.upper_bound + count.largest_push <= self._held.capacity:
                return None
            count.wait_oldest()  # the bounds cannot show that the next push fits: learn the count, drain

    def flush(self) -> tuple[Tensor, ...] | None:
        """Synchronize and return every row still in the pool as one batch (None if empty).

        After ``ready_batches(sync=True)`` this is the final partial batch, shorter than batch_size. The
        returned tensors are copies: the pool is empty afterwards.
        """
        rows = self.drain()
        return None if rows is None or rows[0].shape[0] == 0 else rows

    def drain(self) -> tuple[Tensor, ...] | None:
        """Like :meth:`flush`, but an empty pool gives tensors of 0 rows (None only before any push)."""
        if self._buffers is None:
            return None
        with self._exclusive("drain"):
            self._count.wait_all()
            held = self._count.known
            batch = tuple(t.clone() for t in self._held.views(held, self._count.took(held)))
            self._held.clear()
            self._count.reset(0)  # empty: the counts since the last flush start again
        return batch

    def rows_gathered(self) -> Tensor:
        """Rows gathered since the last flush, as a 0-d device tensor (no sync): what a process group's
        ranks all-reduce to agree on their steps (:class:`~sbkernels.distributed._coordinator.StepCoordinator`)."""
        return self._held.cursor[CURSOR_OFFSET] + self._count.rows_out

    def take_batch(self) -> tuple[Tensor, ...]:
        """Hand out the next batch of exactly ``batch_size`` rows, which the caller knows were gathered
        (e.g. by a coordinator's decision); waits for the row count only if it has not arrived yet."""
        with self._exclusive("take_batch"):
            return self._take_batch()

    def _take_batch(self) -> tuple[Tensor, ...]:
        count = self._count
        count.poll()
        while count.known < self.batch_size and count.in_flight:
            count.wait_oldest()
        if count.known < self.batch_size:
            raise RuntimeError(f"take_batch: the pool holds {count.known} rows, fewer than {self.batch_size}")
        return self._held.take_batch(count.took(self.batch_size))

    def check(self) -> None:
        """Synchronize and raise if any row was ever dropped (overflow) or any index was out of range."""
        if self._buffers is not None:
            self._buffers.check()

    def state_dict(self) -> dict[str, Any]:
        """The rows still held (synchronizes), for checkpointing mid-epoch."""
        rows = None
        if self._buffers is not None:
            self._count.wait_all()
            rows = [t.clone() for t in self._held.views(self._count.known)]
        return {
            "batch_size": self.batch_size, "capacity": self._fixed_capacity, "rows": rows,
            "rows_out": self._count.rows_out,
        }  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Hold exactly the saved rows (any earlier content is dropped).

        Refuses, before changing anything, what no pool could have saved (SPEC section 11): another
        batch_size, rows that are not tensors with one common row count on one device, a negative
        ``rows_out``, or rows that do not match the tensors this pool already holds.
        """
        rows, rows_out = checked_pool_state(state_dict, self.batch_size)
        with self._exclusive("load_state_dict"):
            self._load(rows, rows_out)

    def _load(self, rows: list[Tensor] | None, rows_out: int) -> None:
        if rows is None:
            return
        names, pads = self._tensor_names(len(rows)), self._padded(len(rows))
        for name, t, pad in zip(names, rows, pads, strict=True):
            check_pad_value(name, t.dtype, pad)
        if self._buffers is not None:  # before anything changes
            self._buffers.matches(tuple(rows), names, pads)
        else:
            self._start(tuple(rows), max(rows[0].shape[0], 1), rows[0].device)
        self._held.load(list(self._fit(tuple(rows))))
        self._count.reset(rows[0].shape[0], rows_out, self._widths(tuple(rows)))

    # ---------------------------------------------------------------------------------------- private
    def _tensor_names(self, count: int) -> list[str]:
        if self._names is not None and len(self._names) == count:
            return self._names
        return [f"tensor {i}" for i in range(count)]

    def _widths(self, tensors: tuple[Tensor, ...]) -> tuple[int | None, ...]:
        """Each padded tensor's dim 1 as pushed (None for the others; () when nothing is padded): a backward
        batch is cut to the widest push its rows came from, so padding follows the batch (SPEC section 9)."""
        pads = self._padded(len(tensors))
        if all(pad is None for pad in pads):
            return ()
        return tuple(
            t.shape[1] if pad is not None and t.dim() >= 2 else None for t, pad in zip(tensors, pads, strict=True)
        )

    def _padded(self, count: int) -> list[int | float | None]:
        if self._pads is None:
            return [None] * count
        if len(self._pads) != count:
            raise ValueError(f"the pool has pad values for {len(self._pads)} tensors, got {count} tensors")
        return self._pads

    def _fit(self, tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Each padded tensor at the pool's length for it: a shorter one padded, a longer one widens the pool."""
        fitted = list(tensors)
        buffers = self._held
        for i, pad in enumerate(self._padded(len(tensors))):
            t = tensors[i]
            if pad is None or t.dim() < 2 or tuple(t.shape[2:]) != buffers.layouts[i].trailing[1:]:
                continue  # a fixed shape, or a mismatch that matches() reports
            held = buffers.layouts[i].trailing[0]
            if t.shape[1] > held:
                buffers.widen(i, t.shape[1], pad)
            elif t.shape[1] < held:
                filler = t.new_full((t.shape[0], held - t.shape[1], *t.shape[2:]), pad)
                fitted[i] = torch.cat([t, filler], dim=1)
        return tuple(fitted)

    def _start(self, tensors: tuple[Tensor, ...], n: int, device: torch.device) -> None:
        capacity = self._fixed_capacity or self.batch_size + 2 * n
        pads = self._padded(len(tensors))
        layouts = [Layout.of(t, padded=pad is not None and t.dim() >= 2) for t, pad in zip(tensors, pads, strict=True)]
        self._buffers = RowBuffers(layouts, capacity, self.batch_size, device)
        if self._readback is None and device.type == "cuda":
            self._count.readback = EventReadback

    def _make_room(self, n: int) -> None:
        """Make sure a push of n rows cannot overflow: wait for readbacks only if the bounds say so."""
        buffers, count = self._held, self._count
        # Default capacity: room for a batch and two pushes, plus the rows held beyond a batch (a rank of a
        # process group keeps the rows it gathered beyond the ranks' common steps).
        needed = self.batch_size + 2 * n + max(0, count.known - self.batch_size)
        if self._fixed_capacity is None and needed > buffers.capacity:
            buffers.resize(max(2 * buffers.capacity, needed))
        self._check_capacity(buffers.capacity, n)
        count.poll()
        while count.upper_bound + n > buffers.capacity and count.in_flight:
            count.wait_oldest()
        if count.upper_bound + n > buffers.capacity:
            raise RuntimeError(
                f"SelectionPool is full ({count.known} of {buffers.capacity} rows held): take the ready batches "
                "(ready_batches()) before pushing more"
            )

    def _check_capacity(self, capacity: int, n: int) -> None:
        if self.batch_size - 1 + n > capacity:
            raise ValueError(
                f"SelectionPool capacity {capacity} is too small for a push of {n} rows on top of up to "
                f"{self.batch_size - 1} waiting rows: use capacity >= {self.batch_size - 1 + n} or the default"
            )


def check_pad_value(name: str, dtype: torch.dtype, pad: object) -> None:
    """A pad value the field's dtype holds exactly: re-padding with 7 where 7.5 was asked would be silently
    wrong (an integer field takes an integer in its range, a bool field 0 or 1)."""
    if pad is None:
        return
    if isinstance(pad, bool) or not isinstance(pad, (int, float)):
        raise ValueError(f"the pad value of {name} must be a number, got {pad!r}")
    if dtype.is_floating_point or dtype.is_complex:
        return
    low, high = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    if not (float(pad).is_integer() and low <= pad <= high):
        raise ValueError(
            f"the pad value of {name} ({dtype}) must be an integer in [{low}, {high}], got {pad!r}: pass the value "
            "the collator pads with (for input_ids, the tokenizer's pad_token_id)"
        )


def checked_pool_state(state_dict: Any, batch_size: int) -> tuple[list[Tensor] | None, int]:
    """``(rows, rows_out)`` of a saved pool, or ValueError naming what no pool could have saved."""
    if not isinstance(state_dict, dict) or not {"batch_size", "capacity", "rows"} <= state_dict.keys():
        raise ValueError("corrupted SelectionPool state: need a dict with 'batch_size', 'capacity' and 'rows'")
    if state_dict["batch_size"] != batch_size:
        raise ValueError(f"batch_size mismatch: saved {state_dict['batch_size']!r}, pool {batch_size}")
    capacity = state_dict.get("capacity")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < batch_size):
        raise ValueError(
            f"corrupted SelectionPool state: capacity must be None or an int >= {batch_size}, got {capacity!r}"
        )
    rows_out = state_dict.get("rows_out", 0)
    if isinstance(rows_out, bool) or not isinstance(rows_out, int) or rows_out < 0:
        raise ValueError(f"corrupted SelectionPool state: rows_out must be an int >= 0, got {rows_out!r}")
    rows = state_dict["rows"]
    if rows is None:
        return None, rows_out
    if not isinstance(rows, (list, tuple)) or not rows or not all(isinstance(t, Tensor) and t.dim() >= 1 for t in rows):
        raise ValueError("corrupted SelectionPool state: rows must be a non-empty list of tensors with a row dim")
    held, device = rows[0].shape[0], rows[0].device
    if any(t.shape[0] != held or t.device != device for t in rows):
        raise ValueError("corrupted SelectionPool state: every saved tensor needs the same rows on one device")
    return list(rows), rows_out
