"""The policy object every selection rule is: its parameters, its state, one call per batch."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import _checks as checks
from .. import ops
from ..lm import autocast_head
from ..selection import Selection
from ..state import SelectorState, check_saved_state


class Policy:
    """A selection rule with its parameters, callable on ``(logits, targets)`` or on ``(losses,)``.

    Language models (SPEC section 9): ``policy(logits, labels)`` with (B, T, V) logits and (B, T) labels
    selects whole sequences, scored by their per-sequence loss (``shift`` and ``reduction`` as in
    :func:`sbkernels.sequence_losses`); :meth:`select_rows` selects from given per-row losses and flags.

    The policy owns its :class:`SelectorState` (history, Philox seed and step, error counters). It is made
    on the device of the first batch, or passed in as ``state`` (e.g. to share one state between policies).

    Args (every policy):
        history_size: R of the state's loss history (used by the policies that rank against it).
        seed: Philox seed: the same batches and seed select the same rows, on CPU and GPU.
        ignore_index: target value marking rows that are never selected.
        backend: "auto", "native", "triton" or "reference" (see :mod:`sbkernels.ops.backends`).
        state: an existing state to use instead of making one.
        process_group: a ``torch.distributed`` group for the state this policy makes (SPEC section 8).
        shift, reduction: how (B, T, V) logits become per-sequence losses (the causal shift; "mean" or "sum").
    """

    name: ClassVar[str]
    weighted: ClassVar[bool] = False  # whether Selection.weight is returned (per-row loss weights)
    uses_features: ClassVar[bool] = False  # whether select() reads penultimate features (GradMatch)

    def __init__(
        self,
        *,
        history_size: int = 1024,
        seed: int = 0,
        ignore_index: int = -100,
        backend: str | None = None,
        state: SelectorState | None = None,
        process_group=None,
        shift: bool = True,
        reduction: str = "mean",
    ) -> None:
        checks.check_sequence_options(shift, reduction, 0.0)
        checks.check_ignore_index(ignore_index)
        self.history_size, self.seed = history_size, seed
        self.ignore_index, self.backend = ignore_index, backend
        self.shift, self.reduction = shift, reduction
        self.state = state
        self.process_group = process_group if state is None else state.process_group

    def __call__(
        self, source: Tensor, targets: Tensor | None = None, *, features: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> Selection:  # fmt: skip
        """Select rows of one batch: ``source`` is (N, C) logits with (N,) ``targets``, (N,) losses (``valid``:
        an optional (N,) bool mask of the rows that may be selected), or (B, T, V) LM logits with (B, T)
        labels (whole sequences; ``valid`` (B,) masks sequences); ``features`` (N, ...) penultimate activations
        for ``GradMatch``."""
        if features is not None and not self.uses_features:
            raise ValueError(f"{type(self).__name__} does not use features; pass them only to GradMatch")
        state = self.state_on(source.device)
        if isinstance(source, Tensor) and source.dim() == 3:
            if targets is None:
                raise ValueError("(B, T, V) language-model logits need their (B, T) labels")
            losses, sequence_flags = self.sequence_losses(source, targets)
            if valid is not None:  # sequences left out by the caller, on top of those with no valid token
                sequence_flags = checks.with_valid(sequence_flags, valid, "sequences")
            return self.select_rows(losses, sequence_flags, state)
        flags = checks.valid_flags(valid, source, targets)
        if flags is not None:
            checks.check_source(source, None, state)
            return self.select_rows(source, flags, state)
        return self.select(source, targets, state, features=features)

    def sequence_losses(
        self, logits: Tensor, labels: Tensor, softcap: float | None = None, logit_scale: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """``(loss, flags)`` per sequence of LM logits, as this policy scores them (SPEC section 9); a capped or
        scaled head's ``softcap`` and ``logit_scale`` as in :func:`sbkernels.sequence_losses`."""
        checks.check_sequence_logits(logits, labels)
        checks.check_head_transform(softcap, logit_scale)
        return ops.sequence_losses(
            logits=logits, labels=labels, shift=self.shift, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=getattr(self, "label_smoothing", 0.0), softcap=softcap, logit_scale=logit_scale,
            backend=ops.resolve(self.backend, logits.device),
        )  # fmt: skip

    def linear_sequence_losses(
        self, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, softcap: float | None = None,
        logit_scale: float = 1.0,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """As :meth:`sequence_losses`, from the last hidden states and the LM head (SPEC section 9); under
        autocast as :func:`sbkernels.lm.autocast_head` casts them."""
        hidden, weight, bias = autocast_head(hidden, weight, bias)
        checks.check_sequence_hidden(hidden, weight, bias, labels)
        checks.check_head_transform(softcap, logit_scale)
        return ops.linear_sequence_losses(
            hidden=hidden, weight=weight, bias=bias, labels=labels, shift=self.shift, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=getattr(self, "label_smoothing", 0.0), softcap=softcap,
            logit_scale=logit_scale,
            backend=ops.resolve(self.backend, hidden.device),
        )  # fmt: skip

    def select_rows(self, losses: Tensor, flags: Tensor, state: SelectorState) -> Selection:
        """Select from per-row losses and their flags (:func:`sbkernels._rows.row_flags`: ignored rows,
        e.g. sequences with no valid token, and bad ones are never selected)."""
        raise ValueError(
            f"{type(self).__name__} scores rows from their logits; for per-row or per-sequence losses use SB, "
            "Uniform or Keep"
        )

    def select(
        self, source: Tensor, targets: Tensor | None, state: SelectorState, *, features: Tensor | None = None
    ) -> Selection:
        raise NotImplementedError

    def state_on(self, device: torch.device) -> SelectorState:
        """The policy's state, made on ``device`` at the first call."""
        if self.state is None:
            self.state = SelectorState(
                self.history_size, seed=self.seed, device=device, process_group=self.process_group
            )
        return self.state

    def state_dict(self) -> dict[str, Any]:
        return {"state": None if self.state is None else self.state.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state (made on the saved tensors' device if the policy has none yet). Refuses what no
        run could have produced before making or changing any state."""
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError(f"corrupted {type(self).__name__} state: need a dict with 'state'")
        saved = state_dict["state"]
        if saved is not None:
            check_saved_state(saved, self.state.history_size if self.state is not None else self.history_size)
            self.state_on(saved["history"].device).load_state_dict(saved)

    def _parameters(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self._parameters().items())
        return f"{type(self).__name__}({params})"
