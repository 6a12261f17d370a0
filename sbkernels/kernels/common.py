"""Triton building blocks shared by every kernel, and the one launch path that all launchers use.

Device helpers (``@triton.jit``):

- :func:`online_softmax_step` folds one column chunk into the running max ``m`` and the rescaled sum
  ``s = sum_c exp(x_c - m)``::

      m_new = max(m, max_c x_c);   shift = m_new, or 0 while m_new = -inf
      scale = exp(m - shift);      e_c = exp(x_c - shift)

  The shift is what keeps ``-inf`` logits (masked vocabulary entries) exact: a chunk that is ``-inf``
  everywhere would otherwise compute ``exp(-inf - -inf) = NaN``. With the shift, such a chunk adds 0 and a
  row that is ``-inf`` everywhere ends with ``lse = -inf``, as ``torch.logsumexp`` does.
- :func:`logsumexp_rows`: ``(logsumexp_c x_c, sum_c x_c)`` per row from chunks of ``BLOCK_C`` columns.
- :func:`cross_entropy_from_parts`: the loss of SPEC section 2 from ``lse``, ``x_t`` and ``sum_c x_c``.
- :func:`target_classes`: per row ignored, bad (target outside ``[0, C)``) or usable (the row's class is read).
- :func:`row_uniform`: the row's Philox uniform ``tl.rand(seed, (step << 32) + row)`` (SPEC section 2).

Host side: :func:`launch` is the only way a kernel is started. It enters the device guard of the tensors'
device (a launch must run on their GPU, not the current one) and passes every argument by keyword.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from .. import _rows as rows
from .. import slots
from . import device_guard, interpreting

# The state's slots (csrc/slots.h) as Triton constants.
META_PUSHED = tl.constexpr(slots.META_PUSHED)
META_SEED = tl.constexpr(slots.META_SEED)
META_STEP = tl.constexpr(slots.META_STEP)
META_NONFINITE = tl.constexpr(slots.META_NONFINITE)
META_BAD_TARGETS = tl.constexpr(slots.META_BAD_TARGETS)
META_TICKET = tl.constexpr(slots.META_TICKET)
MAX_COUNTER = tl.constexpr(slots.MAX_COUNTER)
# Row flags of losses gathered across ranks (sbkernels._rows.row_flags).
ROW_IGNORED = tl.constexpr(rows.ROW_IGNORED)
ROW_BAD_TARGET = tl.constexpr(rows.ROW_BAD_TARGET)

TILE = 4096  # elements per program-wide tile: BLOCK_M * BLOCK_C (and BLOCK_M * BLOCK_H in select_sb)
_MAX_BLOCK_C = 4096
_MAX_BLOCK_M = 256


@triton.jit
def online_softmax_step(m, x):
    """One chunk ``x`` (BLOCK_M, BLOCK_C) of the online softmax: ``(m_new, scale, e)`` with
    ``s_new = s * scale + sum(e, axis=1)``; -inf safe (see the module docstring)."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    scale = tl.exp(m - shift)
    e = tl.exp(x - shift[:, None])
    return m_new, scale, e


@triton.jit
def logsumexp_rows(row_ptr, in_range, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """(logsumexp_c x_c, sum_c x_c) per row in float32 (an unused sum compiles away)."""
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    x_sum = tl.zeros([BLOCK_M], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = in_range[:, None] & (cols < C)[None, :]
        x = tl.load(row_ptr[:, None] + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        m, scale, e = online_softmax_step(m, x)
        s = s * scale + tl.sum(e, axis=1)
        x_sum += tl.sum(tl.where(mask, x, 0.0), axis=1)
    return m + tl.log(s), x_sum


@triton.jit
def cross_entropy_from_parts(lse, x_target, x_sum, C, label_smoothing):
    """``(1 - eps) * (lse - x_t) + eps * (lse - mean_c x_c)``; at eps = 0 the smoothing term is not formed
    at all, so a ``-inf`` non-target logit (whose mean is -inf) leaves the loss finite (SPEC section 2)."""
    loss = lse - x_target
    smooth = lse - x_sum / C  # mean_c (lse - x_c) >= 0: -inf only if the sum overflowed, as F's terms do
    smooth = tl.where(smooth == float("-inf"), float("inf"), smooth)
    smoothed = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    return tl.where(label_smoothing != 0.0, smoothed, loss)


@triton.jit
def target_classes(t, in_range, C, ignore_index):
    """``(ignored, bad, usable)`` per row: target == ignore_index; outside [0, C) otherwise; neither."""
    ignored = t == ignore_index
    bad = in_range & ~ignored & ((t < 0) | (t >= C))
    usable = in_range & ~ignored & ~bad
    return ignored, bad, usable


@triton.jit
def row_uniform(seed, step, rows64):
    """The row's Philox uniform: ``tl.rand(seed, (step << 32) + row)``, with int64 step and rows."""
    return tl.rand(seed, (step << 32) + rows64)


def row_blocks(n: int, num_classes: int, from_logits: bool) -> dict[str, int]:
    """BLOCK_M, BLOCK_C and warps of the row kernels (select_sb, row_stats, residual); C = 1 for losses."""
    if from_logits:
        block_c = min(triton.next_power_of_2(num_classes), _MAX_BLOCK_C)
        block_m = max(1, min(_MAX_BLOCK_M, TILE // block_c))
    else:
        block_c = 1
        block_m = _MAX_BLOCK_M
    block_m = min(block_m, triton.next_power_of_2(n))
    return {"BLOCK_M": block_m, "BLOCK_C": block_c, "num_warps": 8 if block_m * block_c >= 2048 else 4}


def launch(kernel, grid: tuple[int, ...], device: torch.device, probe: torch.Tensor, **arguments) -> None:
    """Start ``kernel`` on ``grid`` on ``device``'s GPU (or the interpreter), all arguments by keyword.

    ``torch.library.wrap_triton`` lets torch.compile trace the launch. Interpreted kernels cannot run on
    fake tensors (the ops' fake implementations run the launcher with them): there the launch is skipped,
    since only the outputs' metadata matters. ``probe`` is any tensor argument, to tell which case it is.
    """
    if interpreting():
        if is_fake(probe):
            return
        runner = kernel
    else:
        runner = torch.library.wrap_triton(kernel)
    with device_guard(device):
        runner[grid](**arguments)
