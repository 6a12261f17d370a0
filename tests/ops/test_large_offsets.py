"""Row offsets past 2**31 elements, checked on CPU.

Three logits rows sit 2**30 + 7 elements apart (8 GiB in all) in a sparse memory-mapped file, so only the
touched pages take memory. The Triton kernels run under the interpreter, which does their integer math in
the kernel's own dtypes, so an int32 row offset wraps there as it would on a GPU. The C++ CPU gather, the
host build of the CUDA gather kernel and the native CPU selection kernels (every instruction set) read the
same rows. A wrapped offset reads the wrong address or crashes, so the checks run in a subprocess: a crash
fails this test instead of killing pytest. tests/kernels/test_gpu.py holds the GPU version, with a real
N * C > 2**31 tensor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sbkernels.kernels.common import interpreting
from tests.tools import cuda_emulation

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys
import torch
import torch.nn.functional as F
import sbkernels
from sbkernels import gather_rows, new_cursor
from sbkernels import reference
from sbkernels.kernels.row_stats import launch_residual
from tests.tools import cuda_emulation

path = sys.argv[1]
stride, n, c = (1 << 30) + 7, 3, 10
numel = (n - 1) * stride + c
with open(path, "wb") as f:
    f.truncate(numel * 4)  # sparse: no disk or memory until written
storage = torch.from_file(path, shared=False, size=numel, dtype=torch.float32)
logits = storage.as_strided((n, c), (stride, 1))
assert logits.stride(0) * (n - 1) > 2**31
dense = torch.randn(n, c, generator=torch.Generator().manual_seed(0))
logits.copy_(dense)
targets = torch.tensor([3, 0, 9])

def state():
    return sbkernels.SelectorState(16, seed=1, device="cpu")

checked = []
if sys.argv[2] == "triton":
    sel = sbkernels.select(logits, targets, state(), beta=1.0, backend="triton")
    torch.testing.assert_close(sel.loss, F.cross_entropy(dense, targets, reduction="none"))
    keep = sbkernels.select_keep(logits, targets, state(), keep=0.67, backend="triton")
    want = sbkernels.select_keep(dense, targets, state(), keep=0.67, backend="reference")
    assert torch.equal(keep.indices, want.indices) and int(keep.count) == int(want.count), (keep, want)
    torch.testing.assert_close(keep.loss, want.loss)
    r, loss = launch_residual(logits=logits, targets=targets, ignore_index=-100)
    r_want, loss_want = reference.residuals(dense, targets)
    torch.testing.assert_close(r, r_want)
    torch.testing.assert_close(loss, loss_want)
    checked += ["select", "keep", "residuals"]

# The native CPU kernels (csrc/cpu/select_cpu.cpp), under every instruction set this CPU has.
for isa in ("avx512", "avx2", "default"):
    try:
        torch.ops.sbkernels.cpu_isa(isa)
    except RuntimeError:
        continue
    sel = sbkernels.select(logits, targets, state(), beta=1.0, backend="native")
    want = sbkernels.select(dense, targets, state(), beta=1.0, backend="reference")
    assert torch.equal(sel.indices, want.indices) and int(sel.count) == int(want.count), (isa, sel, want)
    torch.testing.assert_close(sel.loss, F.cross_entropy(dense, targets, reduction="none"))
    loss, score, _ = torch.ops.sbkernels.row_stats_cpu(logits, targets, None, state().meta, -100, 0.0, 0)
    want_loss, want_score, _ = reference.row_stats(dense, targets, None, state().meta)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(score, want_score)
    checked.append(f"native-{isa}")
torch.ops.sbkernels.cpu_isa("best")

gathers = {"cpu": gather_rows}
if cuda_emulation.load() is None:
    gathers["cuda-emulated"] = torch.ops.sbkernels_emulated.gather_rows
for name, gather in gathers.items():
    out, cursor = torch.zeros(4, c), new_cursor("cpu")
    gather([logits], torch.tensor([2, 0, 1, 2]), torch.tensor(4), [out], cursor)
    assert torch.equal(out, dense[[2, 0, 1, 2]]) and cursor.tolist()[:3] == [4, 0, 0], name
print("checked:", *checked, *(f"gather {name}" for name in gathers))
print("ok")
"""


def test_kernels_index_rows_past_2_31_elements(tmp_path):
    # The Triton kernels run here only where this session interprets them; on a GPU machine test_gpu.py
    # covers them with a real tensor (and its triton/numpy pair may not interpret at all).
    triton_part = "triton" if interpreting() else "no-triton"
    env = {**os.environ, "TRITON_INTERPRET": "1" if interpreting() else "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "logits.bin"), triton_part],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip().endswith("ok"), proc.stdout
    assert "native-default" in proc.stdout, proc.stdout  # every CPU has the baseline path
    if interpreting():
        assert "select keep residuals" in proc.stdout, proc.stdout
    if cuda_emulation.cuda_include_dirs():  # with nvcc's headers the CUDA gather kernel is checked too
        assert "cuda-emulated" in proc.stdout, proc.stdout
