"""Selection across the ranks of a ``torch.distributed`` process group (SPEC section 8).

The global batch is the ranks' rows concatenated in rank order (the same N on every rank). Policy "sb"
(and "uniform" with a rate) selects on it exactly as one process would on the concatenated batch:

1. each rank computes its rows' losses and flags (ignored / bad target) in one pass (op ``row_losses``);
2. one ``all_gather_into_tensor`` on the device collects every rank's ``[losses, flags, N]``;
3. every rank runs the policy's op on the W * N gathered losses, with the same state: every loss is ranked
   against the same history snapshot, global row g draws Philox offset ``(step << 32) + g``, and the valid
   losses enter the history in global row order, so every rank's state stays identical;
4. each rank keeps the selection of its own rows, as local indices.

Nothing waits for the host: the collective is enqueued on the device (NCCL with CUDA tensors, gloo on
CPU). Batch sizes must agree: each rank's N travels with its losses and a mismatch is counted on the
device (``state.check()`` raises); ``validate=True`` checks the sizes on the host before the collective
(a synchronization), so a mismatch raises on every rank instead of failing inside the collective. The
fixed-count policies ("keep", "uniform" with k, "importance", "gradmatch") stay per rank, with no
communication; their Philox draws use the rank's global row numbers (``row_offset``).
"""

from __future__ import annotations

import time
import weakref
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .. import ops
from .._rows import compact
from ..selection import Selection
from ..slots import META_SIZE_MISMATCH
from ..state import SelectorState

# torch 2.13 renamed all_gather_into_tensor (deprecated there) to all_gather_single; 2.11 has only the first.
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


class GatheredLosses(NamedTuple):
    """Every rank's losses of one global selection (steps 1-2 of the module doc)."""

    losses: Tensor  # (W * N,) float32, rank-major
    flags: Tensor  # (W * N,) int8 row flags (sbkernels._rows.row_flags)
    local_loss: Tensor  # (N,) this rank's losses
    rank: int
    n: int


def rank_and_size(group) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def row_offset(state: SelectorState, n: int) -> int:
    """Global row number of this rank's first row (0 without a group): the Philox offset of local policies."""
    return 0 if state.process_group is None else dist.get_rank(state.process_group) * n


def check_same_batch_size(n: int, group, device: torch.device) -> None:
    """Raise on every rank if the ranks' N differ (a collective and a host read: synchronizes)."""
    _, world = rank_and_size(group)
    sizes = torch.empty(world, dtype=torch.int64, device=device)
    _all_gather(sizes, torch.full((1,), n, dtype=torch.int64, device=device), group=group)
    found = sizes.tolist()
    if len(set(found)) != 1:
        raise ValueError(f"every rank must pass the same batch size N to a global selection; got {found} by rank")


def gather_losses(
    source: Tensor,
    targets: Tensor | None,
    state: SelectorState,
    *,
    ignore_index: int,
    label_smoothing: float,
    backend: str,
    validate: bool = False,
    flags: Tensor | None = None,
) -> GatheredLosses:
    """Steps 1-2: this rank's losses and flags, then every rank's, gathered on the device (no host wait).

    A rank whose N differs is counted in the state (``META_SIZE_MISMATCH``); ``validate`` checks the sizes
    on the host first. The policy then runs its op on the gathered losses and :func:`local_rows` keeps this
    rank's part of the selection. ``flags`` go with given losses (e.g. sequences with no valid token).
    """
    group, device, n = state.process_group, source.device, source.shape[0]
    rank, world = rank_and_size(group)
    if validate:
        check_same_batch_size(n, group, device)
    logits, losses = (source, None) if targets is not None else (None, source)
    loss, row_flags = ops.row_losses(
        logits=logits, targets=targets, losses=losses, ignore_index=ignore_index, label_smoothing=label_smoothing,
        backend=backend,
    )  # fmt: skip
    flags = row_flags if flags is None else flags
    payload = torch.cat([loss, flags.to(torch.float32), torch.full((1,), float(n), device=device)])
    gathered = torch.empty(world * (2 * n + 1), dtype=torch.float32, device=device)
    _all_gather(gathered, payload, group=group)
    gathered = gathered.view(world, 2 * n + 1)
    state.meta[META_SIZE_MISMATCH].add_((gathered[:, -1] != n).any().long())
    return GatheredLosses(gathered[:, :n].reshape(-1), gathered[:, n : 2 * n].reshape(-1).to(torch.int8), loss, rank, n)


def local_rows(gathered: GatheredLosses, selection: Selection) -> Selection:
    """Steps 3-4: this rank's rows of a selection made on the gathered losses, as local indices."""
    rank, n = gathered.rank, gathered.n
    total = gathered.losses.numel()
    device = gathered.losses.device
    chosen = torch.zeros(total + 1, dtype=torch.bool, device=device)
    chosen.scatter_(0, torch.where(selection.indices >= 0, selection.indices, total), True)
    local_indices, local_count = compact(chosen[rank * n : (rank + 1) * n])
    return Selection(
        local_indices, local_count, gathered.local_loss, selection.prob[rank * n : (rank + 1) * n].clone(), None
    )


def release_collective_tensors(group: dist.ProcessGroup | None = None) -> None:
    """Call on every rank of a gloo group right before ``dist.destroy_process_group()``: it cannot deadlock then.

    torch's gloo backend frees a finished collective's tensors on its worker thread, which takes the GIL for
    that; destroying the group joins that thread while holding the GIL. If the group goes while the worker is
    still freeing the last collectives' tensors, each waits for the other forever (examples/ddp_train.py hung
    so in about 1 of 15 runs on CPU; gdb showed ``~ProcessGroupGloo`` in ``thread.join`` and the
    ``pt_gloo_runloop`` thread in ``take_gil`` under ``~AsyncBarrierWork``). This runs one more collective and
    waits, GIL released, until the worker has let go of its tensor. The worker runs collectives in order, so
    every earlier one's tensors are freed by then.
    """
    probe = torch.zeros(1)
    dist.all_reduce(probe, group=group)
    released = weakref.ref(probe)  # a tensor's Python object lives while C++ (the worker's work) holds it
    del probe
    while released() is not None:
        time.sleep(0.001)
