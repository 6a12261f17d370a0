"""benchmarks/gpu_run.sh on the CPU: budgets come from the collected test count, failures are reported
at the end instead of stopping the run (its GPU-only tests skip here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "STEPS": "gpu-only", **env},
    )  # fmt: skip


def test_the_gpu_only_step_gets_a_budget_from_its_test_count(tmp_path):
    done = _run(tmp_path)
    log = (tmp_path / "gpu_run.log").read_text()
    count = int(log.split("=== gpu-only: ")[1].split(" tests collected")[0])
    assert count >= 8
    assert f"budget {60 + 6 * count} s" in log
    assert done.returncode == 0, done.stdout[-3000:]
    assert "gpu_run: all steps passed" in done.stdout
    assert (tmp_path / "pytest-gpu-only.xml").exists()


def test_a_step_over_its_budget_is_reported_as_failed(tmp_path):
    done = _run(tmp_path, BASE="1", PER_TEST="0")
    assert done.returncode == 1
    assert "gpu_run: FAILED steps: gpu-only" in done.stdout
