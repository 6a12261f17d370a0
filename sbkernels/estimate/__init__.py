"""Will selection pay for your model? Measure before you train (SPEC section 10).

    report = sbkernels.estimate(model, (inputs, targets))          # a classifier's batch
    report = sbkernels.estimate(model, batch)                      # a Hugging Face LM's dict batch (labels)
    print(report)

    python -m sbkernels.estimate torchvision.models:resnet18 --input 3x224x224 --classes 1000 --batch 64

On the user's model and batch it measures, with warm-up and medians:

- ``F``: the scoring pass (eval mode, no_grad);
- ``S``: a plain training step (forward with grad, backward, an optimizer step) on a copy of the model;
- ``s``: each policy's selection and gathering (``SelectiveBackprop.observe`` on the scoring output);
- ``r``: each policy's keep rate on these losses, after its history has filled.

A loader batch then costs about ``F + s + r * S`` against ``S`` for the plain step (Stale-SB: ``F`` only
every ``every`` epochs). Selection is cheaper per batch when ``r`` is below the break-even rate
``1 - (F + s) / S``. The caveat stays: fewer backward examples per epoch may need more epochs to reach the
same loss, which no per-batch measurement can tell; the demo and the LM example measure that on data.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..policies import SB, Keep, Policy, Uniform
from ..trainer import SelectiveBackprop

Batch = tuple[Tensor, Tensor] | Mapping[str, Tensor]
#: Rows a keep rate is measured over (untimed calls after the timed ones): the rate of 8 rows drawn 5
#: times would be off by 0.1 or more.
KEEP_RATE_ROWS = 1024


@dataclass(frozen=True)
class PolicyEstimate:
    name: str
    selection_ms: float  # s: selection + gathering per loader batch
    keep_rate: float  # r: measured fraction of rows sent to the backward pass
    relative_cost: float  # (F + s + r * S) / S: a loader batch's cost against a plain step
    stale_relative_cost: float | None  # with Stale-SB (scoring every ``stale_every`` epochs)

    @property
    def saving(self) -> float:
        """Fraction of a plain epoch's time saved (negative: selection costs more), same number of epochs."""
        return 1.0 - self.relative_cost


@dataclass(frozen=True)
class Estimate:
    scoring_ms: float  # F
    step_ms: float  # S
    rows: int
    policies: list[PolicyEstimate] = field(default_factory=list)
    stale_every: int = 3

    @property
    def break_even_keep_rate(self) -> float:
        """Selection is cheaper per loader batch only when the keep rate is below this (ignoring s)."""
        return 1.0 - self.scoring_ms / self.step_ms

    def __str__(self) -> str:
        lines = [
            f"scoring pass F = {self.scoring_ms:.2f} ms, plain training step S = {self.step_ms:.2f} ms "
            f"({self.rows} rows); break-even keep rate 1 - F/S = {self.break_even_keep_rate:.2f}",
            "",
            f"{'policy':22s} {'s (ms)':>8s} {'keep r':>7s} {'batch cost / S':>15s} {'saving/epoch':>13s} "
            f"{'Stale-SB cost / S':>18s}",
        ]
        for p in self.policies:
            stale = f"{p.stale_relative_cost:.2f}" if p.stale_relative_cost is not None else "-"
            lines.append(
                f"{p.name:22s} {p.selection_ms:8.2f} {p.keep_rate:7.2f} {p.relative_cost:15.2f} "
                f"{100 * p.saving:12.0f}% {stale:>18s}"
            )
        lines += [
            "",
            "Cost per loader batch = (F + s + r * S) / S (Stale-SB: F every "
            f"{self.stale_every} epochs). A saving per epoch pays only if fewer backward examples do not need "
            "more epochs to reach the same loss: measure that on your data before relying on it.",
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
    policies: Mapping[str, Policy] | None = None,
    loss_fn: Callable[[Any, Batch], Tensor] | None = None,
    optimizer: Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer] | None = None,
    warmup: int = 2,
    reps: int = 5,
    stale_every: int = 3,
    timer: Callable[[], float] = time.perf_counter,
) -> Estimate:
    """Measure F, S and each policy's s and r on ``model`` and ``batch`` (see the module doc).

    Args:
        model: the model (its parameters are not changed: the training step runs on a copy).
        batch: ``(inputs, targets)`` for a classifier, or a dict with ``labels`` for a language model
            (``model(**batch)`` returns ``.loss`` and ``.logits``; sequences are selected whole).
        policies: name -> policy (fresh objects; default SB beta 1/2/3, Keep(0.5), Uniform(rate=0.5)).
        loss_fn: ``loss_fn(outputs, batch)`` of the training step (default: mean cross-entropy, or the LM's
            ``.loss``).
        optimizer: a factory of the training step's optimizer (default SGD, lr 0).
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    is_lm = isinstance(batch, Mapping)
    rows = _rows(batch)
    scoring_ms, scored = _median_ms(lambda: _score(model, batch), warmup, reps, timer)
    step_ms = _step_ms(model, batch, loss_fn, optimizer, warmup, reps, timer)
    estimates = []
    for name, policy in (policies or default_policies()).items():
        selection_ms, keep_rate = _selection(policy, scored, batch, is_lm, warmup, reps, timer)
        fixed = scoring_ms + selection_ms
        stale = (scoring_ms / stale_every + selection_ms + keep_rate * step_ms) / step_ms
        estimates.append(PolicyEstimate(name, selection_ms, keep_rate, (fixed + keep_rate * step_ms) / step_ms, stale))
    return Estimate(scoring_ms, step_ms, rows, estimates, stale_every)


# ----------------------------------------------------------------------------------------- pieces
def _rows(batch: Batch) -> int:
    if isinstance(batch, Mapping):
        return int(batch["labels"].shape[0])
    return int(batch[1].shape[0])


def _forward(model: nn.Module, batch: Batch) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(batch[0])


def _score(model: nn.Module, batch: Batch) -> Tensor:
    """The scoring pass: eval mode, no_grad; the logits (or the LM's)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = _forward(model, {k: v for k, v in batch.items() if k != "labels"} if isinstance(batch, Mapping)
                           else batch)  # fmt: skip
            return out.logits if hasattr(out, "logits") else out
    finally:
        model.train(training)


