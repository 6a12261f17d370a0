"""Will selection pay for your model? Measure before you train (SPEC section 10).

    report = sbkernels.estimate(model, (inputs, targets), optimizer=optimizer)       # a classifier's batch
    report = sbkernels.estimate(model, batch, loader=train_loader, backward_batch_size=32)
    print(report)

    python -m sbkernels.estimate torchvision.models:resnet18 --input 3x224x224 --classes 1000 --batch 64

On the user's model, optimizer and data it measures, on copies (the user's model and optimizer are not
touched):

- ``S``: a plain training step (forward with grad, backward, the optimizer's step) on a loader batch of
  ``B`` rows, the mean over a plain run of ``steps`` loader batches: the cost of a loader batch without
  selection;
- for each policy, a short selective run of ``steps`` loader batches (from ``loader``, or the one ``batch``
  repeated) with the user's optimizer, as a training loop makes it: its losses fall, and the policy's
  history lags behind them, which is why the keep rate of a run is not the rate on one fixed batch.
  It times ``F``, the scoring pass (a Hugging Face LM on the route ``SelectiveBackpropTrainer`` takes: its
  last hidden states and output embeddings), ``s``, the selection and gathering, and ``S_b``, a training
  step on a backward batch of ``b`` rows, and counts ``r``, the fraction of rows kept, by quarter of the
  run (the rate moves as training goes).

Times are means, not medians: a loop pays its occasional slow calls too.
A loader batch then costs about ``F + s + r (B / b) S_b`` against ``S``: ``r B / b`` backward steps of
``b`` rows each. ``S_b`` is not ``(b / B) S``: a step has costs that do not shrink with its rows, so on a
small model a backward batch of 32 costs more than half a step of 64. (Stale-SB: ``F`` only every
``stale_every`` epochs.) A cheaper loader batch pays only if fewer backward examples do not need more
epochs to reach the same loss, which no cost can tell: ``sbkernels.pilot`` measures that on your data.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._loop import Batch, LoopSteps, OptimizerFactory, Trainee, rows_of, to_device
from ..policies import SB, Keep, Policy, Uniform
from ._run import Run, loader_batches, mean_ms, plain_run, selective_run

#: Loader batches a keep rate's range is taken over (each window's rate; the range is their min and max).
WINDOWS = 4


@dataclass(frozen=True)
class PolicyEstimate:
    name: str
    selection_ms: float  # s: selection + gathering per loader batch
    keep_rate: float  # r: the fraction of rows the run sent to the backward pass
    keep_windows: tuple[float, ...]  # the keep rate of each successive quarter of the run: its trend
    cost_ms: float  # F + s + r (B / b) S_b: a loader batch with selection
    relative_cost: float  # cost_ms / S
    stale_relative_cost: float | None  # with Stale-SB (scoring every ``stale_every`` epochs)
    train_loss: tuple[float, float]  # the run's mean training loss over its first and last thirds

    @property
    def keep_range(self) -> tuple[float, float]:
        """The lowest and highest keep rate over the run's windows."""
        return min(self.keep_windows), max(self.keep_windows)

    @property
    def saving(self) -> float:
        """Fraction of a plain epoch's time saved (negative: selection costs more), same number of epochs."""
        return 1.0 - self.relative_cost


