"""The PTX properties the select_sb kernel's memory ordering depends on, read from Triton's compiled PTX.

select_sb_kernel (sbkernels/kernels/select_sb.py) ends every program with a ticket: one atomic add on
``meta[TICKET]`` that also carries the program's count of valid losses. The program that draws the last
ticket runs the epilogue, which reads every program's flags and compacts them in place. That is correct
only if the compiled code keeps four properties:

1. ``ticket atomic``: exactly one atomic add, with acq_rel semantics at GPU scope, so that every earlier
   program's stores are visible to the program that draws the last ticket (release + acquire);
2. ``one thread``: the atomic is predicated on ``%tid.x == 0``, so a program takes one ticket, not one per
   thread;
3. ``barrier before the ticket``: a ``bar.sync`` between the program's last global store and the atomic,
   so the other threads' stores are ordered before thread 0's release;
4. ``barrier before compaction``: in the epilogue, a ``bar.sync`` between the first load of flags and the
   first in-place store of compacted indices, whose slots may hold flags other threads have not read yet.

:func:`ordering_violations` returns the properties a PTX text breaks (empty when it keeps all four).
"""

from __future__ import annotations

import re

_ATOM_ADD = re.compile(r"^\s*(@%p\d+\s+)?atom\.[\w.:]*add[\w.]*\s")
_TID = re.compile(r"mov\.u32\s+(%r\d+),\s*%tid\.x;")


def _lines(ptx: str) -> list[str]:
    """Instruction lines only (no .loc, comments or labels)."""
    out = []
    for line in ptx.splitlines():
        code = line.split("//")[0].strip()
        if code and not code.startswith(".") and not code.endswith(":"):
            out.append(code)
    return out


def ordering_violations(ptx: str) -> list[str]:
    lines = _lines(ptx)
    atoms = [i for i, line in enumerate(lines) if _ATOM_ADD.match(line)]
    if len(atoms) != 1:
        return [f"ticket atomic: expected exactly one atomic add, found {len(atoms)}"]
    at = atoms[0]
    atom = lines[at]
    problems = []
    if ".acq_rel" not in atom or ".gpu" not in atom:
        problems.append(f"ticket atomic: not acq_rel at GPU scope: {atom}")

    predicate = re.match(r"@(%p\d+)\s", atom)
    tid_regs = set(_TID.findall(ptx))
    setp = re.compile(r"setp\.eq\.[a-z0-9]+\s+(%p\d+),\s*(%r\d+),\s*0;")
    one_thread = predicate is not None and any(
        m.group(1) == predicate.group(1) and m.group(2) in tid_regs for line in lines[:at] if (m := setp.match(line))
    )
    if not one_thread:
        problems.append(f"one thread: the atomic is not predicated on %tid.x == 0: {atom}")

    last_store = max((i for i in range(at) if lines[i].split()[-1] and "st.global" in lines[i]), default=-1)
    if not any(lines[i].startswith("bar.sync") for i in range(last_store + 1, at)):
        problems.append("barrier before the ticket: no bar.sync between the last global store and the atomic")

    first_load = next((i for i in range(at + 1, len(lines)) if "ld.global.b64" in lines[i]), None)
    first_store = next(
        (i for i in range(first_load or at, len(lines)) if "st.global.b64" in lines[i]), None
    ) if first_load is not None else None  # fmt: skip
    if first_load is None or first_store is None:
        problems.append("barrier before compaction: no epilogue load of flags and store of indices found")
    elif not any(lines[i].startswith("bar.sync") for i in range(first_load + 1, first_store)):
        problems.append("barrier before compaction: no bar.sync between reading the flags and compacting in place")
    return problems
