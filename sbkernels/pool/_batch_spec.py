"""BatchSpec: what one observed batch looks like, recorded at the first ``observe`` and checked after.

The pool stores a flat list of tensors. The spec turns an observed batch (a tuple of tensors, or one dict
of them) plus the sample ids and the policy's weights into that list, and a pooled list back into a
:class:`BackwardBatch` with the same structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor


class BackwardBatch(NamedTuple):
    """One backward batch: the observed tensors (tuple, or dict when a dict was observed), the sample ids
    when they were given, and the per-row loss weights for weighted policies ("importance", "gradmatch")."""

    data: tuple[Tensor, ...] | dict[str, Tensor]
    sample_ids: Tensor | None
    weight: Tensor | None


@dataclass(frozen=True)
class BatchSpec:
    keys: tuple[str, ...] | None  # a dict batch: the fields that travel; None: a tuple of tensors
    size: int  # tensors of the batch that travel
    with_ids: bool
    with_weight: bool

    @classmethod
    def record(
        cls, batch: tuple[Any, ...], fields: tuple[str, ...] | None, sample_ids: Tensor | None, weighted: bool
    ) -> BatchSpec:
        if len(batch) == 1 and isinstance(batch[0], Mapping):
            values = batch[0]
            tensors = [v for v in values.values() if isinstance(v, Tensor) and v.dim() > 0]
            if not tensors:
                raise ValueError("observe got a dict with no tensors to train on")
            n = tensors[0].shape[0]
            keys = fields or tuple(
                key for key, v in values.items() if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n
            )
            return cls(tuple(keys), len(keys), sample_ids is not None, weighted)
        if not batch or not all(isinstance(t, Tensor) for t in batch):
            raise ValueError("observe needs the batch tensors to train on (tensors, or one dict of tensors)")
        return cls(None, len(batch), sample_ids is not None, weighted)

    def tensors(self, batch: tuple[Any, ...]) -> list[Tensor]:
        """The tensors that travel, in the recorded order; raises if the batch's structure changed."""
        if self.keys is not None:
            if len(batch) != 1 or not isinstance(batch[0], Mapping):
                raise ValueError("observe was first given a dict batch: pass one dict every time")
            missing = [key for key in self.keys if key not in batch[0]]
            if missing:
                raise ValueError(f"batch dict lacks the fields {missing} that travel to the backward pass")
            return [batch[0][key] for key in self.keys]
        if len(batch) != self.size or not all(isinstance(t, Tensor) for t in batch):
            raise ValueError(f"observe was first given {self.size} batch tensors: pass {self.size} tensors every time")
        return list(batch)

    def flatten(self, batch: tuple[Any, ...], sample_ids: Tensor | None, weight: Tensor | None) -> list[Tensor]:
        tensors = self.tensors(batch)
        if self.with_ids != (sample_ids is not None):
            state = "with" if self.with_ids else "without"
            raise ValueError(f"observe was first called {state} sample_ids: pass sample_ids the same way every time")
        if sample_ids is not None:
            tensors.append(sample_ids)
        if self.with_weight:
            if weight is None:
                raise ValueError("a weighted policy's batch needs its per-row weights")
            tensors.append(weight)
        return tensors

    def unflatten(self, rows: tuple[Tensor, ...]) -> BackwardBatch:
        fields = list(rows)
        weight = fields.pop() if self.with_weight else None
        ids = fields.pop() if self.with_ids else None
        data = dict(zip(self.keys, fields, strict=True)) if self.keys is not None else tuple(fields)
        return BackwardBatch(data, ids, weight)
