"""Selection frequencies follow p, and a resumed run makes the same selections as an uninterrupted one."""

from __future__ import annotations

import io
import math

import pytest
import torch

import sbkernels
from tests.helpers import backend_devices

PAIRS = backend_devices()
IDS = [f"{b}-{d}" for b, d in PAIRS]


@pytest.mark.parametrize(("backend", "device"), PAIRS, ids=IDS)
@pytest.mark.parametrize("beta", [1.0, 2.0, 0.6])
def test_selection_frequency_matches_probability(backend, device, beta):
    state = sbkernels.SelectorState(100, seed=11, device=device)
    sbkernels.select_losses(torch.arange(100, dtype=torch.float32, device=device), state, backend=backend)
    # pct of a loss in (k - 1, k) against history 0..99 is k / 100.
    groups = torch.tensor([3.5, 20.5, 50.5, 80.5, 97.5])
    per_group = 4000
    losses = groups.repeat_interleave(per_group).to(device)
    sel = sbkernels.select_losses(losses, state, beta=beta, backend=backend)
    chosen = torch.zeros(losses.numel(), dtype=torch.bool)
    chosen[sel.indices[: int(sel.count)].cpu()] = True
    for g, loss in enumerate(groups.tolist()):
        p = (math.ceil(loss) / 100) ** beta
        freq = chosen[g * per_group : (g + 1) * per_group].double().mean().item()
        sigma = math.sqrt(p * (1 - p) / per_group)
        assert abs(freq - p) <= 5 * sigma + 1e-9, f"loss {loss}: frequency {freq:.4f}, p {p:.4f}"


@pytest.mark.parametrize(("backend", "device"), PAIRS, ids=IDS)
def test_state_dict_resume_reproduces_uninterrupted_run(backend, device):
    gen = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(n, 10, generator=gen), torch.randint(0, 10, (n,), generator=gen)) for n in (64, 17, 200, 5, 64, 99)
    ]

    def run(state, items):
        out = []
        for logits, targets in items:
            sel = sbkernels.select(logits.to(device), targets.to(device), state, beta=2.0, floor=0.05, backend=backend)
            out.append(sel.indices[: int(sel.count)].tolist())
        return out

    whole_state = sbkernels.SelectorState(50, seed=123, device=device)
    whole = run(whole_state, batches)

    first_state = sbkernels.SelectorState(50, seed=123, device=device)
    first = run(first_state, batches[:3])
    buffer = io.BytesIO()
    torch.save(first_state.state_dict(), buffer)
    buffer.seek(0)
    resumed_state = sbkernels.SelectorState(50, seed=999, device=device)  # seed comes from the checkpoint
    resumed_state.load_state_dict(torch.load(buffer))
    second = run(resumed_state, batches[3:])

    assert first + second == whole
    assert torch.equal(resumed_state.history, whole_state.history)
    assert torch.equal(resumed_state.meta, whole_state.meta)


def test_load_state_dict_rejects_mismatched_history_size():
    saved = sbkernels.SelectorState(8).state_dict()
    with pytest.raises(ValueError, match="history_size"):
        sbkernels.SelectorState(16).load_state_dict(saved)
