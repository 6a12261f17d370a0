"""Device-resident state of the "sb" selection policy.

Everything the selection op reads and advances lives in two tensors on the device, so a call never has to
ask the host for anything:

- ``history`` (R,) float32: ring buffer of the most recent valid losses. The k-th loss ever pushed (0-based)
  lives at ``history[k % R]``.
- ``meta`` (8,) int64: counters, addressed by the ``META_*`` slots of :mod:`sbkernels.slots`.
  ``pushed``, ``step`` and the error counts are views into it, so the ops update them in place and CUDA
  graphs that captured them stay valid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ._exclusive import ExclusiveUse

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

from .slots import (
    MAX_COUNTER,
    META_BAD_TARGETS,
    META_NONFINITE,
    META_PUSHED,
    META_SEED,
    META_SIZE,
    META_SIZE_MISMATCH,
    META_STEP,
    META_TICKET,
)

_STATE_DICT_VERSION = 1
_Call = TypeVar("_Call", bound=Callable[..., Any])


class SelectorState:
    """History ring buffer, Philox seed/step and error counters for :func:`sbkernels.select`.

    Args:
        history_size: R, the number of recent losses each new loss is ranked against (R >= 1).
        seed: Philox seed; same inputs and same seed select the same rows, on CPU and GPU.
        device: where the state lives; it must match the device of the logits passed to ``select``.
        process_group: a ``torch.distributed`` group: policy "sb" then selects globally across its ranks
            (SPEC section 8, :mod:`sbkernels.distributed`); every rank keeps an identical state.
    """

    def __init__(
        self,
        history_size: int = 1024,
        seed: int = 0,
        device: torch.device | str = "cpu",
        process_group: ProcessGroup | None = None,
    ) -> None:
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"history_size must be an int >= 1, got {history_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
            raise ValueError(f"seed must be an int that fits in int64, got {seed!r}")
        self.history = torch.zeros(history_size, dtype=torch.float32, device=device)
        self.meta = torch.zeros(META_SIZE, dtype=torch.int64, device=device)
        self.meta.narrow(0, META_SEED, 1).fill_(seed)
        self.process_group = process_group
        self.warned_short_history = False  # the policies warn once when one call's rows outnumber R
        #: held by every call that advances the state (:func:`advances_state`): two threads drawing with one
        #: state would reuse Philox steps and interleave the history, so the second raises instead.
        self.exclusive = ExclusiveUse("SelectorState")

    # Views into ``meta``: reading them never synchronizes; ``int(state.pushed)`` does.
    @property
    def pushed(self) -> torch.Tensor:
        return self.meta[META_PUSHED]

    @property
    def step(self) -> torch.Tensor:
        return self.meta[META_STEP]

    @property
    def nonfinite_count(self) -> torch.Tensor:
        return self.meta[META_NONFINITE]

    @property
    def bad_target_count(self) -> torch.Tensor:
        return self.meta[META_BAD_TARGETS]

    @property
    def history_size(self) -> int:
        return self.history.numel()

    @property
    def device(self) -> torch.device:
        return self.history.device

    def check(self) -> None:
        """Raise ``ValueError`` if any earlier call saw targets outside ``[0, C)`` (or, with a process group,
        ranks that passed different batch sizes).

        Reads device counters, so it synchronizes: call it when convenient (every N steps, at epoch end),
        or pass ``validate=True`` to ``select``. A counter is reset when it is reported.
        """
        bad, mismatched = (int(v) for v in self.meta[[META_BAD_TARGETS, META_SIZE_MISMATCH]].tolist())
        if mismatched:
            self.meta.narrow(0, META_SIZE_MISMATCH, 1).zero_()
            raise ValueError(
                f"{mismatched} global selection call(s) got different batch sizes on the ranks of the process "
                "group: pass the same N on every rank (e.g. DistributedSampler with drop_last)"
            )
        if bad:
            self.meta.narrow(0, META_BAD_TARGETS, 1).zero_()
            raise ValueError(
                f"{bad} row(s) had a target outside [0, num_classes) that was not ignore_index; "
                "they were never selected and never entered the history"
            )

    def state_dict(self) -> dict[str, Any]:
        meta = self.meta.detach().clone()
        meta.narrow(0, META_TICKET, 1).zero_()
        return {"version": _STATE_DICT_VERSION, "history": self.history.detach().clone(), "meta": meta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy a saved state in place (the tensors keep their identity and device).

        Refuses, before changing anything, what no run could have produced (SPEC section 11): another
        version, shape or dtype, a non-finite history entry, a negative counter or one beyond
        ``MAX_COUNTER``. Reads the saved values on the host (synchronizes).
        """
        history, meta = check_saved_state(state_dict, self.history_size)
        self.history.copy_(history)
        self.meta.copy_(meta)
        self.meta.narrow(0, META_TICKET, 1).zero_()

    def __repr__(self) -> str:
        return f"SelectorState(history_size={self.history_size}, device={self.device})"


def check_saved_state(state_dict: Any, history_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(history, meta)`` of a saved state for a state of ``history_size``, or ValueError naming what no run
    could have produced (see :meth:`SelectorState.load_state_dict`). Synchronizes."""
    version = state_dict.get("version") if isinstance(state_dict, dict) else None
    if type(version) is not int or version != _STATE_DICT_VERSION:  # True == 1, but no run saves True
        version = state_dict.get("version") if isinstance(state_dict, dict) else type(state_dict).__name__
        raise ValueError(f"unsupported SelectorState state_dict version {version!r}")
    history, meta = state_dict.get("history"), state_dict.get("meta")
    history = _check_saved_tensor("history", history, torch.float32, (history_size,), "history_size")
    meta = _check_saved_tensor("meta", meta, torch.int64, (META_SIZE,), "META_SIZE")
    if not bool(torch.isfinite(history).all()):
        raise ValueError("corrupted SelectorState: the saved history holds NaN or infinite losses, which no run pushes")
    counters = meta[[META_PUSHED, META_STEP, META_NONFINITE, META_BAD_TARGETS, META_SIZE_MISMATCH]].tolist()
    for name, value in zip(("pushed", "step", "nonfinite", "bad_targets", "size_mismatch"), counters, strict=True):
        if not 0 <= value <= MAX_COUNTER:
            raise ValueError(f"corrupted SelectorState: counter {name} = {value}, a run keeps it in [0, 2**62]")
    return history, meta


def _check_saved_tensor(
    name: str, value: object, dtype: torch.dtype, shape: tuple[int, ...], what: str
) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"corrupted SelectorState: {name} must be a tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise ValueError(f"corrupted SelectorState: {name} must be {dtype}, got {value.dtype}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{what} mismatch: saved {name} has shape {tuple(value.shape)}, this state {shape}")
    return value


def advances_state(position: int) -> Callable[[_Call], _Call]:
    """Decorate a function that advances its :class:`SelectorState` argument (at ``position``, or ``state=``):
    the call holds the state's :attr:`~SelectorState.exclusive` guard, so a second thread raises."""

    def decorate(function: _Call) -> _Call:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            state = args[position] if len(args) > position else kwargs.get("state")
            # Not a state: the function's own check names it. Compiling: a traced graph takes no Python lock.
            if not isinstance(state, SelectorState) or torch.compiler.is_compiling():
                return function(*args, **kwargs)
            with state.exclusive(function.__name__):
                return function(*args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate
