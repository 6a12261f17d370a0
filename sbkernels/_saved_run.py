"""The saved state of a :class:`~sbkernels.SelectiveBackprop`: its plain form and the checks that refuse, before
anything is restored, what no run could have saved (SPEC section 11)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .pool._batch_spec import BatchSpec
from .slots import MAX_COUNTER

#: Why a checkpoint of another kind of run is refused: by field, then by whether this run lacks it.
MISMATCHED_RUN = {
    "stale": {
        True: "the checkpoint was saved by a run with Stale-SB: pass the same stale=StaleSB(...) to resume it",
        False: "the checkpoint was saved without Stale-SB, which this run uses: its loss cache cannot be restored",
    },
    "coordinator": {
        True: "the checkpoint was saved under a process group (DDP), this run has none: resume it with the same "
        "world size",
        False: "the checkpoint was saved by one process, this run has a process group: resume it in one process",
    },
}


def plain_spec(spec: BatchSpec) -> dict[str, Any]:
    """The spec as plain data; the batch's mapping type is not saved (a checkpoint names no Python types)."""
    return {key: value for key, value in dataclasses.asdict(spec).items() if key != "mapping"}


def check_saved_run(state_dict: Any) -> None:
    """The plain fields of a saved :class:`SelectiveBackprop`: counters ints >= 0, a well-formed batch spec."""
    keys = {"policy", "pool", "step", "epoch", "counts", "spec", "stale", "coordinator"}
    if not isinstance(state_dict, dict) or not keys <= state_dict.keys():
        raise ValueError(f"corrupted SelectiveBackprop state: need a dict with {sorted(keys)}")
    counts = state_dict["counts"]
    if not isinstance(counts, dict) or set(counts) != {"observed", "scored", "backward"}:
        raise ValueError("corrupted SelectiveBackprop state: counts must hold observed, scored and backward")
    plain = [("step", state_dict["step"]), ("epoch", state_dict["epoch"]), *counts.items()]
    plain.append(("batch_in_epoch", state_dict.get("batch_in_epoch", 0)))
    for name, value in plain:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNTER:
            raise ValueError(f"corrupted SelectiveBackprop state: {name} must be an int in [0, 2**62], got {value!r}")
    for name in ("stale", "coordinator"):
        if state_dict[name] is not None and not isinstance(state_dict[name], dict):
            raise ValueError(f"corrupted SelectiveBackprop state: {name} must be None or a dict")
    spec = state_dict["spec"]
    rows = state_dict["pool"].get("rows") if isinstance(state_dict["pool"], dict) else None
    if spec is None:
        if rows is not None:
            raise ValueError("corrupted SelectiveBackprop state: the pool holds rows but there is no batch spec")
        return
    fields = {"keys", "size", "with_ids", "with_weight"}
    if not isinstance(spec, dict) or set(spec) != fields:
        raise ValueError(f"corrupted SelectiveBackprop state: spec must hold {sorted(fields)}")
    keys_ok = spec["keys"] is None or (
        isinstance(spec["keys"], (list, tuple))
        and all(isinstance(k, str) for k in spec["keys"])
        and len(set(spec["keys"])) == len(spec["keys"])  # a repeated name would overwrite a field
    )
    size_ok = isinstance(spec["size"], int) and spec["size"] >= 1
    if spec["keys"] is not None and keys_ok:
        size_ok = size_ok and spec["size"] == len(spec["keys"])
    if not (keys_ok and size_ok and isinstance(spec["with_ids"], bool) and isinstance(spec["with_weight"], bool)):
        raise ValueError(f"corrupted SelectiveBackprop state: malformed batch spec {spec!r:.120}")
    travelling = spec["size"] + spec["with_ids"] + spec["with_weight"]
    if rows is not None and len(rows) != travelling:
        raise ValueError(
            f"corrupted SelectiveBackprop state: the pool holds {len(rows)} tensors, the batch spec {travelling}"
        )
