"""SelectionEngine: what the Hugging Face and Lightning integrations share, with no framework imported.

Both frameworks hand a loader batch to the engine and train on the backward batches it gives back; both save
the same checkpoint entry. The engine owns:

- the :class:`~sbkernels.SelectiveBackprop` (selection state, pool, schedule);
- the position in the data: ``epoch`` (passes over the training set) and ``batches`` (loader batches of this
  pass already scored), so a resumed run skips exactly what was scored before the checkpoint;
- ``accumulated``: backward batches whose gradients wait for the next optimizer step (Lightning's manual
  accumulation; the Hugging Face Trainer accumulates itself and keeps 0).

:meth:`state_dict` / :meth:`load_state_dict` are the checkpoint entry, checked field by field before anything
changes (SPEC section 11): a tampered or foreign entry is refused with what is wrong and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..pool._batch_spec import BackwardBatch
from ..slots import MAX_COUNTER
from ..trainer import SelectiveBackprop

#: The fields of a saved engine (the Hugging Face state file and the Lightning checkpoint entry alike).
ENTRY_KEYS = frozenset({"selective_backprop", "position", "accumulated", "gradients"})


class SelectionEngine:
    """Selection for one framework integration: scoring hook in, backward batches out, one checkpoint entry.

    Args:
        selective_backprop: the :class:`~sbkernels.SelectiveBackprop` (its ``batch_size`` is the backward batch).
        accumulate: backward batches per optimizer step when the integration accumulates itself (Lightning).
    """

    def __init__(self, selective_backprop: SelectiveBackprop, accumulate: int = 1) -> None:
        if not isinstance(selective_backprop, SelectiveBackprop):
            raise TypeError(f"selective_backprop must be a sbkernels.SelectiveBackprop, got {selective_backprop!r}")
        self.selective_backprop = selective_backprop
        self.accumulate = accumulate
        self.position = {"epoch": 0, "batches": 0}  # passes over the data, loader batches scored in this one
        self.accumulated = 0
        self.filler: Any = None  # one row of a loader batch: see remember_filler
        #: the accumulated gradients of the ``accumulated`` backward batches, saved with them (a framework's
        #: checkpoint holds no gradients) and restored by the integration before its next backward pass
        self.gradients: list[Tensor | None] | None = None

    def passes(
        self, loader: Iterable[Any], score: Callable[[Any], None], set_epoch: Callable[[int], None],
        until: int | None = None,
    ) -> Iterator[BackwardBatch]:  # fmt: skip
        """The backward batches of pass after pass over ``loader`` (endless, or until the position reaches
        pass ``until``): each loader batch is scored by ``score`` (which calls ``observe``), every completed
        backward batch is yielded, and each pass ends with a flush. A resumed run first skips the batches
        its position says were scored."""
        sb = self.selective_backprop
        while until is None or self.position["epoch"] < until:
            position = self.position
            sb.start_epoch(position["epoch"])
            set_epoch(position["epoch"])
            batches = iter(loader)
            self._skip_scored(batches)
            for batch in batches:
                score(batch)
                position["batches"] += 1
                yield from sb.ready_batches()
            yield from sb.flush()
            position["epoch"], position["batches"] = position["epoch"] + 1, 0

    def _skip_scored(self, batches: Iterator[Any]) -> None:
        wanted = self.position["batches"]
        for skipped in range(wanted):
            if next(batches, None) is None:
                raise ValueError(
                    f"the checkpoint's position is loader batch {wanted} of pass {self.position['epoch']}, but "
                    f"this training loader has only {skipped} batches: resume with the dataset, batch size and "
                    "world size the checkpoint was saved with"
                )

    # ---------------------------------------------------------------------------------------------- weights
    def step_weights(self, ready: BackwardBatch) -> Tensor | None:
        """Per-row weights ``w`` of a backward batch such that ``(w * per_row_loss).sum()`` is the loss to
        backpropagate, or None when it is the plain mean (no weights, one process).

        Under a process group the batch's weights already are for a sum (DDP averages the ranks' gradients,
        SPEC section 8); one process's policy weights (``Importance``, ``GradMatch``) are for a mean, so
        they are divided by the batch's rows here."""
        if self.selective_backprop.coordinator is not None or ready.weight is None:
            return ready.weight
        return ready.weight / ready.weight.shape[0]

    def remember_filler(self, batch: Any) -> None:
        """Keep one row of a loader batch (under a process group): a rank whose share of a final step is
        empty trains on it with weight 0, so that every rank runs the same forward and backward passes. A
        dict batch's ``labels`` are all ignored in it, so a framework's own loss counts none of its tokens."""
        if self.selective_backprop.coordinator is not None and self.filler is None:
            self.filler = _first_row(batch)
            if isinstance(self.filler, dict) and isinstance(self.filler.get("labels"), Tensor):
                self.filler["labels"].fill_(self.selective_backprop.policy.ignore_index)

    def nonempty(self, ready: BackwardBatch, weights: Tensor | None) -> tuple[Any, Tensor | None]:
        """``(data, weights)`` to train on: a batch of 0 rows (a rank's empty share of a final step) becomes
        the filler row with weight 0, so no model is handed an empty batch."""
        rows = weights.shape[0] if weights is not None else None
        if rows != 0:
            return ready.data, weights
        if self.filler is None:
            raise RuntimeError("an empty backward batch before any loader batch was seen: call remember_filler")
        assert weights is not None
        return self.filler, weights.new_zeros(1)

    # ------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entry (synchronizes: the pool's rows are read back)."""
        return {
            "selective_backprop": self.selective_backprop.state_dict(),
            "position": dict(self.position),
            "accumulated": self.accumulated,
            "gradients": self.gradients if self.accumulated else None,
        }

    def gathered_state_dict(self) -> dict[str, Any]:
        """The checkpoint entry of every rank (``{"ranks": [...]}``, in rank order) under a process group,
        for frameworks that write the checkpoint from one rank; :meth:`state_dict` in one process. Every
        rank must call it (a collective)."""
        entry = self.state_dict()
        coordinator = self.selective_backprop.coordinator
        if coordinator is None:
            return entry
        ranks: list[Any] = [None] * coordinator.world
        dist.all_gather_object(ranks, entry, group=coordinator.group)
        return {"ranks": ranks}

    def load_state_dict(self, saved: Any, device: torch.device | None = None, where: str = "checkpoint") -> None:
        """Restore a checkpoint entry (its tensors moved to ``device``); refuses, naming ``where``, what no run
        could have saved, before anything changes. A gathered entry (:meth:`gathered_state_dict`) restores
        this rank's part and needs the world size it was saved with."""
        saved = self._this_ranks(saved, where)
        position, accumulated = check_entry(saved, self.accumulate, where)
        state = saved["selective_backprop"]
        self.selective_backprop.load_state_dict(_to_device(state, device) if device is not None else state)
        self.position, self.accumulated = dict(position), accumulated
        self.gradients = saved.get("gradients")

    def _this_ranks(self, saved: Any, where: str) -> Any:
        if not (isinstance(saved, dict) and set(saved) == {"ranks"}):
            return saved
        ranks, coordinator = saved["ranks"], self.selective_backprop.coordinator
        if not isinstance(ranks, list) or not ranks:
            raise ValueError(f"corrupted {where}: ranks must be a list of every rank's entry")
        if coordinator is None or coordinator.world != len(ranks):
            world = 1 if coordinator is None else coordinator.world
            raise ValueError(
                f"{where} holds the selection state of {len(ranks)} ranks, this run has {world}: each rank's "
                "pool holds its own rows, so resume with the world size the checkpoint was saved with"
            )
        return ranks[dist.get_rank(coordinator.group)]


