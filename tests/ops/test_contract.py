"""SPEC section 5, one contract for every policy, on every backend. A new policy is one line in POLICIES.

Cases: ignored rows, out-of-range targets, ``-inf`` logits (masked entries, a masked target), NaN logits,
non-finite losses, N = 1, every row ignored; each run as three consecutive calls on one state. For every
call: the ``Selection`` layout; ignored, bad-target and non-finite rows never selected; ``loss`` as in
SPEC section 2; ``prob`` in [0, 1] and 0 where a row may not be selected; ``weight`` None or (N,) float32;
the state's ``step`` advanced by exactly one, bad targets and non-finite losses counted, history pushed
only by the policies that push. The backends agree with each other.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sbkernels
from sbkernels import SB, GradMatch, Importance, Keep, Uniform
from tests.helpers import kernel_devices

POLICIES = {  # name: (factory, pushes its losses into the history, accepts losses instead of logits)
    "sb": (lambda backend: SB(beta=2.0, floor=0.05, backend=backend), True, True),
    "uniform-rate": (lambda backend: Uniform(rate=0.5, backend=backend), True, True),
    "uniform-k": (lambda backend: Uniform(k=4, backend=backend), False, True),
    "keep": (lambda backend: Keep(0.5, backend=backend), False, True),
    "importance": (lambda backend: Importance(k=4, backend=backend), False, False),
    "gradmatch": (lambda backend: GradMatch(k=4, steps=5, backend=backend), False, False),
}
BACKENDS = [("reference", "cpu"), ("native", "cpu"), *[("triton", d) for d in kernel_devices()]]
INF, NAN = float("inf"), float("nan")
C = 7


def mixed_case(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """11 rows: valid ones, ignored ones, targets C and -5, masked logits, a masked target, a NaN logit."""
    x = torch.randn(11, C, generator=gen) * 2
    t = torch.randint(0, C, (11,), generator=gen)
    t[1] = t[6] = -100  # ignored
    t[2], t[7] = C, -5  # out of range
    x[3, (int(t[3]) + 1) % C] = -INF  # a masked non-target entry: finite loss
    x[4, int(t[4])] = -INF  # the target masked: +inf loss, non-finite
    x[5, 0] = NAN  # a NaN logit: NaN loss, non-finite
    return x, t


CASES = {
    "mixed": mixed_case,
    "one row": lambda gen: (torch.randn(1, C, generator=gen), torch.randint(0, C, (1,), generator=gen)),
    "every row ignored": lambda gen: (torch.randn(6, C, generator=gen), torch.full((6,), -100)),
}
LOSS_CASES = {
    "non-finite losses": torch.tensor([0.5, NAN, 2.0, INF, -INF, 1.0, 3.0, 0.1]),
    "one loss": torch.tensor([0.7]),
}


def expected_rows(logits: torch.Tensor | None, targets: torch.Tensor | None, losses: torch.Tensor | None):
    """(loss, ignored, bad, nonfinite) by SPEC section 2, from F.cross_entropy on usable rows."""
    if logits is None:
        zeros = torch.zeros(losses.shape, dtype=torch.bool)
        return losses.float(), zeros, zeros, ~torch.isfinite(losses)
    ignored = targets == -100
    bad = ~ignored & ((targets < 0) | (targets >= C))
    usable = ~ignored & ~bad
    loss = torch.zeros(targets.shape)
    loss[usable] = F.cross_entropy(logits[usable].float(), targets[usable], reduction="none")
    loss[bad] = NAN
    return loss, ignored, bad, usable & ~torch.isfinite(loss)


def check_call(policy, sel, before: dict, state, rows) -> None:
    loss_want, ignored, bad, nonfinite = rows
    n = loss_want.numel()
    invalid = ignored | bad | nonfinite
    # Layout.
    assert sel.indices.shape == (n,) and sel.indices.dtype == torch.int64
    assert sel.count.shape == () and sel.count.dtype == torch.int32
    assert sel.loss.shape == (n,) and sel.loss.dtype == torch.float32
    assert sel.prob.shape == (n,) and sel.prob.dtype == torch.float32
    if policy.weighted:
        assert sel.weight is not None and sel.weight.shape == (n,) and sel.weight.dtype == torch.float32
    else:
        assert sel.weight is None
    indices, count = sel.indices.cpu(), int(sel.count)
    assert 0 <= count <= n and torch.all(indices[count:] == -1)
    chosen = indices[:count]
    assert torch.all((chosen >= 0) & (chosen < n))
    steps = chosen[1:] - chosen[:-1]
    assert torch.all(steps >= 0 if policy.name == "importance" else steps > 0), chosen  # ascending
    # Never selected.
    assert not invalid[chosen].any(), f"selected invalid rows {chosen[invalid[chosen]].tolist()}"
    # The loss of SPEC section 2.
    loss = sel.loss.cpu()
    assert torch.all(loss[ignored] == 0) and torch.all(torch.isnan(loss[bad]))
    assert torch.equal(torch.isnan(loss), torch.isnan(loss_want))
    assert torch.equal(torch.isposinf(loss), torch.isposinf(loss_want))
    assert torch.equal(torch.isneginf(loss), torch.isneginf(loss_want))
    finite = torch.isfinite(loss_want)
    torch.testing.assert_close(loss[finite], loss_want[finite], rtol=1e-5, atol=1e-5)
    # prob and weight.
    prob = sel.prob.cpu()
    assert torch.all((prob >= 0) & (prob <= 1)) and torch.all(prob[invalid] == 0)
    if sel.weight is not None:
        weight = sel.weight.cpu()
        assert torch.all(torch.isfinite(weight) & (weight >= 0)) and torch.all(weight[invalid] == 0)
    # The state, on the device.
    valid = int((~invalid).sum())
    pushes = POLICIES[policy_name(policy)][1]
    assert int(state.step) == before["step"] + 1
    assert int(state.bad_target_count) == before["bad"] + int(bad.sum())
    assert int(state.nonfinite_count) == before["nonfinite"] + int(nonfinite.sum())
    assert int(state.pushed) == before["pushed"] + (valid if pushes else 0)


def policy_name(policy) -> str:
    if isinstance(policy, Uniform):
        return "uniform-rate" if policy.rate is not None else "uniform-k"
    return policy.name


def snapshot(state) -> dict:
    return {
        "step": int(state.step),
        "bad": int(state.bad_target_count),
        "nonfinite": int(state.nonfinite_count),
        "pushed": int(state.pushed),
    }


def run_case(name: str, backend: str, device: str, logits, targets, losses) -> list[sbkernels.Selection]:
    policy = POLICIES[name][0](backend)
    rows = expected_rows(logits, targets, losses)
    out = []
    for _ in range(3):  # three consecutive calls on one state
        state = policy.state
        before = snapshot(state) if state is not None else {"step": 0, "bad": 0, "nonfinite": 0, "pushed": 0}
        if losses is None:
            sel = policy(logits.to(device), targets.to(device))
        else:
            sel = policy(losses.to(device))
        check_call(policy, sel, before, policy.state, rows)
        out.append(sel)
    return out


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_keeps_the_contract_on_logits(name, case):
    logits, targets = CASES[case](torch.Generator().manual_seed(len(case)))
    results = {b: run_case(name, b, d, logits, targets, None) for b, d in BACKENDS}
    assert_backends_agree(name, results)


@pytest.mark.parametrize("case", list(LOSS_CASES))
@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_keeps_the_contract_on_losses(name, case):
    losses = LOSS_CASES[case]
    if not POLICIES[name][2]:
        with pytest.raises(ValueError, match="logits"):
            POLICIES[name][0](None)(losses)
        return
    results = {b: run_case(name, b, d, None, None, losses) for b, d in BACKENDS}
    assert_backends_agree(name, results)


def assert_backends_agree(name: str, results: dict[str, list[sbkernels.Selection]]) -> None:
    """Same rows on every backend (gradmatch: same count; its OMP may break near-ties differently)."""
    first, *others = results.values()
    for other in others:
        for a, b in zip(first, other, strict=True):
            assert int(a.count) == int(b.count)
            if name != "gradmatch":
                assert torch.equal(a.indices.cpu(), b.indices.cpu())


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_no_output_takes_part_in_autograd(name, backend):
    """Logits (and gradmatch's features) straight from a forward pass require grad: the selection's outputs
    must not, and no graph may hang off them (the ops have no autograd formula)."""
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(13, C, generator=gen) * 2).requires_grad_()
    targets = torch.randint(0, C, (13,), generator=gen)
    policy = POLICIES[name][0](backend)
    if name == "gradmatch":
        sel = policy(logits, targets, features=torch.randn(13, 5, generator=gen).requires_grad_())
    else:
        sel = policy(logits, targets)
    outputs = [t for t in sel if t is not None]
    assert not any(t.requires_grad or t.grad_fn is not None for t in outputs)


def test_the_autograd_check_catches_outputs_with_a_graph(monkeypatch):
    """Negative control: with the library's no_grad guard bypassed, the reference's loss carries a graph."""
    from sbkernels.ops import _registry as library

    monkeypatch.setattr(library, "_requires_grad", lambda args, positions: False)
    logits = torch.randn(5, C).requires_grad_()
    sel = SB(beta=1.0, backend="reference")(logits, torch.randint(0, C, (5,)))
    assert sel.loss.requires_grad
