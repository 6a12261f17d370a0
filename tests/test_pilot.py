"""sbkernels.pilot (#30): plain and selective copies trained in alternating segments, judged on held-out loss.

On the work clock (``clock="rows"``) a run is deterministic, so the verdicts are asserted: selection pays where
most rows are copies of a few easy ones (SB spends the backward passes on the rest), and does not pay for a
loss-blind policy on data where every row teaches (the negative control)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import sbkernels

ROOT = Path(__file__).resolve().parents[1]


def problem(duplicated: bool, seed: int = 0):
    """A 5-class teacher on 20 features; with ``duplicated``, 90% of the rows are copies of 8 easy ones."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(20, 5, generator=gen)

    def sample(n: int):
        x = torch.randn(n, 20, generator=gen)
        return x, (x @ teacher).argmax(1)

    x, y = sample(400 if duplicated else 4000)
    if duplicated:
        easy_x, easy_y = sample(8)
        x, y = torch.cat([x, easy_x.repeat(450, 1)]), torch.cat([y, easy_y.repeat(450)])
    test_x, test_y = sample(1000)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)

    def evaluate(m) -> float:
        return float(F.cross_entropy(m(test_x), test_y))

    evaluate.rows = (test_x, test_y)  # type: ignore[attr-defined]  (the held-out rows, for the integrations' tests)
    return model, loader, torch.optim.SGD(model.parameters(), lr=0.1), evaluate


def factory():
    """For the command line: ``python -m sbkernels.pilot tests.test_pilot:factory``."""
    return problem(duplicated=True)


def test_selection_pays_where_most_rows_are_copies_of_easy_ones():
    model, loader, optimizer, evaluate = problem(duplicated=True)
    report = sbkernels.pilot(model, loader, optimizer, evaluate, budget=15000, repeats=2, clock="rows",
                             policy=sbkernels.SB(beta=2.0), schedule=sbkernels.Schedule())  # fmt: skip
    assert all(r is not None and r < 0.9 for r in report.ratios), report
    assert report.verdict.startswith("paid")
    plain, selective = report.curves[0]
    assert selective.rows_trained < 0.6 * selective.rows_seen and plain.rows_trained == plain.rows_seen


def test_a_loss_blind_policy_on_rows_that_all_teach_does_not_pay():
    """Negative control: Uniform(0.5) pays the scoring pass and drops half the rows at random."""
    model, loader, optimizer, evaluate = problem(duplicated=False)
    report = sbkernels.pilot(model, loader, optimizer, evaluate, budget=15000, repeats=2, clock="rows",
                             policy=sbkernels.Uniform(rate=0.5), schedule=sbkernels.Schedule())  # fmt: skip
    assert report.verdict.startswith("did not pay"), report
    assert all(r is None or r >= 1 for r in report.ratios)


def test_the_model_is_left_as_it_was_and_the_report_plots(tmp_path):
    model, loader, optimizer, evaluate = problem(duplicated=True)
    before = [p.detach().clone() for p in model.parameters()]
    report = sbkernels.pilot(model, loader, optimizer, evaluate, budget=3000, segment=1000, clock="rows")
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    plain, selective = report.curves[0]
    assert len(plain.losses) == len(selective.losses) == 3  # one evaluation per segment
    assert "repeat 0" in str(report) and report.verdict in str(report)
    report.plot(str(tmp_path / "pilot.png"))
    assert (tmp_path / "pilot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("kwargs", "message"), [({"budget": 0}, "budget"), ({"budget": 10, "repeats": 0}, "repeats"),
                                                 ({"budget": 10, "clock": "cpu"}, "clock")])  # fmt: skip
def test_bad_arguments_are_refused_by_name(kwargs, message):
    model, loader, optimizer, evaluate = problem(duplicated=True)
    with pytest.raises(ValueError, match=message):
        sbkernels.pilot(model, loader, optimizer, evaluate, **kwargs)


def test_the_command_line_runs_the_users_factory():
    done = subprocess.run(
        [sys.executable, "-m", "sbkernels.pilot", "tests.test_pilot:factory", "--clock", "rows", "--budget", "3000",
         "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "repeat 0" in done.stdout and ("paid" in done.stdout or "did not pay" in done.stdout)


def test_accumulation_steps_the_optimizer_every_few_backward_batches_in_both_arms():
    model, loader, optimizer, evaluate = problem(duplicated=True)
    kwargs = {"budget": 6000, "segment": 3000, "clock": "rows", "policy": sbkernels.SB(beta=2.0),
              "schedule": sbkernels.Schedule()}  # fmt: skip
    once = sbkernels.pilot(model, loader, optimizer, evaluate, **kwargs)
    twice = sbkernels.pilot(model, loader, optimizer, evaluate, accumulate=2, **kwargs)
    for (plain_1, selective_1), (plain_2, selective_2) in zip(once.curves, twice.curves, strict=True):
        batches = -(-plain_1.rows_trained // 64)  # the plain arm's backward batches: its loader batches (some short)
        assert plain_1.optimizer_steps == batches
        assert plain_2.rows_trained == plain_1.rows_trained  # the same work, half the steps (one per epoch end extra)
        assert batches // 2 <= plain_2.optimizer_steps <= batches // 2 + 2
        assert 0 < selective_2.optimizer_steps < selective_1.optimizer_steps
    assert once.curves[0][0].losses != twice.curves[0][0].losses  # the steps differ, so the learning does
    with pytest.raises(ValueError, match="accumulate must be an int >= 1"):
        sbkernels.pilot(model, loader, optimizer, evaluate, accumulate=0, **kwargs)
