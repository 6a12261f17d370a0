"""Runs the cases of :mod:`tests.tools.fuzz_cases`, each in its own process with a timeout, and says how it ended.

The processes come from a fork server that has imported torch and sbkernels but run no op (so no OpenMP
thread pool exists to be inherited): one case costs a fork, not an interpreter start. A case ends in one of

- ``exception``: it raised a Python exception (what SPEC section 11 asks of every malformed call);
- ``returned``: it returned normally (a malformed call that was not refused);
- ``signal``: the process died on a signal (a segfault, or a sanitizer's abort);
- ``died``: the process exited without reporting (a sanitizer's exit);
- ``timeout``: it still ran after the timeout (a hang), and was killed.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass

TIMEOUT_S = 60.0  # generous: a loaded CI machine under AddressSanitizer; a valid call here takes milliseconds
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["tests.tools.fuzz_cases"])


@dataclass(frozen=True)
class Verdict:
    ending: str  # "exception", "returned", "signal", "died" or "timeout"
    detail: str

    def __str__(self) -> str:
        return f"{self.ending}: {self.detail}"


def _child(name: str, conn) -> None:
    from tests.tools.fuzz_cases import CASES, CONTROLS

    case = {**CASES, **CONTROLS}[name]
    try:
        case()
    except Exception as error:  # what every case must end in
        conn.send(("exception", f"{type(error).__name__}: {str(error)[:300]}"))
    else:
        conn.send(("returned", "the call returned normally"))
    conn.close()


def run_case(name: str, timeout: float = TIMEOUT_S) -> Verdict:
    receiver, sender = _context.Pipe(duplex=False)
    process = _context.Process(target=_child, args=(name, sender), daemon=True)
    process.start()
    sender.close()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        return Verdict("timeout", f"still running after {timeout:.0f} s")
    try:
        if receiver.poll():
            ending, detail = receiver.recv()
            return Verdict(ending, detail)
    except EOFError:  # poll() is also True when the child closed its end without sending
        pass
    if process.exitcode is not None and process.exitcode < 0:
        return Verdict("signal", f"killed by signal {-process.exitcode}")
    return Verdict("died", f"exited with code {process.exitcode} without reporting")