def check_entry(saved: Any, accumulate: int, where: str) -> tuple[dict[str, int], int]:
    """``(position, accumulated)`` of a saved entry, or ValueError naming the field and the fix. The
    ``selective_backprop`` field is checked by ``SelectiveBackprop.load_state_dict``."""
    if not isinstance(saved, dict) or not {"selective_backprop", "position"} <= saved.keys() or not set(saved) <= (
        ENTRY_KEYS
    ):  # fmt: skip
        raise ValueError(f"corrupted {where}: need a dict with {sorted(ENTRY_KEYS)}: was it saved by sbkernels?")
    position = saved["position"]
    if not isinstance(position, dict) or set(position) != {"epoch", "batches"} or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNTER for v in position.values()
    ):  # fmt: skip
        raise ValueError(
            f"corrupted {where}: position must hold epoch and batches as ints in [0, 2**62], got {position!r:.80}"
        )
    accumulated = saved.get("accumulated", 0)  # state files written before the field existed hold none
    if isinstance(accumulated, bool) or not isinstance(accumulated, int) or not 0 <= accumulated < accumulate:
        raise ValueError(
            f"corrupted {where}: accumulated={accumulated!r}, but an optimizer step is taken every {accumulate} "
            f"backward batch(es) (accumulate_grad_batches={accumulate}), so at most {accumulate - 1} can wait: "
            "resume with the accumulate_grad_batches the checkpoint was saved with"
        )
    gradients = saved.get("gradients")
    if gradients is not None and (
        not isinstance(gradients, list) or not all(g is None or isinstance(g, Tensor) for g in gradients)
    ):
        raise ValueError(f"corrupted {where}: gradients must be None or a list of tensors (or None) per parameter")
    if gradients is not None and not accumulated:
        raise ValueError(f"corrupted {where}: gradients are saved only while backward batches wait for a step")
    return position, accumulated


def _first_row(batch: Any) -> Any:
    """Row 0 of a batch of tensors (a mapping, a tuple or a list of them), as owned copies; a mapping
    becomes a dict."""
    if isinstance(batch, Tensor):
        return batch[:1].clone()
    if isinstance(batch, Mapping):
        return {key: _first_row(value) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_first_row(value) for value in batch)
    return batch


def sequence_cross_entropy(logits: Tensor, labels: Tensor, shift: bool, ignore_index: int) -> Tensor:
    """(B,) mean cross-entropy of each sequence's valid tokens, with autograd (the training loss of weighted
    sequences; a sequence with no valid token gives 0)."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    tokens = F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=ignore_index, reduction="none")
    valid = (labels != ignore_index).sum(dim=1)
    return tokens.sum(dim=1) / valid.clamp_min(1)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    return value
