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


def _equality_files_run(script: str, tmp_path: Path) -> set[str]:
    """The test files a dry run of the script text's equality step would run (from stdin in benchmarks/, so
    it finds the repository as the real script does)."""
    subprocess.run(
        ["bash", "-s", str(tmp_path / "out")], input=script, capture_output=True, text=True, timeout=120,
        cwd=ROOT / "benchmarks", env={**os.environ, "STEPS": "equality", "DRY_RUN": "1"}, check=True,
    )  # fmt: skip
    log = (tmp_path / "out" / "gpu_run.log").read_text()
    runs = [line.split(" -q ")[1] for line in log.splitlines() if line.startswith("=== equality") and " -q " in line]
    return {run.split()[0] for run in runs}


def _missing_from_equality(script: str, tmp_path: Path) -> set[str]:
    every = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")} - {"tests/kernels/test_gpu.py"}
    return every - _equality_files_run(script, tmp_path)


def test_the_equality_step_runs_every_test_file_but_the_gpu_only_one(tmp_path):
    """Since the tests moved into subfolders (issue 20), a glob of tests/test_*.py would run a fifth of them.
    Negative control: the script with that old glob misses the subfolders' files, and this check says so."""
    script = (ROOT / "benchmarks" / "gpu_run.sh").read_text()
    assert _missing_from_equality(script, tmp_path / "current") == set()
    old = script.replace("for file in $(equality_files); do", "for file in tests/test_*.py; do")
    assert old != script
    missing = _missing_from_equality(old, tmp_path / "old")
    assert "tests/ops/test_sequences.py" in missing and "tests/kernels/test_select_kernel.py" in missing
    assert "tests/test_estimate.py" not in missing  # the old glob still ran the top-level files
