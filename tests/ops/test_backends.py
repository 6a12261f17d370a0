"""Which backend a call runs (sbkernels.ops.backends.resolve): the one place a backend is chosen."""

from __future__ import annotations

import pytest
import torch

import sbkernels
from sbkernels.ops import resolve


@pytest.mark.parametrize(("device", "backend"), [("cpu", "native"), ("cuda", "triton"), ("mps", "reference"),
                                                 ("xpu", "reference"), ("meta", "reference")])  # fmt: skip
def test_auto_runs_each_devices_own_kernels_or_the_reference(device: str, backend: str, monkeypatch) -> None:
    """#29: auto on an mps or xpu tensor resolved to "native" and raised "runs on CPU tensors", so Apple-silicon
    users could not train at all. Devices without kernels of their own run the reference's torch ops."""
    monkeypatch.delenv("SBKERNELS_BACKEND", raising=False)
    if backend == "triton":
        pytest.importorskip("triton")
    assert resolve("auto", torch.device(device)) == backend
    assert resolve(None, torch.device(device)) == backend


def test_forcing_native_on_another_device_names_the_fix() -> None:
    with pytest.raises(ValueError, match="backend='native' runs on CPU tensors, got mps"):
        resolve("native", torch.device("mps"))


def test_a_policy_runs_on_a_device_without_kernels() -> None:
    """meta stands for such a device on this machine: SB, Keep and the LM losses run there end to end."""
    logits, labels = torch.empty(4, 6, 9, device="meta"), torch.zeros(4, 6, dtype=torch.int64, device="meta")
    assert sbkernels.sequence_losses(logits, labels).device.type == "meta"
    selection = sbkernels.Keep(0.5)(logits, labels)
    assert selection.indices.device.type == "meta" and selection.indices.shape == (4,)
