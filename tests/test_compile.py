"""Triton's compiler, not only its interpreter, accepts every kernel (see tests/compile_kernels.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_kernels.py")


def _has_nvidia_backend() -> bool:
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_nvidia_backend(), reason="this triton has no NVIDIA backend")
def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, never from an earlier run's cache
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "80", "90"], capture_output=True, text=True, env=env, timeout=600
    )
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    failures = [f"{r['arch']} {r['kernel']}:\n{r['error']}" for r in records if not r["ok"]]
    assert not failures, "\n".join(failures)
    assert run.returncode == 0, run.stderr[-2000:]
    kernels = {r["kernel"] for r in records}
    assert len(records) == 2 * len(kernels) and any(k.startswith("residual") for k in kernels)
    spilled = [f"{r['arch']} {r['kernel']}: {r['local']} bytes" for r in records if r.get("local", 0) > 0]
    assert not spilled, f"register spills to local memory: {spilled}"
    if all("reg" in r for r in records):
        print("\n".join(f"{r['arch']} {r['kernel']}: {r['reg']} registers" for r in records))
