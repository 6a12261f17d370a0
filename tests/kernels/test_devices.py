"""Launches and events go to the tensors' own device, not the current one (SPEC section 7).

On a machine with several GPUs, a Triton launch for tensors on ``cuda:1`` while ``cuda:0`` is current runs
on the wrong context, and a readback event recorded on the current device's stream can report done before
the copy on the cursor's device ran. CPU-side checks: every Triton launch happens inside
``device_guard(<the tensors' device>)`` (the one launch path, ``kernels.common.launch``), and the pool's
readback enters the guard and records its event on the cursor device's stream. The real two-GPU test is
in test_gpu.py.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import sbkernels
from sbkernels import policies
from sbkernels.kernels import common, select_sb
from sbkernels.pool import _row_count as row_count
from tests.helpers import kernel_devices

pytestmark = pytest.mark.skipif("cpu" not in kernel_devices(), reason="checks interpreted launches")


@pytest.fixture
def guarded(monkeypatch):
    """Record the guard's device, and fail any interpreted launch made outside it or on another device."""
    from triton.runtime.interpreter import InterpretedFunction

    entered: list[torch.device] = []
    launches: list[torch.device] = []
    original_guard, original_run = common.device_guard, InterpretedFunction.run

    @contextlib.contextmanager
    def recording_guard(device):
        entered.append(device)
        with original_guard(device):
            yield
        entered.pop()

    def run(self, *args, **kwargs):
        devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        assert entered, f"launch of {self.fn.__name__} outside device_guard"
        assert devices == {entered[-1]}, f"{self.fn.__name__}: tensors on {devices}, guard on {entered[-1]}"
        launches.append(entered[-1])
        return original_run(self, *args, **kwargs)

    monkeypatch.setattr(common, "device_guard", recording_guard)
    monkeypatch.setattr(InterpretedFunction, "run", run)
    return launches


CALLS = {
    "select": lambda x, t, s: sbkernels.select(x, t, s, backend="triton"),
    "select_losses": lambda x, t, s: sbkernels.select_losses(x[:, 0], s, backend="triton"),
    "keep": lambda x, t, s: policies.select_keep(x, t, s, 0.5, backend="triton"),
    "uniform k": lambda x, t, s: policies.select_uniform(x, t, s, k=3, backend="triton"),
    "importance": lambda x, t, s: policies.select_importance(x, t, s, 3, backend="triton"),
    "gradmatch": lambda x, t, s: policies.select_gradmatch(x, t, s, 3, backend="triton"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_every_launch_runs_inside_the_guard_of_its_tensors_device(guarded, name):
    x, t = torch.randn(9, 5), torch.randint(0, 5, (9,))
    CALLS[name](x, t, sbkernels.SelectorState(8))
    assert guarded == [torch.device("cpu")] * len(guarded) and guarded


def test_a_launch_that_bypasses_the_guard_is_caught(guarded):
    """Negative control: a launcher calling the kernel directly, as they all did before."""
    losses, state = torch.rand(4), sbkernels.SelectorState(8)
    out = [torch.empty(4, dtype=torch.int64), torch.empty((), dtype=torch.int32), torch.empty(4), torch.empty(4)]
    config = select_sb.launch_config(4, 1, 8, from_logits=False)
    with pytest.raises(AssertionError, match="outside device_guard"):
        select_sb.select_sb_kernel[(1,)](
            logits_ptr=None, stride_logits=0, targets_ptr=None, stride_targets=0, losses_in_ptr=losses,
            stride_losses=1, history_ptr=state.history, meta_ptr=state.meta, loss_ptr=out[2], prob_ptr=out[3],
            indices_ptr=out[0], count_ptr=out[1], N=4, C=1, R=8, beta=1.0, beta_int=1, floor=0.0, prime=0,
            ignore_index=-100, label_smoothing=0.0, fixed_prob=-1.0, FROM_LOGITS=False, FIXED_PROB=False, **config,
        )  # fmt: skip


def test_the_pool_readback_records_on_the_cursors_device(monkeypatch):
    """EventReadback enters the cursor device's guard and records its event on that device's stream."""
    calls = []

    @contextlib.contextmanager
    def guard(device):
        calls.append(("guard", device))
        yield

    class Event:
        def record(self, stream):
            calls.append(("record", stream))

    monkeypatch.setattr(row_count, "device_guard", guard)
    monkeypatch.setattr(row_count, "pinned_like", torch.empty_like)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream of", device))
    cursor = torch.arange(4)
    readback = row_count.EventReadback(cursor)
    assert calls == [("guard", cursor.device), ("record", ("stream of", cursor.device))]
    assert readback.host.tolist() == [0, 1, 2, 3]
