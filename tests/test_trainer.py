"""SelectiveBackprop: schedules, Stale-SB, batch structures and checkpoint round-trips."""

from __future__ import annotations

import io

import pytest
import torch

import sbkernels
from sbkernels import SB, Importance, Keep, Schedule, SelectiveBackprop, StaleSB, Uniform


def test_schedule_switches_exactly_at_the_configured_steps():
    # uniform rate 0 selects nothing when active: every row that comes out came from a full-batch step.
    total, n = 20, 6
    sb = SelectiveBackprop(n, Uniform(rate=0.0), schedule=Schedule(0.25, 0.75, interrupt=4, total_steps=total))
    expected_full = [s for s in range(total) if not (5 <= s < 15) or s % 4 == 0]
    assert [s for s in range(total) if not sb.selecting(s)] == expected_full
    out = []
    for step in range(total):
        ids = torch.arange(step * n, (step + 1) * n)
        sel = sb.observe(torch.rand(n), None, ids)
        assert int(sel.count) == (n if step in expected_full else 0), step
        out += [i for b in sb.ready_batches() for i in b.data[0].tolist()]
    out += [i for b in sb.flush() for i in b.data[0].tolist()]
    assert out == [i for s in expected_full for i in range(s * n, (s + 1) * n)]


def test_prime_passes_through():
    sb = SelectiveBackprop(4, SB(beta=3.0, prime=30))
    counts = []
    for _ in range(5):
        counts.append(int(sb.observe(torch.full((10,), 0.001), None, torch.arange(10)).count))
        list(sb.ready_batches())
    assert counts[:3] == [10, 10, 10] and counts[3:] == [0, 0]  # pushed reaches 30 after three calls


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.linear(x)


def test_stale_sb_skips_the_scoring_forward_in_stale_epochs():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(40, 4, generator=gen)
    labels = torch.randint(0, 3, (40,), generator=gen)
    model = CountingModel()
    sb = SelectiveBackprop(8, SB(beta=1.0), stale=StaleSB(3, num_samples=40))

    def train(batches):
        for batch in batches:
            x, y = batch.data
            loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
            sb.refresh(batch.sample_ids, loss)

    scoring_rows = {}
    for epoch in range(6):
        sb.start_epoch(epoch)
        before = model.rows
        for start in range(0, 40, 10):
            ids = torch.arange(start, start + 10)
            if sb.needs_forward:
                with torch.no_grad():
                    sb.observe(model(data[ids]), labels[ids], data[ids], labels[ids], sample_ids=ids)
            else:
                sb.observe(None, None, data[ids], labels[ids], sample_ids=ids)
            scoring_rows[epoch] = scoring_rows.get(epoch, 0) + model.rows - before
            train(sb.ready_batches())
            before = model.rows
        train(sb.flush())
    assert [epoch for epoch, rows in scoring_rows.items() if rows == 40] == [0, 3]
    assert not torch.isnan(sb.stale.cache).any()
    assert sb.counts["scored"] == 80 and sb.counts["observed"] == 240


def test_stale_epoch_selects_from_cached_losses():
    sb = SelectiveBackprop(2, SB(beta=1.0), stale=StaleSB(2, num_samples=6))
    sb.observe(torch.arange(6.0), None, torch.arange(6), sample_ids=torch.arange(6))  # fills cache and history
    sb.start_epoch(1)
    assert not sb.needs_forward
    sb.refresh(torch.tensor([0, 1]), torch.tensor([100.0, 100.0]))  # fresh losses: now the largest
    sel = sb.observe(None, None, torch.arange(6), sample_ids=torch.arange(6))
    assert sel.loss.tolist() == [100.0, 100.0, 2.0, 3.0, 4.0, 5.0]
    assert sel.prob[:2].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="cached losses"):
        SelectiveBackprop(2).observe(None, None, torch.arange(3))
    with pytest.raises(ValueError, match="sample_ids"):
        sb.observe(None, None, torch.arange(6))


def test_state_dict_round_trip_resumes_identically():
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 5, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(8)]

    def run(sb, items):
        out = []
        for logits, y in items:
            sb.observe(logits, y, logits, y)
            out += [b.data[1].tolist() for b in sb.ready_batches()]
        return out

    def make():
        return SelectiveBackprop(6, SB(beta=2.0, seed=3, history_size=32))

    whole = make()
    want = run(whole, batches)
    first = make()
    got = run(first, batches[:4])
    resumed = make()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # a checkpoint file, read back with torch.load's defaults
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    got += run(resumed, batches[4:])
    assert got == want
    assert [b.data[1].tolist() for b in resumed.flush()] == [b.data[1].tolist() for b in whole.flush()]
    assert resumed.counts == whole.counts


