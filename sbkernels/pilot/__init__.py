"""Will selection pay on your data? A pilot that answers with learning, not only cost (SPEC section 13).

    report = sbkernels.pilot(model, train_loader, optimizer, evaluate, budget=120.0)
    print(report)                      # the verdict, with the spread over repeats
    report.plot("pilot.png")           # held-out loss against training time, both arms

    python -m sbkernels.pilot MODULE:FACTORY --budget 120      # FACTORY() returns the same four things

``sbkernels.estimate`` says what a loader batch costs; it cannot say whether fewer backward rows still teach
the model as much. The pilot trains two copies of the model from the same start on the user's data:

- **plain**: every row of every loader batch backpropagated;
- **selective**: :class:`~sbkernels.SelectiveBackprop` with the policy and schedule given; by default
  Composer's (``Keep(0.5)`` between 50% and 90% of the arm's run, every second batch whole).

The arms alternate in segments of ``segment`` (clock units), each keeping its own model, optimizer state and
place in the data, so that drift on a shared machine hits both alike. After each segment the arm's
held-out loss is measured (``evaluate(model)``, untimed). With ``repeats`` > 1 each repeat starts again from
the model's state with another seed (the loader's shuffle, the policy's draws).

The verdict, per repeat: the time the selective arm took to first reach the plain arm's final held-out loss,
as a fraction of the plain arm's time; below 1 it paid. The clock is the wall time by default; ``clock="rows"``
counts work instead (a training row 1, a scoring row ``SCORING_COST``): reproducible, for tests and for
comparing on a busy machine, but a model of the cost, not a measurement of it.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._loop import LoopSteps, Trainee, rows_of, to_device
from ..policies import Keep, Policy
from ..schedule import ComposerSchedule, Schedule
from ..trainer import PadValues, SelectiveBackprop

#: Work of scoring one row against training it (forward with grad + backward: about three forwards).
SCORING_COST = 1 / 3
ARMS = ("plain", "selective")


@dataclass
class Curve:
    """One arm of one repeat: held-out loss after each segment, against the arm's training time so far."""

    arm: str
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    rows_trained: int = 0
    optimizer_steps: int = 0
    rows_seen: int = 0


