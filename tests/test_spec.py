"""docs/SPEC.md is the contract the code cites: every "SPEC section N" in the tree names a section there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"SPEC section (\d+)")
HEADING = re.compile(r"^## (\d+)\. ", re.MULTILINE)
SOURCES = ("*.py", "*.md", "*.h", "*.cpp", "*.cu", "*.cuh", "*.sh", "Makefile")
FOLDERS = ("sbkernels", "csrc", "tests", "benchmarks", "examples", "docs", ".ci")


def spec_sections(text: str) -> set[int]:
    return {int(n) for n in HEADING.findall(text)}


def unresolved_citations(files: list[Path], sections: set[int]) -> list[str]:
    """``path:line: SPEC section N`` for every citation of a section that does not exist."""
    missing = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            missing += [f"{path}:{number}: SPEC section {n}" for n in CITATION.findall(line) if int(n) not in sections]
    return missing


def tree_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in FOLDERS:
        for pattern in SOURCES:
            files += sorted((ROOT / folder).rglob(pattern))
    return files


def test_every_spec_citation_resolves_to_a_section() -> None:
    sections = spec_sections((ROOT / "docs" / "SPEC.md").read_text())
    assert sections == set(range(1, 14)), f"docs/SPEC.md sections: {sorted(sections)}"
    files = tree_files()
    cited = sum(len(CITATION.findall(p.read_text(errors="replace"))) for p in files)
    assert cited > 30, f"only {cited} citations found: is the search looking in the right places?"
    assert unresolved_citations(files, sections) == []


def test_a_citation_of_a_missing_section_is_reported(tmp_path: Path) -> None:
    """Negative control: the check sees a citation it cannot resolve."""
    source = tmp_path / "module.py"
    missing = 42  # not written into this file's text, which the tree check reads too
    source.write_text(f'"""Cites SPEC section 2 and SPEC section {missing}."""\n')
    assert unresolved_citations([source], {1, 2}) == [f"{source}:1: SPEC section {missing}"]
