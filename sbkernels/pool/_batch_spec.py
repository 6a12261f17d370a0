"""BatchSpec: what one observed batch looks like, recorded at the first ``observe`` and checked after.

The pool stores a flat list of tensors. The spec turns an observed batch (a tuple of tensors, or one dict
of them, e.g. a Hugging Face collator's ``BatchEncoding``) plus the sample ids and the policy's weights into
that list, and a pooled list back into a :class:`BackwardBatch` with the same structure (the same mapping
type). Every field travels by name: a field that is not per row is refused with its name, never dropped.

Padding (SPEC section 9): batches from a collator that pads each batch to its own longest sequence differ
in dim 1. A field with a pad value is re-padded by the pool, and each backward batch is as wide as the
widest observed batch its rows came from (never the widest the pool ever held); by default
``labels`` pad with -100 and ``attention_mask`` with 0 (``PAD_DEFAULTS``); ``input_ids`` needs the
tokenizer's pad id, given by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

#: Pad values of the fields Hugging Face batches carry (token_type_ids as tokenizers pad them, with
#: pad_token_type_id 0); others (input_ids: the tokenizer's pad id) are given by the caller.
PAD_DEFAULTS: dict[str, int | float] = {"labels": -100, "attention_mask": 0, "token_type_ids": 0}

PadValues = Mapping[str, int | float] | Sequence[int | float | None] | None


class BackwardBatch(NamedTuple):
    """One backward batch: the observed tensors (tuple, or a mapping of the observed type when a dict was
    observed), the sample ids when they were given, and the per-row loss weights for weighted policies
    ("importance", "gradmatch") and process groups."""

    data: tuple[Tensor, ...] | Mapping[str, Tensor]
    sample_ids: Tensor | None
    weight: Tensor | None


@dataclass(frozen=True)
class BatchSpec:
    keys: tuple[str, ...] | None  # a dict batch: the fields that travel; None: a tuple of tensors
    size: int  # tensors of the batch that travel
    with_ids: bool
    with_weight: bool
    mapping: type | None = None  # the observed mapping's type (dict, BatchEncoding, ...)

    @classmethod
    def record(
        cls, batch: tuple[Any, ...], fields: tuple[str, ...] | None, sample_ids: Tensor | None, weighted: bool
    ) -> BatchSpec:
        if len(batch) == 1 and isinstance(batch[0], Mapping):
            keys = _per_row_keys(batch[0], fields)
            return cls(keys, len(keys), sample_ids is not None, weighted, type(batch[0]))
        if not batch or not all(isinstance(t, Tensor) and t.dim() > 0 for t in batch):
            raise ValueError("observe needs the batch tensors to train on (tensors, or one dict of tensors)")
        return cls(None, len(batch), sample_ids is not None, weighted)

    @property
    def names(self) -> list[str]:
        """A name per pooled tensor, for error messages: the dict keys, or ``batch[i]``."""
        names = list(self.keys) if self.keys is not None else [f"batch[{i}]" for i in range(self.size)]
        return names + ["sample_ids"] * self.with_ids + ["weight"] * self.with_weight

    def pad_values(self, given: PadValues) -> list[int | float | None]:
        """The pad value of each pooled tensor (None: its length may not change), from ``given`` (by key for
        dict batches, by position for tuples) and :data:`PAD_DEFAULTS`."""
        if self.keys is not None:
            if given is not None and not isinstance(given, Mapping):
                raise ValueError("pad_values must map field names to pad values for dict batches")
            known = {**PAD_DEFAULTS, **(given or {})}
            unknown = sorted(set(given or {}) - set(self.keys))
            if unknown:
                raise ValueError(f"pad_values names fields {unknown} that the batch does not carry {self.keys}")
            pads: list[int | float | None] = [known.get(key) for key in self.keys]
        else:
            if isinstance(given, Mapping):
                raise ValueError("pad_values must be a sequence (one per batch tensor) for tuple batches")
            pads = list(given) if given is not None else [None] * self.size
            if len(pads) != self.size:
                raise ValueError(f"pad_values has {len(pads)} entries for {self.size} batch tensors")
        return pads + [None] * (self.with_ids + self.with_weight)

    def tensors(self, batch: tuple[Any, ...], every_field: bool = False) -> list[Tensor]:
        """The tensors that travel, in the recorded order; raises if the batch's structure changed.

        ``every_field``: the recorded keys are all the first batch had (no ``fields`` were named), so a
        field that appears later is refused by name instead of being left out of the backward batches."""
        if self.keys is not None:
            if len(batch) != 1 or not isinstance(batch[0], Mapping):
                raise ValueError("observe was first given a dict batch: pass one dict every time")
            missing = [key for key in self.keys if key not in batch[0]]
            if missing:
                raise ValueError(f"batch dict lacks the fields {missing} that travel to the backward pass")
            if every_field and len(batch[0]) != len(self.keys):
                new = [key for key in batch[0] if key not in self.keys]
                raise ValueError(
                    f"batch dict has fields {new} that the first batch did not have, so they would be left out of "
                    f"the backward batches (which carry {list(self.keys)}): give every batch the same fields, or "
                    "name the fields to carry with SelectiveBackprop(..., fields=(...))"
                )
            return [batch[0][key] for key in self.keys]
        if len(batch) != self.size or not all(isinstance(t, Tensor) for t in batch):
            raise ValueError(f"observe was first given {self.size} batch tensors: pass {self.size} tensors every time")
        return list(batch)

    def flatten(self, tensors: list[Tensor], sample_ids: Tensor | None, weight: Tensor | None) -> list[Tensor]:
        """The pooled tensors: the batch's (from :meth:`tensors`), then the sample ids and the weights."""
        tensors = list(tensors)
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
        if self.keys is None:
            return BackwardBatch(tuple(fields), ids, weight)
        return BackwardBatch(_as_mapping(self.mapping, dict(zip(self.keys, fields, strict=True))), ids, weight)


def _per_row_keys(values: Mapping[str, Any], fields: tuple[str, ...] | None) -> tuple[str, ...]:
    """The fields that travel: every field (or the ones named in ``fields``), each a tensor with one entry per
    row; anything else is refused by name (never silently dropped)."""
    tensors = [v for v in values.values() if isinstance(v, Tensor) and v.dim() > 0]
    if not tensors:
        raise ValueError("observe got a dict with no tensors to train on")
    keys = tuple(fields) if fields is not None else tuple(values)
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"fields names {repeated} more than once: name each field to carry once")
    n = tensors[0].shape[0]
    for key in keys:
        if key not in values:
            raise ValueError(f"fields names {key!r}, which the batch does not have (it has {list(values)})")
        value = values[key]
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != n:
            what = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"batch field {key!r} ({what}) is not per row (leading dim {n}), so the pool cannot carry it to "
                "the backward batch: leave it out of the batch (e.g. position_ids, which the model rebuilds), or "
                "name the fields to carry with SelectiveBackprop(..., fields=(...))"
            )
    return keys


def _as_mapping(mapping: type | None, data: dict[str, Tensor]) -> Mapping[str, Tensor]:
    """``data`` as the observed mapping type (a ``BatchEncoding`` stays one), else a dict."""
    if mapping is None or mapping is dict:
        return data
    try:
        return mapping(data)
    except TypeError:  # a mapping type that cannot be built from a dict
        return data