@dataclass(frozen=True)
class PilotReport:
    curves: list[tuple[Curve, Curve]]  # (plain, selective) per repeat
    clock: str
    policy: str
    scoring: str = "logits"  # the scoring route: "logits", "hidden" (an LM's hidden states) or "module"

    @property
    def ratios(self) -> list[float | None]:
        """Per repeat: the selective arm's time to the plain arm's final loss over the plain arm's time (None:
        not reached within the budget)."""
        return [_time_to_reach(plain, selective) for plain, selective in self.curves]

    @property
    def verdict(self) -> str:
        ratios, unit = self.ratios, "seconds" if self.clock == "wall" else "work units"
        reached = [r for r in ratios if r is not None]
        spread = f"over {len(ratios)} repeat(s)"
        if len(reached) < len(ratios):
            return (f"did not pay in this budget: the selective arm did not reach the plain arm's held-out loss in "
                    f"{len(ratios) - len(reached)} of {len(ratios)} repeat(s)")  # fmt: skip
        median = statistics.median(reached)
        low, high = min(reached), max(reached)
        if median >= 1.0:
            return (f"did not pay: the selective arm reached the plain arm's held-out loss in {median:.2f} of its "
                    f"{unit} (range {low:.2f}-{high:.2f} {spread})")  # fmt: skip
        return (f"paid: the selective arm reached the plain arm's held-out loss in {median:.2f} of its {unit} "
                f"(range {low:.2f}-{high:.2f} {spread})")  # fmt: skip

    def __str__(self) -> str:
        lines = [f"sbkernels pilot ({self.policy}; clock: {self.clock}; scoring: {self.scoring})"]
        for i, (plain, selective) in enumerate(self.curves):
            ratio = self.ratios[i]
            lines.append(
                f"  repeat {i}: plain {plain.losses[-1]:.4f} after {plain.times[-1]:.3g}, selective "
                f"{selective.losses[-1]:.4f} after {selective.times[-1]:.3g} (trained {selective.rows_trained} of "
                f"{selective.rows_seen} rows); time to the plain loss: "
                f"{'not reached' if ratio is None else f'{ratio:.2f}'}"
            )
        return "\n".join([*lines, self.verdict])

    def plot(self, path: str) -> None:
        """Held-out loss against training time, both arms, every repeat (matplotlib, written to ``path``)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for repeat, pair in enumerate(self.curves):
            for curve, color in zip(pair, ("tab:gray", "tab:blue"), strict=True):
                axes.plot(curve.times, curve.losses, color=color, alpha=0.8, marker=".",
                          label=curve.arm if repeat == 0 else None)  # fmt: skip
        axes.set_xlabel("training time (s)" if self.clock == "wall" else "work (training rows)")
        axes.set_ylabel("held-out loss")
        axes.set_title(self.verdict, fontsize=8, wrap=True)
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)


def pilot(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    evaluate: Callable[[nn.Module], float],
    *,
    budget: float,
    segment: float | None = None,
    policy: Policy | None = None,
    schedule: Schedule | None = None,
    batch_size: int | None = None,
    repeats: int = 1,
    clock: str = "wall",
    seed: int = 0,
    loop: LoopSteps | None = None,
    fields: tuple[str, ...] | None = None,
    pad_values: PadValues = None,
    accumulate: int = 1,
) -> PilotReport:
    """Train plain and selective copies of ``model`` in alternating segments for ``budget`` (clock units per
    arm) and compare their held-out losses (module doc).

    Args:
        model: the model as it stands (a checkpoint loaded); it is copied, never trained itself.
        loader: the training batches: ``(inputs, targets)`` of a classifier, or a Hugging Face dict with labels.
        optimizer: the user's optimizer of ``model``; each arm gets a copy of it (hyperparameters, parameter
            groups and state) on its copy of the model.
        evaluate: ``evaluate(model) -> float``, the held-out loss (called untimed after every segment).
        budget: each arm's training time (seconds; with ``clock="rows"``, work units).
        segment: the length of one segment (default: a tenth of the budget).
        policy, schedule: the selective arm's (default Composer's: ``Keep(0.5)``, on from 50% to 90% of the run).
        batch_size: the backward batch (default: the loader's batch size, from its first batch).
        repeats: runs from the model's state with seeds ``seed``, ``seed + 1``, ...
        fields, pad_values: the selective arm's :class:`~sbkernels.SelectiveBackprop` options (batches of
            varying length need pad values, e.g. ``{"input_ids": tokenizer.pad_token_id}``).
        accumulate: backward batches per optimizer step, in both arms (the plain arm's backward batch is a
            loader batch); an epoch's last step takes what has accumulated. An integration passes its own.
        loop: how a batch is scored and a backward batch's loss taken (an integration passes its own;
            default: a Hugging Face LM from its hidden states, as ``SelectiveBackpropTrainer``, else logits).
    """
    if clock not in ("wall", "rows"):
        raise ValueError(f"clock must be 'wall' or 'rows', got {clock!r}")
    if not isinstance(budget, (int, float)) or budget <= 0:
        raise ValueError(f"budget must be a number > 0 (each arm's training time), got {budget!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"accumulate must be an int >= 1 (backward batches per optimizer step), got {accumulate!r}")
    segment = budget / 10 if segment is None else segment
    loop = loop if loop is not None else LoopSteps.for_model(model, next(iter(loader)))
    start = copy.deepcopy(model.state_dict())
    curves = []
    for repeat in range(repeats):
        model.load_state_dict(start)
        plain, selective = (_Arm(name, Trainee(model, optimizer), loop, loader, clock, seed + repeat, accumulate)
                            for name in ARMS)  # fmt: skip

        def selection(rows: int, plain: _Arm = plain, repeat: int = repeat) -> SelectiveBackprop:
            """The selective arm's, made at its first batch: Composer's schedule needs the run's length in
            batches, estimated from the plain arm's rate (it trains first in every round)."""
            expected = max(1, round(budget * plain.batches / max(plain.elapsed, 1e-12)))
            return SelectiveBackprop(
                batch_size or rows, copy.deepcopy(policy) if policy is not None else Keep(0.5, seed=seed + repeat),
                schedule=copy.deepcopy(schedule) if schedule is not None else ComposerSchedule(
                    0.5, 0.9, 2, max_duration=expected), fields=fields, pad_values=pad_values,
            )  # fmt: skip

        while min(plain.elapsed, selective.elapsed) < budget:
            for arm in (plain, selective):
                if arm.elapsed < budget:
                    arm.train_for(min(segment, budget - arm.elapsed), selection)
                    arm.record(evaluate)
        curves.append((plain.curve, selective.curve))
    model.load_state_dict(start)
    return PilotReport(curves, clock, repr(policy or Keep(0.5)), loop.route)


