"""The pieces :func:`sbkernels.estimate` times: a plain training step, and a short selective run on a copy.

The run is what a selective training loop does, on a copy of the model and optimizer: per loader batch the
scoring pass, ``observe`` and a training step on every ready backward batch. It records the time of each
piece (the device synchronized around each, so that a piece's time is its own) and every batch's kept rows
and the training losses. The keep rate of a run whose losses fall is lower than the rate on one fixed batch:
the history ranks new losses against older, higher ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any

from .._loop import Batch, LoopSteps, Trainee, rows_of, sync, to_device
from ..policies import Policy
from ..trainer import SelectiveBackprop


def mean_ms(seconds: Sequence[float]) -> float:
    """The mean, not the median: a loop pays its occasional slow calls too (the garbage collector, the
    allocator), and a median of pieces left them out, 20% of a small model's step (benchmarks/estimate_check)."""
    return 1e3 * statistics.fmean(seconds) if seconds else 0.0


@dataclass
class Run:
    """What one policy's short selective run measured (seconds; per loader batch unless said)."""

    scoring: list[float] = field(default_factory=list)  # F
    selection: list[float] = field(default_factory=list)  # s: observe + taking the ready batches
    backward_steps: list[float] = field(default_factory=list)  # S_b, per backward batch
    kept: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)  # per backward batch, in order


def loader_batches(batch: Batch, loader: Iterable[Any] | None, count: int, device) -> Iterator[Any]:
    source = cycle([batch]) if loader is None else _cycle_loader(loader)
    return (to_device(b, device) for b in islice(source, count))


def _cycle_loader(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for b in loader:
            empty = False
            yield b if isinstance(b, Mapping) else tuple(b)
        if empty:
            raise ValueError("loader yielded no batches: pass a loader with at least one batch")


def selective_run(
    trainee: Trainee, policy: Policy, batches: Iterable[Any], backward_batch_size: int, steps: LoopSteps,
    timer: Callable[[], float], warmup: int,
) -> Run:  # fmt: skip
    """Train a copy selectively over ``batches``; the first ``warmup`` loader batches are not recorded (the
    first batch keeps every row: its history is empty)."""
    model, optimizer = trainee.copy()
    device = next(model.parameters()).device
    sb = SelectiveBackprop(backward_batch_size, policy)
    run, counts = Run(), []
    for i, batch in enumerate(batches):
        start = timer()
        scored = steps.score(model, batch)
        sync(device)
        mid = timer()
        selection = steps.push(sb, batch, scored)
        ready = list(sb.ready_batches())
        sync(device)
        selected = timer()
        times = []
        for backward in ready:
            begin = timer()
            run.train_losses.append(float(steps.train(model, optimizer, backward.data, backward.weight)))
            times.append(timer() - begin)  # float() above synchronized
        if i >= warmup:
            run.scoring.append(mid - start)
            run.selection.append(selected - mid)
            run.backward_steps += times
            counts.append(selection.count)
            run.rows.append(rows_of(batch))
    run.kept = [int(c) for c in counts]  # after the run: reading a count synchronizes
    return run


def plain_run(
    trainee: Trainee, batches: Iterable[Any], steps: LoopSteps, timer: Callable[[], float], warmup: int
) -> list[float]:
    """Plain training of a copy over ``batches`` (every row, every batch): the seconds of each step after the
    first ``warmup``. What selection is compared with, measured as the selective runs are."""
    model, optimizer = trainee.copy()
    times = []
    for i, batch in enumerate(batches):
        start = timer()
        float(steps.train(model, optimizer, batch))  # float(): the step has finished
        if i >= warmup:
            times.append(timer() - start)
    return times
