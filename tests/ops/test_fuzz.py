"""Fuzz table (SPEC section 11): every malformed direct call of a registered op ends in a Python exception.

Each case of ``tests/tools/fuzz_cases.py`` runs in its own process with a timeout, so a segfault or a hang
fails the case instead of the run. ``make asan`` runs this file against the AddressSanitizer + UBSan build,
where an out-of-bounds read or write aborts the case too.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.tools.fuzz import run_case
from tests.tools.fuzz_cases import CASES, CONTROLS


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_call_raises_a_python_exception(name: str) -> None:
    verdict = run_case(name)
    assert verdict.ending == "exception", f"{name}: {verdict}"


def test_every_registered_op_has_cases() -> None:
    registered = {
        name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("sbkernels::")
    }
    covered = {name.split(".")[0] for name in CASES if ".mixed_devices_" not in name}
    mixed = {name.split(".")[0] for name in CASES if ".mixed_devices_" in name}
    assert registered - {"cpu_isa"} <= mixed, f"ops without mixed-device cases: {sorted(registered - mixed)}"
    assert registered, "no sbkernels op registered"
    assert registered <= covered, f"ops without fuzz cases: {sorted(registered - covered)}"


@pytest.mark.parametrize(
    ("name", "ending"), [("control.segfault", "signal"), ("control.hang", "timeout"), ("control.returns", "returned")]
)
def test_harness_reports_each_failure_kind(name: str, ending: str) -> None:
    """Negative controls of the harness: a crash, a hang and an unrefused call are each reported."""
    verdict = run_case(name, timeout=5.0 if ending == "timeout" else 60.0)
    assert verdict.ending == ending, f"{name}: {verdict}"
    assert name in CONTROLS


@pytest.mark.skipif(
    "SBKERNELS_FUZZ_EXPECT_CAUGHT" not in os.environ,
    reason="runs in make asan, against the build with one check removed (.ci/asan.sh)",
)
def test_negative_build_is_caught() -> None:
    """Negative control of the whole chain: with one C++ check removed, its case no longer raises."""
    name = os.environ["SBKERNELS_FUZZ_EXPECT_CAUGHT"]
    verdict = run_case(name)
    assert verdict.ending != "exception", f"{name} still raised in the build without its check: {verdict}"
