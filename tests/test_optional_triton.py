"""triton is optional: without it ``import sbkernels`` works, CPU runs native, and the Triton path says how to get it.

The absence is simulated in a fresh interpreter by an import hook that refuses ``triton`` and its submodules.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_TRITON = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError(f"No module named {name!r} (simulated)")
            return None

    sys.meta_path.insert(0, NoTriton())
    """
)

CHECK = textwrap.dedent(
    """
    import torch
    import sbkernels

    assert "triton" not in sys.modules, "importing sbkernels imported triton"
    logits, targets = torch.randn(64, 10), torch.randint(0, 10, (64,))
    state = sbkernels.SelectorState(16)
    sel = sbkernels.select(logits, targets, state, beta=2.0)  # auto on CPU: native
    sb = sbkernels.SelectiveBackprop(8, sbkernels.Keep(0.5))
    sb.observe(logits, targets, logits, targets)
    assert sum(b.data[0].shape[0] for b in sb.flush()) == 32
    try:
        sbkernels.select(logits, targets, state, backend="triton")
    except ImportError as error:
        assert "pip install 'triton>=3.6'" in str(error), error
        print("refused:", error)
    else:
        raise AssertionError("backend='triton' without triton was not refused")
    print("selected", int(sel.count))
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_sbkernels_works_without_triton_and_refuses_the_triton_path_clearly() -> None:
    result = _run(WITHOUT_TRITON + CHECK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused: backend='triton' on cpu needs triton" in result.stdout


def test_the_simulation_really_hides_triton() -> None:
    """Negative control: under the hook, triton itself does not import."""
    result = _run(WITHOUT_TRITON + "import triton\n")
    assert result.returncode != 0 and "simulated" in result.stderr
