"""Fuzz cases of saved state (SPEC section 11): every field of a checkpoint entry, tampered.

The entry is :class:`sbkernels.integrations._engine.SelectionEngine`'s: the Hugging Face state file and the
Lightning checkpoint entry are both exactly it, and it holds the ``SelectiveBackprop`` state of a dict batch
(a collator's fields re-padded by the pool, a weighted policy, sample ids). For every field, at every depth:
the field removed, its value replaced by one of another type, and for numbers and tensors values of the
right type that no run could have saved. Loading each must be refused with ValueError or TypeError (what
names the field); any other exception is reported as a normal return, i.e. as an unclear failure.

Also: every registered op with one tensor argument on ``meta`` and the rest on CPU (mixed devices), which
must be refused, not answered by the fake kernel.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch

import sbkernels
from sbkernels.integrations._engine import SelectionEngine

#: Fields that a run may legitimately save with any value of their type (the data in the pool's rows, the
#: counts of rows seen, the capacity), so a changed value of the right type proves nothing.
FREE_VALUES = ("pool.rows", "counts.", "capacity", "history.values")


def _engine(accumulate: int = 2) -> SelectionEngine:
    sb = sbkernels.SelectiveBackprop(3, sbkernels.Importance(k=4, history_size=8), pad_values={"input_ids": 0})
    return SelectionEngine(sb, accumulate)


def saved_entry() -> dict[str, Any]:
    """A real entry: two dict batches of different lengths observed, rows waiting in the pool, mid-pass."""
    engine = _engine()
    gen = torch.Generator().manual_seed(0)
    for width in (4, 6):
        ids = torch.randint(1, 9, (5, width), generator=gen)
        batch = {"input_ids": ids, "attention_mask": torch.ones(5, width, dtype=torch.int64), "labels": ids.clone()}
        engine.selective_backprop.observe(
            torch.randn(5, 9, generator=gen), torch.randint(0, 9, (5,), generator=gen), batch,
            sample_ids=torch.arange(5) + 5 * width,
        )  # fmt: skip
    engine.position.update(epoch=1, batches=2)
    engine.accumulated = 1
    return engine.state_dict()


def _variants(value: Any) -> Iterator[tuple[str, Any]]:
    """Values of a field that no run saves: another type, and bad values of its own type."""
    yield "type", 3 if isinstance(value, str) else "tampered"
    if isinstance(value, bool):
        yield "not_bool", 2
    elif isinstance(value, int):
        yield "negative", -1
        yield "beyond_int64", 2**70
        yield "bool", True
        yield "float", float(value) + 0.5
    elif isinstance(value, torch.Tensor):
        yield "dtype", value.to(torch.int32 if value.is_floating_point() else torch.float32)
        yield "extra_dim", value.unsqueeze(-1)
        if value.is_floating_point() and value.dim() == 1:
            yield "nan", torch.full_like(value, float("nan"))
        elif value.dtype == torch.int64 and value.dim() == 1:
            yield "negative", torch.full_like(value, -(2**40))
        if value.dim() >= 1 and value.shape[0] > 1:
            yield "short", value[:-1]
    elif isinstance(value, list) and value:
        yield "short", value[:-1]
        yield "longer", [*value, value[-1]]


def _fields(entry: Any, path: str = "") -> Iterator[tuple[str, Callable[[Any], None]]]:
    """``(name, tamper)`` for every field: ``tamper`` edits a deep copy of the entry in place."""
    if isinstance(entry, dict):
        for key, value in entry.items():
            here = f"{path}{key}"
            yield f"{here}.missing", _setter(path, key, _DELETE)
            for what, bad in _variants(value):
                yield f"{here}.{what}", _setter(path, key, bad)
            if isinstance(value, (dict, list)):
                yield from _fields(value, f"{here}.")
    elif isinstance(entry, list):
        for i, value in enumerate(entry):
            for what, bad in _variants(value):
                yield f"{path}{i}.{what}", _setter(path, i, bad)


_DELETE = object()


def _setter(path: str, key: Any, bad: Any) -> Callable[[Any], None]:
    def tamper(entry: Any) -> None:
        target = entry
        for part in filter(None, path.split(".")):
            target = target[int(part) if isinstance(target, list) else part]
        if bad is _DELETE:
            del target[key]
        else:
            target[key] = bad

    return tamper


def _refused_clearly(entry: dict[str, Any]) -> object:
    try:
        _engine().load_state_dict(entry, where="fuzzed entry")
    except (ValueError, TypeError):
        raise
    except Exception as error:  # not a clear refusal: reported as a failure ("returned")
        return f"unclear {type(error).__name__}: {error}"
    return None


def _optional(name: str) -> bool:
    """A field whose absence a current run may still load: written before it existed (a default applies)."""
    return name in {"accumulated.missing", "gradients.missing", "selective_backprop.batch_in_epoch.missing",
                    "selective_backprop.pool.rows_out.missing"}  # fmt: skip


def checkpoint_cases() -> dict[str, Callable[[], object]]:
    entry = saved_entry()
    cases: dict[str, Callable[[], object]] = {}
    for name, tamper in _fields(entry):
        free = any(part in name for part in FREE_VALUES) and not name.endswith((".type", ".missing"))
        if free or _optional(name):
            continue

        def case(tamper: Callable[[Any], None] = tamper) -> object:
            tampered = copy.deepcopy(entry)
            tamper(tampered)
            return _refused_clearly(tampered)

        cases[f"engine_entry.{name}"] = case
    return cases


# --- mixed devices --------------------------------------------------------------------------------------------------


def mixed_device_cases(calls: dict[str, Callable[[], object]]) -> dict[str, Callable[[], object]]:
    """From one valid-shaped call per op (a fuzz case with nothing broken): the same call with each tensor
    argument in turn moved to ``meta``."""
    cases: dict[str, Callable[[], object]] = {}
    for op, make_args in calls.items():
        args = make_args()
        for name, value in args.items():
            tensors = value if isinstance(value, list) else [value]
            for i, t in enumerate(tensors):
                if not isinstance(t, torch.Tensor):
                    continue
                label = f"{name}[{i}]" if isinstance(value, list) else name

                def case(op: str = op, name: str = name, i: int = i, make_args=make_args) -> object:
                    moved = make_args()
                    if isinstance(moved[name], list):
                        moved[name][i] = moved[name][i].to("meta")
                    else:
                        moved[name] = moved[name].to("meta")
                    return getattr(torch.ops.sbkernels, op.split(".")[0])(*moved.values())

                cases[f"{op.split('.')[0]}.mixed_devices_{op.split('.')[-1]}_{label}_on_meta"] = case
    return cases
