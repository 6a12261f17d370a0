"""RowBuffers: the pool's device side. Selected rows are gathered into preallocated buffers on the device.

Each pushed tensor gets a buffer of ``capacity`` rows in the tensor's own dense dim order (channels_last
stays dense) and a spare of the same shape. ``append`` gathers ``tensor[indices[:count]]`` of every tensor
with one ``gather_rows`` launch that reads the count and the cursor on the device. ``take_batch`` hands out
a view of the first ``batch_size`` rows and moves the rest to the spare buffers, again on the device, with
the remaining count computed there; the buffers then swap. Nothing here reads a device value on the host
except :meth:`held_rows` and :meth:`check`, which say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops import gather_rows, new_cursor
from ..slots import CURSOR_INVALID, CURSOR_OFFSET, CURSOR_OVERFLOW


@dataclass(frozen=True)
class Layout:
    """How one pushed tensor is stored: trailing shape and dtype, and the dim order of its buffer."""

    trailing: tuple[int, ...]
    dtype: torch.dtype
    perm: tuple[int, ...]  # buffer dims = source dims permuted by perm (channels_last stays dense)

    @classmethod
    def of(cls, t: Tensor, padded: bool = False) -> Layout:
        """A padded tensor (its dim 1 may grow) is stored in its logical dim order."""
        return cls(tuple(t.shape[1:]), t.dtype, tuple(range(t.dim())) if padded else dense_order(t))

    @property
    def inverse(self) -> tuple[int, ...]:
        return tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__))


def dense_order(t: Tensor) -> tuple[int, ...]:
    """Dim order (0 first) in which the rows of ``t`` are contiguous, e.g. NHWC for channels_last."""
    perm = (0, *sorted(range(1, t.dim()), key=lambda d: -t.stride()[d]))
    rows = t.permute(perm)
    expected = 1
    for d in range(rows.dim() - 1, 0, -1):
        if rows.size(d) != 1 and rows.stride(d) != expected:
            return tuple(range(t.dim()))  # no dense order: gathered element-wise into a standard layout
        expected *= rows.size(d)
    return perm


class RowBuffers:
    """Device buffers for the rows of ``layouts``, ``capacity`` rows each, and their cursors."""

    def __init__(self, layouts: list[Layout], capacity: int, batch_size: int, device: torch.device) -> None:
        self.layouts, self.batch_size, self.device = layouts, batch_size, device
        self.capacity = 0
        self.buffers: list[Tensor] = []
        self.spare: list[Tensor] = []
        self.cursor = new_cursor(device)
        self._spare_cursor = new_cursor(device)
        self.resize(capacity)

    def matches(self, tensors: tuple[Tensor, ...], names: list[str], pads: list[int | float | None]) -> None:
        """Raise unless ``tensors`` have the layouts' number, trailing shapes, dtypes and device; a tensor with a
        pad value may differ in dim 1 (the pool re-pads it)."""
        if len(tensors) != len(self.layouts):
            raise ValueError(f"push got {len(tensors)} tensors, the pool holds {len(self.layouts)}")
        for name, t, layout, pad in zip(names, tensors, self.layouts, pads, strict=True):
            compared = 2 if pad is not None and t.dim() >= 2 else 1  # the first trailing dim compared
            if tuple(t.shape[compared:]) != layout.trailing[compared - 1 :] or t.dtype != layout.dtype:
                hint = ""
                if t.dim() >= 2 and tuple(t.shape[2:]) == layout.trailing[1:] and t.dtype == layout.dtype:
                    hint = f": batches of different lengths need a pad value for {name} (pad_values)"
                raise ValueError(
                    f"{name} has rows {tuple(t.shape[1:])} {t.dtype}, the pool holds {layout.trailing} "
                    f"{layout.dtype}{hint}"
                )
            if t.device != self.device:
                raise ValueError(f"the pool lives on {self.device}, {name} is on {t.device}")

    def widen(self, i: int, length: int, pad: int | float) -> None:
        """Grow tensor ``i``'s dim 1 to ``length``; the rows held get ``pad`` in the new positions (on the
        device, no sync)."""
        layout = self.layouts[i]
        trailing = (length, *layout.trailing[1:])
        for buffers in (self.buffers, self.spare):
            old = buffers[i].permute(layout.inverse)
            new = torch.full((self.capacity, *trailing), pad, dtype=layout.dtype, device=self.device)
            new[:, : layout.trailing[0]].copy_(old)
            buffers[i] = new
        self.layouts[i] = Layout(trailing, layout.dtype, tuple(range(len(trailing) + 1)))

    def resize(self, capacity: int) -> None:
        """Buffers of ``capacity`` rows; the rows held are copied on the device (no sync)."""
        for buffers in (self.buffers, self.spare):
            old = list(buffers)
            buffers.clear()
            for i, layout in enumerate(self.layouts):
                shape = (capacity, *(layout.trailing[d - 1] for d in layout.perm[1:]))
                new = torch.empty(shape, dtype=layout.dtype, device=self.device)
                if old:
                    new[: self.capacity].copy_(old[i])
                buffers.append(new)
        self.capacity = capacity
        self._kept = torch.arange(self.batch_size, capacity, dtype=torch.int64, device=self.device)

    def append(self, indices: Tensor, count: Tensor, tensors: tuple[Tensor, ...]) -> None:
        """Gather ``t[indices[:count]]`` of every tensor behind the rows held, in one launch."""
        sources = [t.permute(layout.perm) for t, layout in zip(tensors, self.layouts, strict=True)]
        gather_rows(sources, indices, count, self.buffers, self.cursor)

    def take_batch(self, widths: tuple[int | None, ...] | None = None) -> tuple[Tensor, ...]:
        """A copy of the first ``batch_size`` rows (owned by the caller); the rest move to the front.

        The copy is what makes a batch safe to keep: the buffers are reused from take to take, so a view
        would change under a caller that holds several batches (gradient accumulation). ``clone`` keeps
        each buffer's dim order (channels_last stays channels_last). ``widths`` cut padded tensors' dim 1 to
        the widest push the rows came from (the copy then holds no column of padding only)."""
        batch = tuple(v.clone() for v in self.views(self.batch_size, widths))
        remaining = self.cursor[CURSOR_OFFSET] - self.batch_size  # device-side count of rows kept
        self._spare_cursor.narrow(0, CURSOR_OFFSET, 1).zero_()
        gather_rows(self.buffers, self._kept, remaining, self.spare, self._spare_cursor)
        self.buffers, self.spare = self.spare, self.buffers
        self.cursor, self._spare_cursor = self._spare_cursor, self.cursor
        return batch

    def views(self, rows: int, widths: tuple[int | None, ...] | None = None) -> tuple[Tensor, ...]:
        """The first ``rows`` rows of every buffer, in the pushed tensors' dim order (no copy); a tensor with a
        width in ``widths`` cut to it along dim 1 (padded tensors are stored in their logical dim order)."""
        views = [b[:rows].permute(lay.inverse) for b, lay in zip(self.buffers, self.layouts, strict=True)]
        for i, width in enumerate(widths or ()):
            if width is not None and width < views[i].shape[1]:
                views[i] = views[i][:, :width]
        return tuple(views)

    def clear(self) -> None:
        self.cursor.narrow(0, CURSOR_OFFSET, 1).zero_()

    def load(self, rows: list[Tensor]) -> None:
        """Put saved rows (a checkpoint's) at the front, replacing what is held."""
        held = rows[0].shape[0]
        if held > self.capacity:
            self.resize(held + self.batch_size)
        self.clear()
        every_row = torch.arange(held, device=self.device)
        self.append(every_row, torch.full((), held, dtype=torch.int64, device=self.device), tuple(rows))

    def held_rows(self) -> int:
        """Rows held now (reads the cursor: synchronizes)."""
        return int(self.cursor[CURSOR_OFFSET])

    def check(self) -> None:
        """Raise if any row was ever dropped (overflow) or any index was out of range (synchronizes)."""
        counters = (self.cursor + self._spare_cursor)[[CURSOR_OVERFLOW, CURSOR_INVALID]]  # cursors swap on take
        overflow, invalid = (int(v) for v in counters.tolist())
        if overflow or invalid:
            raise RuntimeError(f"SelectionPool: {overflow} row(s) overflowed, {invalid} index(es) out of range")
