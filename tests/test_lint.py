"""Negative controls of `make lint`'s type and C++ format checks: each catches a planted instance.

`make lint` itself runs them on the whole tree; here each one is shown to fail on a small bad input, so a
misconfigured check (a wrong path, an option that disables it) cannot pass silently.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_clang_format_check_rejects_a_misformatted_source(tmp_path):
    clang_format = pytest.importorskip("clang_format")
    shutil.copy(ROOT / ".clang-format", tmp_path / ".clang-format")
    good, bad = tmp_path / "good.cpp", tmp_path / "bad.cpp"
    good.write_text("int f() { return 1; }\n")
    bad.write_text("int  f( ){return 1;}\n")
    exe = clang_format.get_executable("clang-format")
    assert subprocess.run([exe, "--dry-run", "--Werror", str(good)], capture_output=True).returncode == 0
    assert subprocess.run([exe, "--dry-run", "--Werror", str(bad)], capture_output=True).returncode != 0


def test_mypy_rejects_a_narrowed_policy_override(tmp_path):
    """The error mypy found before the layout issue: a Policy.select override with a narrower signature."""
    pytest.importorskip("mypy")
    module = tmp_path / "narrow_policy.py"
    module.write_text(
        "from torch import Tensor\n"
        "from sbkernels import Policy, Selection, SelectorState\n\n\n"
        "class Narrow(Policy):\n"
        "    name = 'narrow'\n\n"
        "    def select(self, source: Tensor, targets: Tensor, state: SelectorState) -> Selection:\n"
        "        raise NotImplementedError\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(module)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert run.returncode != 0, run.stdout
    assert "incompatible with supertype" in run.stdout, run.stdout