def _default_loss(outputs: Any, batch: Batch) -> Tensor:
    if hasattr(outputs, "loss") and outputs.loss is not None:
        return outputs.loss
    assert not isinstance(batch, Mapping)
    return F.cross_entropy(outputs, batch[1])


def _step_ms(model, batch, loss_fn, optimizer, warmup: int, reps: int, timer) -> float:
    twin = copy.deepcopy(model).train()
    opt = (optimizer or (lambda params: torch.optim.SGD(params, lr=0.0)))(list(twin.parameters()))
    loss_of = loss_fn or _default_loss

    def step() -> None:
        loss = loss_of(_forward(twin, batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _median_ms(step, warmup, reps, timer)[0]


def _selection(policy: Policy, scored: Tensor, batch: Batch, is_lm: bool, warmup: int, reps: int, timer):
    """(median ms of observe + taking the ready batches, keep rate) after the policy's history has filled."""
    rows = scored.shape[0]
    history = getattr(policy, "history_size", 1024)
    sb = SelectiveBackprop(rows, policy)
    targets = batch["labels"] if isinstance(batch, Mapping) else batch[1]
    data = (dict(batch),) if isinstance(batch, Mapping) else tuple(batch)
    # Fill the history with this batch's losses first (several calls for a long history): a full history of
    # losses like these is what a long run ranks against, so the keep rate is the one it sees.
    for _ in range(max(warmup, -(-history // rows))):
        sb.observe(scored, targets, *data)
        list(sb.ready_batches())
    selections = []

    def call() -> None:
        selections.append(sb.observe(scored, targets, *data))
        list(sb.ready_batches())

    ms = _median_ms(call, 0, reps, timer)[0]
    while len(selections) * rows < KEEP_RATE_ROWS:  # enough rows for the keep rate, untimed
        call()
    kept = sum(int(selection.count) for selection in selections)  # after timing: reading counts synchronizes
    return ms, kept / (rows * len(selections))


def _median_ms(fn: Callable[[], Any], warmup: int, reps: int, timer) -> tuple[float, Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(reps):
        start = timer()
        out = fn()
        _sync()
        times.append(timer() - start)
    return 1e3 * statistics.median(times), out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