class _Arm:
    """One arm's copy of the model, its optimizer, its place in the data and its clock."""

    def __init__(self, name: str, trainee: Trainee, loop: LoopSteps, loader: Iterable[Any], clock: str,
                 seed: int, accumulate: int) -> None:  # fmt: skip
        self.name, self.loop, self.loader, self.clock, self.seed = name, loop, loader, clock, seed
        self.model, self.optimizer = trainee.copy()
        self.optimizer.zero_grad(set_to_none=True)  # a copied model carries the user's gradients
        self.accumulate, self.pending = accumulate, 0  # backward batches per optimizer step, and since the last
        self.device = next(self.model.parameters()).device
        self.curve = Curve(name)
        self.elapsed = 0.0
        self.sb: SelectiveBackprop | None = None
        self.epoch = self.batches = 0  # passes over the loader, loader batches trained or scored
        self.iterator: Iterator[Any] | None = None

    def record(self, evaluate: Callable[[nn.Module], float]) -> None:
        self.model.eval()
        with torch.no_grad():
            loss = float(evaluate(self.model))
        self.model.train()
        self.curve.times.append(self.elapsed)
        self.curve.losses.append(loss)

    def train_for(self, length: float, selection: Callable[[int], SelectiveBackprop]) -> None:
        """Train until ``length`` more clock units have passed (the last batch started finishes)."""
        stop = self.elapsed + length
        while self.elapsed < stop:
            batch = self._next_batch()
            begin = time.perf_counter()
            if self.name == "plain":
                work = self._train_plain(batch)
            else:
                self.sb = self.sb if self.sb is not None else selection(rows_of(batch))
                work = self._train_selective(batch, self.sb)
            self.batches += 1
            self.elapsed += time.perf_counter() - begin if self.clock == "wall" else work

    def _next_batch(self) -> Any:
        while True:
            if self.iterator is None:
                torch.manual_seed(self.seed * 1000 + self.epoch)  # a shuffling loader: both arms' order alike
                self.iterator = iter(self.loader)
            batch = next(self.iterator, None)
            if batch is not None:
                return to_device(batch if isinstance(batch, Mapping) else tuple(batch), self.device)
            self.iterator, self.epoch = None, self.epoch + 1
            if self.sb is not None:
                for ready in self.sb.flush():
                    self._step(ready.data, ready.weight)
                self.sb.start_epoch(self.epoch)
            if self.pending:  # the epoch's last step takes what has accumulated, as the frameworks do
                self._apply()

    def _train_plain(self, batch: Any) -> float:
        rows = rows_of(batch)
        self._step(batch, None)
        self.curve.rows_seen += rows
        return float(rows)

    def _train_selective(self, batch: Any, sb: SelectiveBackprop) -> float:
        rows = rows_of(batch)
        self.loop.observe(sb, self.model, batch)
        trained = 0
        for ready in sb.ready_batches():
            trained += self._step(ready.data, ready.weight)
        self.curve.rows_seen += rows
        return SCORING_COST * rows + trained

    def _step(self, batch: Any, weight: Tensor | None) -> int:
        """One backward batch: its loss's gradient accumulated, the optimizer stepped every ``accumulate``."""
        (self.loop.loss(self.model, batch, weight) / self.accumulate).backward()
        self.pending += 1
        if self.pending == self.accumulate:
            self._apply()
        rows = rows_of(batch)
        self.curve.rows_trained += rows
        return rows

    def _apply(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        self.curve.optimizer_steps += 1


def _time_to_reach(plain: Curve, selective: Curve) -> float | None:
    """The selective arm's first time at or below the plain arm's final loss, over the plain arm's time."""
    target, total = plain.losses[-1], plain.times[-1]
    for when, loss in zip(selective.times, selective.losses, strict=True):
        if loss <= target:
            return when / total
    return None
