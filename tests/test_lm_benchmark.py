"""benchmarks/lm.py runs end to end at a tiny size on CPU and writes both tables (timings are not checked:
speed lives in the benchmark's own results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_the_lm_benchmark_writes_both_parts(tmp_path):
    out = tmp_path / "lm"
    args = ["--tokens", "2", "9", "--vocab", "37", "--hidden", "8", "--linear-vocab", "50", "--reps", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.lm", *args, "--out", str(out)], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())
    assert [(r["V"], r["dtype"]) for r in results["losses"]] == [(37, "fp32"), (37, "bf16")]
    assert all(r["max_abs_diff"] < 0.1 for r in results["losses"])  # the fused op and the route agree
    cases = [(r["dtype"], r["case"]) for r in results["linear"]]
    assert cases == [(d, c) for d in ("fp32", "bf16") for c in ("matmul", "matmul+fused", "linear")]
    assert all(r["ms"] > 0 and r["extra_peak_MB"] >= 0 for r in results["linear"])
    table = out.with_suffix(".md").read_text()
    assert table.startswith("# Language-model scoring on CPU") and "CPU numbers, not GPU claims" in table
