"""sbkernels.estimate (SPEC section 10): its arithmetic, keep rates, that it leaves the model alone, the LM
path and the command line. Its accuracy against real loops is a benchmark (benchmarks/estimate_check.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sbkernels
from sbkernels.estimate.__main__ import main


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 7))


def classifier_batch(rows: int = 64):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(rows, 3, 4, generator=gen), torch.randint(0, 7, (rows,), generator=gen)


def test_estimate_is_consistent_and_leaves_the_model_alone():
    model = tiny_mlp()
    before = [p.clone() for p in model.parameters()]
    report = sbkernels.estimate(model, classifier_batch(), reps=3)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert report.scoring_ms > 0 and report.step_ms > 0 and report.rows == 64
    rates = {p.name: p.keep_rate for p in report.policies}
    assert rates["Keep(0.5)"] == 0.5  # exactly int(keep * N) rows
    assert abs(rates["SB(beta=1)"] - 1 / 2) < 0.15 and abs(rates["SB(beta=2)"] - 1 / 3) < 0.15  # E[pct^b]
    assert rates["SB(beta=3)"] < rates["SB(beta=2)"] < rates["SB(beta=1)"]
    for p in report.policies:
        want = (report.scoring_ms + p.selection_ms + p.keep_rate * report.step_ms) / report.step_ms
        assert p.relative_cost == pytest.approx(want)
        assert p.saving == pytest.approx(1 - want)
        stale = (report.scoring_ms / 3 + p.selection_ms + p.keep_rate * report.step_ms) / report.step_ms
        assert p.stale_relative_cost == pytest.approx(stale)
    assert report.break_even_keep_rate == pytest.approx(1 - report.scoring_ms / report.step_ms)
    text = str(report)
    assert "break-even" in text and "more epochs" in text and "SB(beta=2)" in text


def test_language_model_batches_are_scored_as_whole_sequences():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(1))
    report = sbkernels.estimate(model, {"input_ids": ids, "labels": ids}, policies={"SB": sbkernels.SB()}, reps=2)
    assert report.rows == 8 and 0 < report.policies[0].keep_rate < 1


def test_the_command_line(capsys):
    report = main(["tests.test_estimate:tiny_mlp", "--input", "3x4", "--classes", "7", "--batch", "32", "--reps", "2"])
    assert report.rows == 32
    assert "break-even keep rate" in capsys.readouterr().out


def test_bad_arguments():
    with pytest.raises(ValueError, match="reps >= 1"):
        sbkernels.estimate(tiny_mlp(), classifier_batch(), reps=0)
    with pytest.raises(SystemExit, match="MODULE:CALLABLE"):
        main(["tiny_mlp"])