@dataclass(frozen=True)
class Estimate:
    scoring_ms: float  # F
    step_ms: float  # S: a plain step on the loader batch
    backward_step_ms: float  # S_b: a step on a backward batch
    rows: int  # B
    backward_batch_size: int  # b
    policies: list[PolicyEstimate] = field(default_factory=list)
    stale_every: int = 3
    optimizer: str = ""
    scoring_route: str = "logits"
    run: str = ""  # what the keep rates were measured on

    @property
    def break_even_keep_rate(self) -> float:
        """Selection is cheaper per loader batch only when the keep rate is below this (ignoring s)."""
        per_row = self.backward_step_ms * self.rows / self.backward_batch_size
        return max(0.0, (self.step_ms - self.scoring_ms) / per_row)

    def __str__(self) -> str:
        route = {"hidden": "from the last hidden states and output embeddings, as SelectiveBackpropTrainer",
                 "logits": "from the logits"}[self.scoring_route]  # fmt: skip
        lines = [
            f"loader batch B = {self.rows} rows, backward batch b = {self.backward_batch_size} rows; "
            f"optimizer {self.optimizer}",
            f"scoring pass F = {self.scoring_ms:.2f} ms ({route}); plain step S = {self.step_ms:.2f} ms; "
            f"backward step S_b = {self.backward_step_ms:.2f} ms",
            f"break-even keep rate (S - F) b / (B S_b) = {self.break_even_keep_rate:.2f}; keep rates from {self.run}",
            "",
            f"{'policy':20s} {'s (ms)':>7s} {'keep r':>7s} {'r by quarter':>20s} {'train loss':>13s} "
            f"{'batch cost / S':>15s} {'saving/epoch':>13s} {'Stale-SB / S':>13s}",
        ]
        for p in self.policies:
            stale = f"{p.stale_relative_cost:.2f}" if p.stale_relative_cost is not None else "-"
            spread = " ".join(f"{r:.2f}" for r in p.keep_windows)
            loss = f"{p.train_loss[0]:.3g}->{p.train_loss[1]:.3g}"
            lines.append(
                f"{p.name:20s} {p.selection_ms:7.2f} {p.keep_rate:7.2f} {spread:>20s} {loss:>13s} "
                f"{p.relative_cost:15.2f} {100 * p.saving:12.0f}% {stale:>13s}"
            )
        lines += [
            "",
            f"Cost per loader batch = (F + s + r (B / b) S_b) / S (Stale-SB: F every {self.stale_every} epochs). "
            "A saving per epoch pays only if fewer backward examples do not need more epochs to reach the same "
            "loss: sbkernels.pilot measures that on your data. The keep rate is the run's, from this state: it moves "
            "as training goes (r by quarter shows where it was heading).",
        ]
        return "\n".join(lines)


def default_policies() -> dict[str, Policy]:
    return {
        "SB(beta=1)": SB(beta=1.0),
        "SB(beta=2)": SB(beta=2.0),
        "SB(beta=3)": SB(beta=3.0),
        "Keep(0.5)": Keep(0.5),
        "Uniform(rate=0.5)": Uniform(rate=0.5),
    }


