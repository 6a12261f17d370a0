"""sbkernels.estimate (SPEC section 10): its arithmetic, the keep rate of a run whose losses fall, the
user's optimizer, the backward batch size, the LM scoring route, that it leaves the model alone, and the
command line. Its accuracy against real loops is a benchmark (benchmarks/estimate_check.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sbkernels
from sbkernels.estimate.__main__ import main


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 7))


def classifier_batch(rows: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 3, 4, generator=gen), torch.randint(0, 7, (rows,), generator=gen)


def sgd(lr: float, momentum: float = 0.0):
    def factory(params):
        return torch.optim.SGD(params, lr=lr, momentum=momentum)

    return factory


def test_estimate_is_consistent_and_leaves_the_model_alone():
    model = tiny_mlp()
    before = [p.clone() for p in model.parameters()]
    report = sbkernels.estimate(model, classifier_batch(), steps=8, optimizer=sgd(0.0))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert report.scoring_ms > 0 and report.step_ms > 0 and report.backward_step_ms > 0
    assert report.rows == 64 and report.backward_batch_size == 64
    rates = {p.name: p.keep_rate for p in report.policies}
    assert rates["Keep(0.5)"] == 0.5  # exactly int(keep * N) rows
    # lr 0: the losses stay, so the history ranks like a full one: E[pct^b] = 1 / (b + 1)
    assert abs(rates["SB(beta=1)"] - 1 / 2) < 0.1 and abs(rates["SB(beta=2)"] - 1 / 3) < 0.1
    assert rates["SB(beta=3)"] < rates["SB(beta=2)"] < rates["SB(beta=1)"]
    for p in report.policies:
        cost = report.scoring_ms + p.selection_ms + p.keep_rate * report.backward_step_ms  # b == B
        assert p.cost_ms == pytest.approx(cost) and p.relative_cost == pytest.approx(cost / report.step_ms)
        assert p.saving == pytest.approx(1 - cost / report.step_ms)
        stale = (report.scoring_ms / 3 + p.selection_ms + p.keep_rate * report.backward_step_ms) / report.step_ms
        assert p.stale_relative_cost == pytest.approx(stale)
        assert p.keep_range[0] <= p.keep_rate <= p.keep_range[1] and len(p.keep_windows) == 4
    assert report.break_even_keep_rate == pytest.approx((report.step_ms - report.scoring_ms) / report.backward_step_ms)
    text = str(report)
    assert "break-even" in text and "sbkernels.pilot" in text and "SB(beta=2)" in text and "SGD" not in text


def test_the_backward_batch_size_enters_the_cost():
    report = sbkernels.estimate(tiny_mlp(), classifier_batch(), backward_batch_size=16, steps=8,
                                policies={"SB": sbkernels.SB()})  # fmt: skip
    assert report.backward_batch_size == 16
    p = report.policies[0]
    steps_per_batch = p.keep_rate * 64 / 16  # r B / b backward steps of S_b each
    want = report.scoring_ms + p.selection_ms + steps_per_batch * report.backward_step_ms
    assert p.cost_ms == pytest.approx(want)
    assert report.break_even_keep_rate == pytest.approx(
        max(0.0, (report.step_ms - report.scoring_ms) * 16 / (64 * report.backward_step_ms))
    )
    wider = sbkernels.estimate(tiny_mlp(), classifier_batch(), backward_batch_size=96, steps=8,
                               policies={"SB": sbkernels.SB()})  # fmt: skip
    assert wider.backward_batch_size == 96 and wider.backward_step_ms > 0  # batches ready every few loader batches


def test_the_keep_rate_is_a_training_runs():
    """Losses that fall while the history lags keep fewer rows than the same batch scored with no training:
    the estimate's run trains, so it sees the lower rate (a fixed-batch rate would miss it)."""
    batch, policies = classifier_batch(), {"SB": sbkernels.SB(beta=1.0)}
    still = sbkernels.estimate(tiny_mlp(), batch, optimizer=sgd(0.0), policies=policies, steps=24)
    learning = sbkernels.estimate(tiny_mlp(), batch, optimizer=sgd(0.5, 0.9), policies={"SB": sbkernels.SB()},
                                  steps=24)  # fmt: skip
    (s,), (t,) = still.policies, learning.policies
    assert t.train_loss[1] < t.train_loss[0] - 0.2  # the run's losses fell
    assert s.train_loss[1] > s.train_loss[0] - 0.1  # lr 0: they did not (the kept rows vary)
    assert t.keep_rate < s.keep_rate - 0.1


