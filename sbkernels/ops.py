"""The selection ops, registered with ``torch.library``, and their public Python wrappers.

Each op is a ``triton_op``: eager calls run the Triton kernel (CUDA tensors, or CPU tensors under the
Triton interpreter) or the PyTorch reference (CPU tensors by default); ``torch.compile`` traces into the
body, and the same body run on fake tensors is the op's fake implementation.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from . import _checks, library, reference
from .kernels.select_sb import launch_select_sb
from .selection import Selection
from .state import SelectorState

#: Default for ``backend="auto"``-style overrides: set SBKERNELS_BACKEND=triton to force the Triton path
#: (CPU tensors then need TRITON_INTERPRET=1) or =reference to force the PyTorch reference everywhere.
BACKEND_ENV = "SBKERNELS_BACKEND"


def _use_triton(device: torch.device, backend: str) -> bool:
    if backend == "auto":
        return device.type == "cuda"
    return backend == "triton"


@library.register_op("select_sb", mutates_args={"history", "meta"})
def _select_sb(
    logits: Tensor,
    targets: Tensor,
    history: Tensor,
    meta: Tensor,
    beta: float,
    floor: float,
    prime: int,
    ignore_index: int,
    label_smoothing: float,
    fixed_prob: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if _use_triton(logits.device, backend):
        return launch_select_sb(
            logits, targets, None, history, meta, beta, reference.integer_beta(beta), floor, prime,
            ignore_index, label_smoothing, fixed_prob,
        )  # fmt: skip
    loss, ignored, bad = reference.cross_entropy(logits, targets, ignore_index, label_smoothing)
    return reference.select_sb(loss, ignored, bad, history, meta, beta, floor, prime, fixed_prob)


@library.register_op("select_sb_losses", mutates_args={"history", "meta"})
def _select_sb_losses(
    losses: Tensor,
    history: Tensor,
    meta: Tensor,
    beta: float,
    floor: float,
    prime: int,
    fixed_prob: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if _use_triton(losses.device, backend):
        return launch_select_sb(
            None, None, losses, history, meta, beta, reference.integer_beta(beta), floor, prime, -100, 0.0,
            fixed_prob,
        )  # fmt: skip
    no_rows = torch.zeros(losses.shape, dtype=torch.bool, device=losses.device)
    # The loss output must not alias the input (custom-op rule), hence the copy.
    loss = losses.to(torch.float32, copy=True)
    return reference.select_sb(loss, no_rows, no_rows, history, meta, beta, floor, prime, fixed_prob)


def _resolve_backend(backend: str | None, device: torch.device) -> str:
    backend = backend or os.environ.get(BACKEND_ENV, "auto")
    _checks.check_backend(backend, device)
    return backend


def check_input(
    source: Tensor, targets: Tensor | None, state: SelectorState, backend: str | None, from_logits: bool
) -> str:
    """Check (logits, targets) or losses, and the state's device; return the resolved backend."""
    if from_logits:
        _checks.check_logits_targets(source, targets)
    else:
        _checks.check_losses(source)
    _checks.check_state(state, source.device, "logits" if from_logits else "losses")
    return _resolve_backend(backend, source.device)


def run_select(
    source: Tensor,
    targets: Tensor | None,
    state: SelectorState,
    beta: float,
    floor: float,
    prime: int,
    ignore_index: int,
    label_smoothing: float,
    fixed_prob: float,
    backend: str | None,
    from_logits: bool,
) -> Selection:
    """Check the input and run the select op on (logits, targets) or on losses (``targets`` unused)."""
    backend = check_input(source, targets, state, backend, from_logits)
    if from_logits:
        out = torch.ops.sbkernels.select_sb(
            source, targets, state.history, state.meta, float(beta), float(floor), prime, ignore_index,
            float(label_smoothing), float(fixed_prob), backend,
        )  # fmt: skip
    else:
        out = torch.ops.sbkernels.select_sb_losses(
            source, state.history, state.meta, float(beta), float(floor), prime, float(fixed_prob), backend
        )
    return Selection(*out, None)


def select(
    logits: Tensor,
    targets: Tensor,
    state: SelectorState,
    beta: float = 1.0,
    floor: float = 0.0,
    prime: int = 0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    *,
    backend: str | None = None,
    validate: bool = False,
) -> Selection:
    """Selective-Backprop selection (policy "sb") from logits, in one fused launch on CUDA.

    Computes per-row cross-entropy, ranks each loss against the history in ``state``, keeps row i with
    probability ``max(floor, pct_i ** beta)`` (always while fewer than ``prime`` losses were pushed) and
    pushes the valid losses into the history. Never synchronizes with the host.

    Args:
        logits: (N, C) float32 / bfloat16 / float16, unit stride along C.
        targets: (N,) int64 or int32 class indices; ``ignore_index`` rows are never selected.
        state: the :class:`SelectorState` on the same device; updated in place.
        beta: selectivity exponent (> 0); larger keeps fewer rows.
        floor: minimum selection probability, in [0, 1].
        prime: select everything while the history holds fewer than ``prime`` pushed losses.
        ignore_index: target value marking rows to skip.
        label_smoothing: as in ``F.cross_entropy``, in [0, 1).
        backend: "auto" (Triton on CUDA, reference on CPU), "triton" or "reference"; default from the
            SBKERNELS_BACKEND environment variable, else "auto".
        validate: call ``state.check()`` after the op (synchronizes) to raise on out-of-range targets.

    Returns:
        A :class:`Selection` (indices, count, loss, prob; weight is None).
    """
    _checks.check_sb_params(beta, floor, prime, label_smoothing)
    selection = run_select(
        logits, targets, state, beta, floor, prime, ignore_index, label_smoothing, -1.0, backend, from_logits=True
    )
    if validate:
        state.check()
    return selection


def select_losses(
    losses: Tensor,
    state: SelectorState,
    beta: float = 1.0,
    floor: float = 0.0,
    prime: int = 0,
    *,
    backend: str | None = None,
) -> Selection:
    """Policy "sb" on precomputed per-example losses (any loss: detection, regression, per-sequence LM).

    Same rule as :func:`select` with the loss given: non-finite losses are never selected nor pushed.
    """
    _checks.check_sb_params(beta, floor, prime)
    return run_select(losses, None, state, beta, floor, prime, -100, 0.0, -1.0, backend, from_logits=False)