def test_dict_batches_channels_last_and_low_precision_logits():
    gen = torch.Generator().manual_seed(2)
    sb = SelectiveBackprop(5, SB(beta=1.0), fields=("image", "label"))
    seen = []
    for _ in range(6):
        image = torch.randn(8, 3, 4, 4, generator=gen).to(memory_format=torch.channels_last)
        label = torch.randint(0, 4, (8,), generator=gen)
        logits = torch.randn(8, 4, generator=gen).to(torch.bfloat16)
        sel = sb.observe(logits, label, {"image": image, "label": label, "meta": "ignored"})
        seen += label[sel.indices[: int(sel.count)]].tolist()
        for batch in sb.ready_batches():
            assert set(batch.data) == {"image", "label"}
            assert batch.data["image"].is_contiguous(memory_format=torch.channels_last)
    rest = [b.data["label"].tolist() for b in sb.flush()]
    assert sb.counts["backward"] == len(seen) and (not rest or rest[-1] == seen[-len(rest[-1]) :])


def test_importance_policy_carries_weights_to_the_backward_batch():
    gen = torch.Generator().manual_seed(3)
    sb = SelectiveBackprop(4, Importance(k=4))
    logits, y = torch.randn(10, 3, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    sel = sb.observe(logits, y, y, sample_ids=torch.arange(10))
    (batch,) = list(sb.ready_batches(sync=True))
    rows = sel.indices[:4]
    assert torch.equal(batch.sample_ids, rows) and torch.equal(batch.weight, sel.weight[rows])


def test_constructor_errors():
    with pytest.raises(TypeError, match="policy"):
        SelectiveBackprop(4, "greedy")
    with pytest.raises(ValueError, match="total_steps"):
        Schedule(start=0.5)
    with pytest.raises(ValueError, match="num_samples"):
        StaleSB(3, num_samples=0)
    with pytest.raises(ValueError, match="rate or k"):
        Uniform()
    with pytest.raises(ValueError, match="k must be"):
        Importance(k=0)
    with pytest.raises(ValueError, match="keep must be"):
        Keep(1.5)
    sb = SelectiveBackprop(4)
    assert sb.state is None and repr(sb.policy) == "SB(beta=1.0, floor=0.0, prime=0)"
    sb.observe(torch.rand(3), None, torch.arange(3))
    assert isinstance(sb.state, sbkernels.SelectorState)


def test_k_policies_cap_k_at_a_short_batch():
    sb = SelectiveBackprop(4, Uniform(k=6))
    sel = sb.observe(torch.rand(3), None, torch.arange(3))
    assert int(sel.count) == 3


def test_the_batch_spec_recorded_at_the_first_observe_is_enforced():
    sb = SelectiveBackprop(4)
    sb.observe(torch.rand(3), None, torch.arange(3), torch.zeros(3), sample_ids=torch.arange(3))
    with pytest.raises(ValueError, match="2 batch tensors"):
        sb.observe(torch.rand(3), None, torch.arange(3), sample_ids=torch.arange(3))
    with pytest.raises(ValueError, match="sample_ids"):
        sb.observe(torch.rand(3), None, torch.arange(3), torch.zeros(3))
    with pytest.raises(ValueError, match="2 tensors every time"):
        sb.observe(torch.rand(3), None, {"x": torch.arange(3)}, sample_ids=torch.arange(3))


def test_stale_sb_refreshes_the_cache_on_full_batch_steps_from_logits():
    """On an interrupt step the scoring pass's logits still give fresh losses: the cache stores them (the
    bug: only the policy's losses were stored, so full-batch steps left the cache stale)."""
    gen = torch.Generator().manual_seed(4)
    sb = SelectiveBackprop(4, SB(beta=1.0), schedule=Schedule(interrupt=2), stale=StaleSB(2, num_samples=12))
    logits, y = torch.randn(12, 5, generator=gen), torch.randint(0, 5, (12,), generator=gen)
    want = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    for step, rows in enumerate((slice(0, 6), slice(6, 12))):
        ids = torch.arange(12)[rows]
        assert sb.selecting() == (step == 1)  # step 0 is an interrupt step: the whole batch
        sel = sb.observe(logits[rows], y[rows], logits[rows], y[rows], sample_ids=ids)
        torch.testing.assert_close(sel.loss, want[rows])
    torch.testing.assert_close(sb.stale.cache, want)
