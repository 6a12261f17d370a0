"""The layout rules of docs/design.md, checked on the tree: one place chooses a backend, one place names
the ops, tests import no helpers from conftest. Each rule's finder is shown to catch a planted violation."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BACKEND_TEST = re.compile(r"""\bbackend\s*(==|!=|in)\s*[("']""")
OP_BY_NAME = re.compile(r"""\bcall\(\s*["']|torch\.ops\.sbkernels\.\w+\(""")
CONFTEST_IMPORT = re.compile(r"^\s*from\s+(\.|tests\.)conftest\s+import", re.M)
#: The layers the ops are built on (the reference, the Triton kernels, the row helpers, the state's slots)
#: import nothing from ``ops/``: it sits above them.
OPS_IMPORT = re.compile(
    r"^\s*(from\s+(\.+|sbkernels\.)ops\b|from\s+\.+\s+import\s+ops\b|import\s+sbkernels\.ops)", re.M
)


def _offenders(pattern: re.Pattern, files: list[Path], allowed: set[str]) -> list[str]:
    found = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if rel not in allowed and pattern.search(path.read_text()):
            found.append(rel)
    return found


def _package_files() -> list[Path]:
    return sorted((ROOT / "sbkernels").rglob("*.py"))


def test_only_the_backend_table_tests_a_backend_name():
    assert _offenders(BACKEND_TEST, _package_files(), {"sbkernels/ops/backends.py"}) == []


def test_only_the_ops_layer_calls_an_op_by_name():
    allowed = {"sbkernels/ops/__init__.py", "sbkernels/ops/_native.py", "sbkernels/ops/_gather.py"}
    assert _offenders(OP_BY_NAME, _package_files(), allowed) == []


def test_what_the_ops_are_built_on_imports_nothing_from_ops():
    below = [ROOT / "sbkernels" / name for name in ("reference.py", "_rows.py", "slots.py")]
    below += sorted((ROOT / "sbkernels" / "kernels").rglob("*.py"))
    assert _offenders(OPS_IMPORT, below, set()) == []


def test_no_test_imports_helpers_from_conftest():
    assert _offenders(CONFTEST_IMPORT, sorted((ROOT / "tests").rglob("*.py")), set()) == []


def test_every_finder_catches_a_planted_violation(tmp_path):
    planted = {
        BACKEND_TEST: 'if backend == "native":\n    pass\n',
        OP_BY_NAME: 'out = library.call("select_sb", logits)\n',
        CONFTEST_IMPORT: "from .conftest import kernel_devices\n",
        OPS_IMPORT: "from ..ops._rows import integer_beta\n",
    }
    for i, (pattern, text) in enumerate(planted.items()):
        path = tmp_path / f"planted_{i}.py"
        path.write_text(text)
        assert _offenders(pattern, [path], set()) == [str(path)]
