"""Run a multi-process command under a hard time limit that kills all of it (SIGKILL).

Frameworks catch SIGTERM (Lightning does), so ``subprocess.run(timeout=...)`` alone may leave a hung rank
running and CI stalled; and launchers put their ranks in sessions of their own (torch's elastic agent
does), so killing the launcher's process group is not enough either. :func:`run_killed_on_timeout` starts
the command in a new session, and on timeout kills that process group and every process descended from
the command, then fails with the last output lines (which rank stopped where)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


class Hung(AssertionError):
    pass


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), children before grandchildren."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        children = [child for p in frontier for child in parents.get(p, [])]
        found += children
        frontier = children
    return found


def kill_all(process: subprocess.Popen) -> None:
    """SIGKILL the command's process group and every descendant, wherever its session."""
    below = descendants(process.pid)  # before anything dies: orphans are re-parented away from the tree
    for kill in [lambda: os.killpg(process.pid, signal.SIGKILL)] + [
        (lambda p=p: os.kill(p, signal.SIGKILL)) for p in below
    ]:
        try:
            kill()
        except ProcessLookupError:
            pass


def run_killed_on_timeout(command: list[str], timeout: float, cwd: Path | str, env: dict | None = None) -> str:
    """Run ``command``; return its output. Raises :class:`Hung` (with the output so far) on timeout, after
    killing all of it, and AssertionError with the output on a non-zero exit."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        kill_all(process)
        output, _ = process.communicate(timeout=30)
        tail = "\n".join(output.splitlines()[-40:])
        raise Hung(
            f"{' '.join(command)} still ran after {timeout} s: killed all of it. Last output:\n{tail}"
        ) from expired
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {process.returncode}:\n{output[-6000:]}")
    return output
