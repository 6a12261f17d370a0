"""Run a multi-process command under a hard time limit that kills its whole process group (SIGKILL).

Frameworks catch SIGTERM (Lightning does), so ``subprocess.run(timeout=...)`` alone may leave a hung rank
running and CI stalled. :func:`run_killed_on_timeout` starts the command in a new session, and on timeout
kills every process of it, then fails with each rank's last output lines (which rank stopped where)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


class Hung(AssertionError):
    pass


def run_killed_on_timeout(command: list[str], timeout: float, cwd: Path, env: dict | None = None) -> str:
    """Run ``command``; return its output. Raises :class:`Hung` (with the output so far) on timeout, after
    SIGKILL of the whole process group, and AssertionError with the output on a non-zero exit."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        tail = "\n".join(output.splitlines()[-40:])
        raise Hung(
            f"{' '.join(command)} still ran after {timeout} s: killed its process group. Last output:\n{tail}"
        ) from expired
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {process.returncode}:\n{output[-6000:]}")
    return output
