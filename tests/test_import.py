"""``import sbkernels`` registers every op; an unbuilt checkout fails on import with the build instruction."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_registers_every_op():
    """The README's low-level example: torch.ops.sbkernels.gather_rows right after the import."""
    done = _python(
        "import torch, sbkernels\n"
        "for name in ('gather_rows', 'select_sb', 'uniform', 'keep', 'importance', 'gradmatch', 'row_losses'):\n"
        "    getattr(torch.ops.sbkernels, name)\n"
        "print('ok')"
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_unbuilt_checkout_fails_on_import_with_the_build_instruction():
    done = _python("import sys; sys.modules['sbkernels._C'] = None\nimport sbkernels")
    assert done.returncode != 0
    assert "make build" in done.stderr and "not built" in done.stderr, done.stderr