def test_the_users_optimizer_is_copied_with_its_state_and_named():
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = classifier_batch()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()  # momentum buffers now exist
    state = {k: v["momentum_buffer"].clone() for k, v in enumerate(optimizer.state.values())}
    weights = [p.clone() for p in model.parameters()]
    report = sbkernels.estimate(model, (x, y), optimizer=optimizer, steps=4, policies={"SB": sbkernels.SB()})
    assert "SGD(lr=0.05, momentum=0.9) (yours" in report.optimizer and report.optimizer in str(report)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert all(torch.equal(state[k], v["momentum_buffer"]) for k, v in enumerate(optimizer.state.values()))
    assert "AdamW(lr=0.001) (the default" in sbkernels.estimate(model, (x, y), steps=4,
                                                                policies={"SB": sbkernels.SB()}).optimizer  # fmt: skip
    with pytest.raises(ValueError, match="optimizer holds parameters that are not the model's"):
        sbkernels.estimate(model, (x, y), optimizer=torch.optim.SGD(tiny_mlp().parameters(), lr=0.1))
    with pytest.raises(TypeError, match="optimizer must be"):
        sbkernels.estimate(model, (x, y), optimizer="adam")


def test_runs_take_the_loader_and_refuse_an_empty_one():
    taken = []

    class Loader:
        def __iter__(self):
            for seed in range(3):
                taken.append(seed)
                yield classifier_batch(seed=seed)

    report = sbkernels.estimate(tiny_mlp(), classifier_batch(), loader=Loader(), steps=5, warmup=1,
                                policies={"SB": sbkernels.SB()})  # fmt: skip
    assert len(taken) == 12 and "your loader" in report.run  # 6 loader batches per run (plain, SB): it cycled
    with pytest.raises(ValueError, match="loader yielded no batches"):
        sbkernels.estimate(tiny_mlp(), classifier_batch(), loader=[], steps=4)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def test_language_models_are_scored_on_the_trainers_route():
    model = _gpt2()
    ids = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(1))
    batch, policies = {"input_ids": ids, "labels": ids}, {"SB": sbkernels.SB()}
    report = sbkernels.estimate(model, batch, policies=policies, steps=4)
    assert report.rows == 8 and 0 < report.policies[0].keep_rate <= 1
    assert report.scoring_route == "hidden" and "hidden states" in str(report)
    logits = sbkernels.estimate(model, batch, policies={"SB": sbkernels.SB()}, steps=4, scoring="logits")
    assert logits.scoring_route == "logits"
    with pytest.raises(ValueError, match="scoring='hidden' needs"):
        sbkernels.estimate(tiny_mlp(), classifier_batch(), scoring="hidden")


def test_the_command_line(capsys):
    report = main(["tests.test_estimate:tiny_mlp", "--input", "3x4", "--classes", "7", "--batch", "32",
                   "--backward-batch", "16", "--optimizer", "sgd", "--lr", "0.1", "--steps", "4"])  # fmt: skip
    assert report.rows == 32 and report.backward_batch_size == 16
    out = capsys.readouterr().out
    assert "break-even keep rate" in out and "SGD(lr=0.1)" in out


@pytest.mark.parametrize(
    "kwargs, match",
    [({"warmup": -1}, "warmup >= 0"), ({"steps": 2}, "steps >= 4"), ({"backward_batch_size": 0}, "backward_batch_size"),
     ({"backward_batch_size": 2.5}, "backward_batch_size"), ({"scoring": "fast"}, "scoring must be")],
)  # fmt: skip
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sbkernels.estimate(tiny_mlp(), classifier_batch(), **kwargs)


def test_a_bad_model_name_on_the_command_line():
    with pytest.raises(SystemExit, match="MODULE:CALLABLE"):
        main(["tiny_mlp"])


def test_the_accuracy_benchmark_runs_and_writes_its_table(tmp_path):
    """benchmarks/estimate_check.py end to end on its smallest model (its numbers are the benchmark's)."""
    pytest.importorskip("sklearn")
    from benchmarks import estimate_check

    threads = torch.get_num_threads()
    try:
        rows = estimate_check.main(
            ["--models", "mlp", "--batches", "8", "--rounds", "1", "--out", str(tmp_path / "check")]
        )
    finally:
        torch.set_num_threads(threads)  # the benchmark measures on one thread
    assert [(r["b"], r["policy"]) for r in rows] == [(64, "SB(beta=1)"), (64, "Uniform(0.5)"), (32, "SB(beta=1)"),
                                                     (32, "Uniform(0.5)")]  # fmt: skip
    assert all(r["predicted_ms"] > 0 and r["measured_ms"] > 0 and len(r["measured_keep_windows"]) == 4 for r in rows)
    table = (tmp_path / "check.md").read_text()
    assert table.count("| mlp |") == 4 and "Largest |error|" in table
