"""ExclusiveUse: one thread at a time inside the calls of an object that keeps counts (a pool, a selector
state, a SelectiveBackprop), detected instead of letting two threads interleave them."""

from __future__ import annotations

import threading


class ExclusiveUse:
    """``with guard("call"):`` raises ``RuntimeError`` when another thread is inside a guarded call of the same
    object, instead of letting two threads interleave its counts. Never waits: a lock taken without blocking.

    A plain context-manager class, not ``contextlib.contextmanager``: it guards every push and every batch
    handed out, and the generator-based form costs several times more per call."""

    def __init__(self, owner: str) -> None:
        self.owner, self.lock = owner, threading.Lock()

    def __call__(self, call: str) -> _GuardedCall:
        return _GuardedCall(self, call)

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return ExclusiveUse, (self.owner,)  # a copy (deepcopy, pickle) gets a lock of its own, never held


class _GuardedCall:
    __slots__ = ("call", "guard")

    def __init__(self, guard: ExclusiveUse, call: str) -> None:
        self.guard, self.call = guard, call

    def __enter__(self) -> None:
        if not self.guard.lock.acquire(blocking=False):
            raise RuntimeError(
                f"{self.guard.owner}.{self.call}: another thread is inside a call on this object; a pool, a policy "
                "and the SelectiveBackprop that owns them belong to one thread at a time: guard them with a lock"
            )

    def __exit__(self, *exc: object) -> None:
        self.guard.lock.release()