def estimate(
    model: nn.Module,
    batch: Batch,
    *,
    loader: Iterable[Batch] | None = None,
    backward_batch_size: int | None = None,
    optimizer: torch.optim.Optimizer | OptimizerFactory | None = None,
    policies: Mapping[str, Policy] | None = None,
    loss_fn: Callable[[Any, Batch], Tensor] | None = None,
    steps: int = 48,
    scoring: str = "auto",
    warmup: int = 2,
    stale_every: int = 3,
    timer: Callable[[], float] = time.perf_counter,
) -> Estimate:
    """Measure S, and each policy's F, s, S_b and keep rate over a short selective run (see the module doc).

    Args:
        model: the model (not changed: every run trains a copy).
        batch: a loader batch: ``(inputs, targets)`` for a classifier, or a dict with ``labels`` for a
            language model (``model(**batch)`` returns ``.loss``; sequences are selected whole).
        loader: the training batches the runs take (cycled; default: ``batch`` repeated, whose losses fall
            faster than new data's, so pass your loader for the keep rate your training sees).
        backward_batch_size: ``b``, rows per backward batch (default: the loader batch's rows).
        optimizer: your optimizer of ``model`` (copied with its state and hyperparameters) or a factory
            ``params -> optimizer``; default AdamW(lr=1e-3), said in the report.
        policies: name -> policy (fresh objects; default SB beta 1/2/3, Keep(0.5), Uniform(rate=0.5)).
        loss_fn: ``loss_fn(outputs, batch)`` of the training step (default: the LM's ``.loss``, or
            cross-entropy, weighted per row for weighted policies).
        steps: recorded loader batches of each run, plain and per policy (after ``warmup`` more).
        scoring: ``"auto"`` (an HF LM from its hidden states, as the trainer), ``"hidden"`` or ``"logits"``.
        timer: the clock (``time.process_time`` for CPU time on a busy machine).
    """
    if warmup < 0 or steps < WINDOWS:
        raise ValueError(f"need warmup >= 0 and steps >= {WINDOWS}, got warmup={warmup}, steps={steps}")
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    rows = rows_of(batch)
    b = rows if backward_batch_size is None else backward_batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"backward_batch_size must be a positive int (rows per backward batch), got {b!r}")
    trainee = Trainee(model, optimizer)
    loop = LoopSteps.for_model(model, batch, scoring, loss_fn)
    plain = plain_run(trainee, loader_batches(batch, loader, warmup + steps, device), loop, timer, warmup)
    runs = {}
    for name, policy in (policies or default_policies()).items():
        batches = loader_batches(batch, loader, warmup + steps, device)
        runs[name] = selective_run(trainee, policy, batches, b, loop, timer, warmup)
    scoring_ms = mean_ms([t for run in runs.values() for t in run.scoring])
    backward = [t for run in runs.values() for t in run.backward_steps]
    if b == rows:  # the same step: one mean over both samples
        plain = backward = plain + backward
    elif not backward:  # no policy kept a full backward batch in its run: time one
        backward = plain_run(trainee, [_rows_head(batch, b)] * (warmup + steps), loop, timer, warmup)
    step_ms, backward_ms = mean_ms(plain), mean_ms(backward)
    estimates = [_policy_estimate(name, run, scoring_ms, step_ms, backward_ms, rows, b, stale_every)
                 for name, run in runs.items()]  # fmt: skip
    what = "the one batch repeated (pass loader= for your data's)" if loader is None else "your loader"
    return Estimate(scoring_ms, step_ms, backward_ms, rows, b, estimates, stale_every, trainee.describe(),
                    loop.route, f"{len(estimates)} run(s) of {steps} loader batches on {what}")  # fmt: skip


def _policy_estimate(name: str, run: Run, scoring_ms: float, step_ms: float, backward_ms: float, rows: int,
                     b: int, stale_every: int) -> PolicyEstimate:  # fmt: skip
    keep = sum(run.kept) / max(1, sum(run.rows))
    windows = _windows(run.kept, run.rows)
    losses = _thirds(run.train_losses)
    selection_ms = mean_ms(run.selection)
    training = keep * rows / b * backward_ms
    cost = scoring_ms + selection_ms + training
    stale = (scoring_ms / stale_every + selection_ms + training) / step_ms
    return PolicyEstimate(name, selection_ms, keep, tuple(windows), cost, cost / step_ms, stale, losses)


def _windows(kept: list[int], rows: list[int]) -> list[float]:
    size = -(-len(kept) // WINDOWS)
    return [sum(kept[i : i + size]) / max(1, sum(rows[i : i + size])) for i in range(0, len(kept), size)]


def _thirds(losses: list[float]) -> tuple[float, float]:
    if not losses:
        return (float("nan"), float("nan"))
    third = max(1, len(losses) // 3)
    return statistics.fmean(losses[:third]), statistics.fmean(losses[-third:])


def _rows_head(batch: Batch, rows: int) -> Batch:
    """The first ``rows`` rows of a batch, repeated when it has fewer."""

    def take(t):
        return t.repeat(-(-rows // t.shape[0]), *([1] * (t.dim() - 1)))[:rows]

    if isinstance(batch, Mapping):
        return {k: take(v) for k, v in batch.items()}
    return tuple(take(t) for t in batch)


__all__ = ["Estimate", "PolicyEstimate", "default_policies", "estimate"]
