"""No selection entry point reads tensor data on the host: a CPU stand-in for the GPU's no-sync tests.

Under ``FakeTensorMode`` tensors carry shapes but no data, so anything that would copy a device value to the
host (``.item()``, ``int(t)``, ``bool(t)``, ``.tolist()``, ``nonzero``) raises. Each policy's reference
path runs the same Python as on CUDA except the Triton launch, so passing here rules out host syncs in all
of that code; ``tests/kernels/test_gpu.py`` checks the kernels themselves with ``set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

import sbkernels
from sbkernels import policies

N, C = 37, 11


def _fake_state(mode: FakeTensorMode, history_size: int = 64) -> sbkernels.SelectorState:
    state = sbkernels.SelectorState(history_size, seed=3)
    state.history, state.meta = mode.from_tensor(state.history), mode.from_tensor(state.meta)
    return state


CALLS = {
    "select": lambda x, t, s: sbkernels.select(x, t, s, beta=2.0, floor=0.05, prime=4, backend="reference"),
    "select_losses": lambda x, t, s: sbkernels.select_losses(x[:, 0].abs(), s, beta=1.5, backend="reference"),
    "keep": lambda x, t, s: policies.select_keep(x, t, s, keep=0.4, backend="reference"),
    "uniform rate": lambda x, t, s: policies.select_uniform(x, t, s, rate=0.3, backend="reference"),
    "uniform k": lambda x, t, s: policies.select_uniform(x, t, s, k=9, backend="reference"),
    "importance": lambda x, t, s: policies.select_importance(x, t, s, k=9, backend="reference"),
    "gradmatch": lambda x, t, s: policies.select_gradmatch(x, t, s, 5, x[:, :7] * 2, steps=4, backend="reference"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_selection_never_reads_tensor_data_on_the_host(name):
    mode = FakeTensorMode()
    with mode:
        logits, targets = torch.randn(N, C), torch.randint(0, C, (N,))
        state = _fake_state(mode)
        sel = CALLS[name](logits, targets, state)
        assert sel.indices.shape == (N,) and sel.count.shape == ()


def test_the_fake_mode_catches_a_host_read():
    mode = FakeTensorMode()
    with mode, pytest.raises(DataDependentOutputException):
        state = _fake_state(mode)
        sbkernels.select(torch.randn(N, C), torch.randint(0, C, (N,)), state, backend="reference")
        int(state.meta[0])  # what a careless caller would do: this is a sync on a GPU
