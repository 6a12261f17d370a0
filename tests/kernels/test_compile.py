"""Triton's compiler, not only its interpreter, accepts every kernel (see tests/tools/compile_kernels.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "compile_kernels.py"


def _has_nvidia_backend() -> bool:
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[list[dict], Path]:
    """Every kernel compiled for sm_80 and sm_90 in one subprocess; the select_sb PTX files kept."""
    if not _has_nvidia_backend():
        pytest.skip("this triton has no NVIDIA backend")
    cache, ptx_dir = tmp_path_factory.mktemp("triton-cache"), tmp_path_factory.mktemp("ptx")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache)  # compile for real, never from an earlier run's cache
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "80", "90", "--ptx-dir", str(ptx_dir)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    failures = [f"{r['arch']} {r['kernel']}:\n{r['error']}" for r in records if not r["ok"]]
    assert not failures, "\n".join(failures)
    assert run.returncode == 0, run.stderr[-2000:]
    return records, ptx_dir


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(compiled):
    records, _ = compiled
    kernels = {r["kernel"] for r in records}
    assert len(records) == 2 * len(kernels) and any(k.startswith("residual") for k in kernels)
    spilled = [f"{r['arch']} {r['kernel']}: {r['local']} bytes" for r in records if r.get("local", 0) > 0]
    assert not spilled, f"register spills to local memory: {spilled}"
    if all("reg" in r for r in records):
        print("\n".join(f"{r['arch']} {r['kernel']}: {r['reg']} registers" for r in records))


def test_select_sb_ptx_keeps_the_ticket_ordering(compiled):
    """The acq_rel GPU-scope ticket atomic, one thread, and the barriers around it (tests/tools/ptx_ordering.py)."""
    records, ptx_dir = compiled
    checked = [r for r in records if "ordering_violations" in r]
    assert len(checked) == len(list(ptx_dir.glob("*.ptx"))) >= 2 * 16
    broken = [f"{r['arch']} {r['kernel']}: {r['ordering_violations']}" for r in checked if r["ordering_violations"]]
    assert not broken, "\n".join(broken)


MUTATIONS = {
    "barrier before the ticket": lambda ptx: _drop_barrier_before_atom(ptx),
    "ticket atomic": lambda ptx: ptx.replace(".acq_rel.", ".relaxed."),
    "ticket atomic scope": lambda ptx: re.sub(r"(atom\.global)\.gpu", r"\1.cta", ptx),
    "one thread": lambda ptx: re.sub(r"@%p\d+ (atom\.)", r"\1", ptx),
    "barrier before compaction": lambda ptx: _drop_barriers_before_compaction(ptx),
}


def _drop_barrier_before_atom(ptx: str) -> str:
    head, atom, tail = ptx.partition("atom.global")
    last_store = head.rindex("st.global")
    return head[:last_store] + re.sub(r"bar\.sync\s+0;", "// removed", head[last_store:]) + atom + tail


def _drop_barriers_before_compaction(ptx: str) -> str:
    head, atom, tail = ptx.partition("atom.global")
    load = tail.index("ld.global.b64")
    store = tail.index("st.global.b64", load)
    return head + atom + tail[:load] + re.sub(r"bar\.sync\s+0;", "// removed", tail[load:store]) + tail[store:]


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_ordering_check_catches_a_broken_ticket(compiled, mutation):
    """Negative controls: each property, broken in a real compiled PTX, is reported."""
    from tests.tools.ptx_ordering import ordering_violations

    _, ptx_dir = compiled
    ptx = sorted(ptx_dir.glob("*sm_90.ptx"))[0].read_text()
    assert ordering_violations(ptx) == []
    broken = MUTATIONS[mutation](ptx)
    assert broken != ptx
    violations = ordering_violations(broken)
    assert any(v.startswith(mutation.replace(" scope", "")) for v in violations), violations
