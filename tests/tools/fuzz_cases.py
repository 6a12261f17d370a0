"""Malformed calls of every registered op (``torch.ops.sbkernels.*``), one function per case, for the fuzz test.

Each case builds valid arguments, breaks one of them and calls the op directly, past the public API's own
checks. SPEC section 11: every case must end in a Python exception, never a signal, a hang or a normal
return. ``CASES`` maps ``"<op>.<what is wrong>"`` to the case (with the mixed-device and tampered-checkpoint
cases of :mod:`tests.tools.fuzz_checkpoints`); ``CONTROLS`` are the harness's own negative
controls (a segfault, a hang, a normal return), which it must report as failures.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

import torch

import sbkernels  # noqa: F401  (registers the ops)
from sbkernels.slots import CURSOR_SIZE, META_PUSHED, META_SIZE, META_STEP
from tests.tools.fuzz_checkpoints import checkpoint_cases, mixed_device_cases

ops = torch.ops.sbkernels
N, C, R = 7, 5, 4
B, T, H = 3, 6, 8  # language-model batches: sequences, tokens, hidden width (V = C)


def _logits() -> torch.Tensor:
    return torch.randn(N, C)


def _targets(n: int = N) -> torch.Tensor:
    return torch.randint(0, C, (n,))


def _labels(batch: int = B, length: int = T) -> torch.Tensor:
    return torch.randint(0, C, (batch, length))


def _tile_stats_cpu(**changes) -> Callable[[], object]:
    def call():
        args = dict(logits=_logits(), labels=_targets(), column_offset=0, logit_sums=True)
        args.update(changes)
        return ops.tile_stats_cpu(*args.values())

    return call


def _token_losses_cpu(**changes) -> Callable[[], object]:
    def call():
        args = dict(logits=torch.randn(B, T, C), labels=_labels(), shift=True, ignore_index=-100,
                    label_smoothing=0.0)  # fmt: skip
        args.update(changes)
        return ops.token_losses_cpu(*args.values())

    return call


def _meta(**slots: int) -> torch.Tensor:
    meta = torch.zeros(META_SIZE, dtype=torch.int64)
    for slot, value in slots.items():
        meta[{"pushed": META_PUSHED, "step": META_STEP}[slot]] = value
    return meta


def _sb_args(**changes) -> dict:
    args = dict(
        logits=_logits(), targets=_targets(), losses=None, flags=None, history=torch.rand(R), meta=_meta(pushed=9),
        beta=1.0, floor=0.0, prime=0, ignore_index=-100, label_smoothing=0.0, fixed_prob=-1.0, beta_int=1,
    )  # fmt: skip
    args.update(changes)
    return args


def _select_sb_cpu(**changes) -> Callable[[], object]:
    return lambda: ops.select_sb_cpu(*_sb_args(**changes).values())


def _row_stats_cpu(**changes) -> Callable[[], object]:
    def call():
        args = dict(logits=_logits(), targets=_targets(), losses=None, meta=_meta(), ignore_index=-100,
                    label_smoothing=0.0, row_offset=0)  # fmt: skip
        args.update(changes)
        return ops.row_stats_cpu(*args.values())

    return call


def _sample_rows_cpu(policy: str = "keep", **changes) -> Callable[[], object]:
    def call():
        args = dict(logits=_logits(), targets=_targets(), losses=None, meta=_meta(), policy=policy, param=0.5, k=3,
                    ignore_index=-100, row_offset=0)  # fmt: skip
        args.update(changes)
        return ops.sample_rows_cpu(*args.values())

    return call


def _gather_rows(**changes) -> Callable[[], object]:
    def call():
        args = dict(sources=[torch.randn(N, 3)], indices=torch.arange(N), count=torch.tensor(N, dtype=torch.int32),
                    outputs=[torch.empty(10, 3)], cursor=torch.zeros(CURSOR_SIZE, dtype=torch.int64))  # fmt: skip
        args.update(changes)
        return ops.gather_rows(*args.values())

    return call


def _policy_op(name: str, **changes) -> Callable[[], object]:
    """The registered Python op ``name`` with the arguments its public function would pass, changed."""

    def call():
        base = {
            "select_sb": dict(logits=_logits(), targets=_targets(), losses=None, flags=None, history=torch.rand(R),
                              meta=_meta(), beta=1.0, floor=0.0, prime=0, ignore_index=-100, label_smoothing=0.0,
                              backend="native"),
            "uniform": dict(logits=_logits(), targets=_targets(), losses=None, flags=None, history=torch.rand(R),
                            meta=_meta(), rate=-1.0, k=3, row_offset=0, ignore_index=-100, backend="native"),
            "keep": dict(logits=_logits(), targets=_targets(), losses=None, flags=None, meta=_meta(), keep=0.5,
                         row_offset=0, ignore_index=-100, backend="native"),
            "importance": dict(logits=_logits(), targets=_targets(), meta=_meta(), k=3, row_offset=0, ignore_index=-100,
                               backend="native"),
            "gradmatch": dict(logits=_logits(), targets=_targets(), features=None, meta=_meta(), k=3, steps=10,
                              ignore_index=-100, backend="native"),
            "row_losses": dict(logits=_logits(), targets=_targets(), losses=None, ignore_index=-100,
                               label_smoothing=0.0, backend="native"),
            "sequence_losses": dict(logits=torch.randn(B, T, C), labels=_labels(), shift=True, ignore_index=-100,
                                    reduction="mean", label_smoothing=0.0, softcap=0.0, logit_scale=1.0,
                                    backend="native"),
            "linear_sequence_losses": dict(hidden=torch.randn(B, T, H), weight=torch.randn(C, H), bias=None,
                                           labels=_labels(), shift=True, ignore_index=-100, reduction="mean",
                                           label_smoothing=0.0, softcap=0.0, logit_scale=1.0, tile_bytes=80,
                                           backend="native"),
        }[name]  # fmt: skip
        base.update(changes)
        return getattr(ops, name)(*base.values())

    return call


CASES: dict[str, Callable[[], object]] = {
    # select_sb_cpu: presence, shapes, dtypes, strides, the state's tensors and values, every scalar.
    "select_sb_cpu.targets_none": _select_sb_cpu(targets=None),
    "select_sb_cpu.no_source": _select_sb_cpu(logits=None),
    "select_sb_cpu.logits_and_losses": _select_sb_cpu(losses=torch.rand(N)),
    "select_sb_cpu.targets_short": _select_sb_cpu(targets=_targets(N - 3)),
    "select_sb_cpu.targets_2d": _select_sb_cpu(targets=torch.zeros(N, 1, dtype=torch.int64)),
    "select_sb_cpu.targets_float": _select_sb_cpu(targets=torch.zeros(N)),
    "select_sb_cpu.logits_3d": _select_sb_cpu(logits=torch.randn(N, C, 2)),
    "select_sb_cpu.logits_int": _select_sb_cpu(logits=torch.zeros(N, C, dtype=torch.int32)),
    "select_sb_cpu.logits_column_stride": _select_sb_cpu(logits=torch.randn(C, N).t()),
    "select_sb_cpu.losses_2d": _select_sb_cpu(logits=None, targets=None, losses=torch.rand(N, 2)),
    "select_sb_cpu.losses_int": _select_sb_cpu(logits=None, targets=None, losses=torch.zeros(N, dtype=torch.int64)),
    "select_sb_cpu.flags_with_logits": _select_sb_cpu(flags=torch.zeros(N, dtype=torch.int8)),
    "select_sb_cpu.flags_short": _select_sb_cpu(
        logits=None, targets=None, losses=torch.rand(N), flags=torch.zeros(2, dtype=torch.int8)
    ),
    "select_sb_cpu.meta_empty": _select_sb_cpu(meta=torch.zeros(0, dtype=torch.int64)),
    "select_sb_cpu.meta_short": _select_sb_cpu(meta=torch.zeros(3, dtype=torch.int64)),
    "select_sb_cpu.meta_int32": _select_sb_cpu(meta=torch.zeros(META_SIZE, dtype=torch.int32)),
    "select_sb_cpu.meta_negative_pushed": _select_sb_cpu(meta=_meta(pushed=-(10**6))),
    "select_sb_cpu.meta_huge_pushed": _select_sb_cpu(meta=_meta(pushed=2**63 - 3)),
    "select_sb_cpu.meta_negative_step": _select_sb_cpu(meta=_meta(step=-1)),
    "select_sb_cpu.history_2d": _select_sb_cpu(history=torch.rand(R, 2)),
    "select_sb_cpu.history_empty": _select_sb_cpu(history=torch.rand(0)),
    "select_sb_cpu.history_float64": _select_sb_cpu(history=torch.rand(R, dtype=torch.float64)),
    "select_sb_cpu.history_strided": _select_sb_cpu(history=torch.rand(2 * R)[::2]),
    "select_sb_cpu.beta_nan": _select_sb_cpu(beta=float("nan"), beta_int=0),
    "select_sb_cpu.beta_zero": _select_sb_cpu(beta=0.0, beta_int=0),
    "select_sb_cpu.beta_negative": _select_sb_cpu(beta=-2.0, beta_int=0),
    "select_sb_cpu.beta_int_huge": _select_sb_cpu(beta_int=2**62),
    "select_sb_cpu.beta_int_not_beta": _select_sb_cpu(beta=2.0, beta_int=3),
    "select_sb_cpu.floor_nan": _select_sb_cpu(floor=float("nan")),
    "select_sb_cpu.floor_above_one": _select_sb_cpu(floor=2.0),
    "select_sb_cpu.fixed_prob_nan": _select_sb_cpu(fixed_prob=float("nan")),
    "select_sb_cpu.fixed_prob_above_one": _select_sb_cpu(fixed_prob=1.5),
    "select_sb_cpu.label_smoothing_one": _select_sb_cpu(label_smoothing=1.0),
    "select_sb_cpu.label_smoothing_nan": _select_sb_cpu(label_smoothing=float("nan")),
    "select_sb_cpu.prime_negative": _select_sb_cpu(prime=-1),
    # row_stats_cpu
    "row_stats_cpu.targets_none": _row_stats_cpu(targets=None),
    "row_stats_cpu.targets_short": _row_stats_cpu(targets=_targets(2)),
    "row_stats_cpu.meta_empty": _row_stats_cpu(meta=torch.zeros(0, dtype=torch.int64)),
    "row_stats_cpu.row_offset_negative": _row_stats_cpu(row_offset=-1),
    "row_stats_cpu.row_offset_past_2_32": _row_stats_cpu(row_offset=2**32),
    "row_stats_cpu.label_smoothing_negative": _row_stats_cpu(label_smoothing=-0.5),
    "row_stats_cpu.losses_2d": _row_stats_cpu(logits=None, targets=None, losses=torch.rand(N, 3)),
    # residuals_cpu
    "residuals_cpu.targets_short": lambda: ops.residuals_cpu(_logits(), _targets(3), -100),
    "residuals_cpu.logits_1d": lambda: ops.residuals_cpu(torch.randn(N), _targets(), -100),
    "residuals_cpu.targets_float": lambda: ops.residuals_cpu(_logits(), torch.zeros(N), -100),
    # sample_rows_cpu
    "sample_rows_cpu.policy_unknown": _sample_rows_cpu("bogus"),
    "sample_rows_cpu.targets_short": _sample_rows_cpu(targets=_targets(2)),
    "sample_rows_cpu.meta_short": _sample_rows_cpu(meta=torch.zeros(2, dtype=torch.int64)),
    "sample_rows_cpu.keep_nan": _sample_rows_cpu(param=float("nan")),
    "sample_rows_cpu.keep_zero": _sample_rows_cpu(param=0.0),
    "sample_rows_cpu.importance_k_negative": _sample_rows_cpu("importance", k=-3),
    "sample_rows_cpu.uniform_k_above_n": _sample_rows_cpu("uniform", k=N + 1),
    "sample_rows_cpu.row_offset_negative": _sample_rows_cpu(row_offset=-5),
    # gather_rows
    "gather_rows.cursor_far_negative": _gather_rows(cursor=torch.tensor([-(10**9), 0, 0, 0])),
    "gather_rows.cursor_negative": _gather_rows(cursor=torch.tensor([-2, 0, 0, 0])),
    "gather_rows.cursor_past_capacity": _gather_rows(cursor=torch.tensor([11, 0, 0, 0])),
    "gather_rows.cursor_short": _gather_rows(cursor=torch.zeros(2, dtype=torch.int64)),
    "gather_rows.cursor_int32": _gather_rows(cursor=torch.zeros(CURSOR_SIZE, dtype=torch.int32)),
    "gather_rows.count_1d": _gather_rows(count=torch.tensor([N])),
    "gather_rows.indices_2d": _gather_rows(indices=torch.zeros(N, 1, dtype=torch.int64)),
    "gather_rows.outputs_missing": _gather_rows(outputs=[]),
    "gather_rows.no_sources": _gather_rows(sources=[], outputs=[]),
    "gather_rows.output_strided": _gather_rows(outputs=[torch.empty(3, 10).t()]),
    "gather_rows.dtype_mismatch": _gather_rows(outputs=[torch.empty(10, 3, dtype=torch.float64)]),
    "gather_rows.row_shape_mismatch": _gather_rows(outputs=[torch.empty(10, 4)]),
    # token_losses_cpu
    "token_losses_cpu.logits_2d": _token_losses_cpu(logits=torch.randn(B * T, C)),
    "token_losses_cpu.labels_short": _token_losses_cpu(labels=_labels(length=T - 2)),
    "token_losses_cpu.labels_float": _token_losses_cpu(labels=torch.zeros(B, T)),
    "token_losses_cpu.logits_int": _token_losses_cpu(logits=torch.zeros(B, T, C, dtype=torch.int32)),
    "token_losses_cpu.logits_vocab_stride": _token_losses_cpu(logits=torch.randn(C, T, B).permute(2, 1, 0)),
    "token_losses_cpu.label_smoothing_one": _token_losses_cpu(label_smoothing=1.0),
    # tile_stats_cpu
    "tile_stats_cpu.logits_3d": _tile_stats_cpu(logits=torch.randn(2, N, C)),
    "tile_stats_cpu.labels_short": _tile_stats_cpu(labels=_targets(N - 1)),
    "tile_stats_cpu.labels_float": _tile_stats_cpu(labels=torch.zeros(N)),
    "tile_stats_cpu.no_columns": _tile_stats_cpu(logits=torch.randn(N, 0)),
    "tile_stats_cpu.column_stride": _tile_stats_cpu(logits=torch.randn(C, N).t()),
    "tile_stats_cpu.offset_negative": _tile_stats_cpu(column_offset=-1),
    "tile_stats_cpu.logits_float64": _tile_stats_cpu(logits=torch.randn(N, C, dtype=torch.float64)),
    # cpu_isa
    "cpu_isa.unknown": lambda: ops.cpu_isa("sse9"),
    # The registered Python ops, called directly.
    "select_sb.targets_short": _policy_op("select_sb", targets=_targets(2)),
    "select_sb.triton_targets_short": _policy_op("select_sb", targets=_targets(2), backend="triton"),
    "select_sb.reference_meta_short": _policy_op(
        "select_sb", meta=torch.zeros(3, dtype=torch.int64), backend="reference"
    ),
    "select_sb.history_2d": _policy_op("select_sb", history=torch.rand(R, 2), backend="reference"),
    "select_sb.beta_nan": _policy_op("select_sb", beta=float("nan")),
    "select_sb.backend_unknown": _policy_op("select_sb", backend="bogus"),
    "uniform.rate_nan": _policy_op("uniform", rate=float("nan")),
    "uniform.k_negative": _policy_op("uniform", k=-1),
    "keep.keep_nan": _policy_op("keep", keep=float("nan")),
    "keep.triton_losses_2d": _policy_op("keep", logits=None, targets=None, losses=torch.rand(N, 2), backend="triton"),
    "importance.k_negative": _policy_op("importance", k=-1),
    "importance.meta_short": _policy_op("importance", meta=torch.zeros(1, dtype=torch.int64), backend="reference"),
    "gradmatch.steps_zero": _policy_op("gradmatch", steps=0),
    "gradmatch.steps_huge": _policy_op("gradmatch", steps=10**9),
    "gradmatch.features_short": _policy_op("gradmatch", features=torch.randn(2, 3)),
    "row_losses.no_source": _policy_op("row_losses", logits=None, targets=None),
    "row_losses.triton_targets_short": _policy_op("row_losses", targets=_targets(1), backend="triton"),
    "sequence_losses.logits_2d": _policy_op("sequence_losses", logits=torch.randn(B * T, C)),
    "sequence_losses.triton_labels_short": _policy_op("sequence_losses", labels=_labels(length=2), backend="triton"),
    "sequence_losses.triton_vocab_stride": _policy_op(
        "sequence_losses", logits=torch.randn(C, T, B).permute(2, 1, 0), backend="triton"
    ),
    "sequence_losses.reduction_unknown": _policy_op("sequence_losses", reduction="max"),
    "sequence_losses.softcap_negative": _policy_op("sequence_losses", softcap=-30.0),
    "sequence_losses.softcap_nan": _policy_op("sequence_losses", softcap=float("nan")),
    "sequence_losses.logit_scale_zero": _policy_op("sequence_losses", logit_scale=0.0),
    "linear_sequence_losses.softcap_inf": _policy_op("linear_sequence_losses", softcap=float("inf")),
    "linear_sequence_losses.logit_scale_negative": _policy_op("linear_sequence_losses", logit_scale=-1.0),
    "linear_sequence_losses.weight_width": _policy_op("linear_sequence_losses", weight=torch.randn(C, H + 1)),
    "linear_sequence_losses.bias_short": _policy_op("linear_sequence_losses", bias=torch.randn(C - 1)),
    "linear_sequence_losses.tile_bytes_zero": _policy_op("linear_sequence_losses", tile_bytes=0),
    "linear_sequence_losses.triton_labels_short": _policy_op(
        "linear_sequence_losses", labels=_labels(batch=1), backend="triton"
    ),
    "linear_sequence_losses.weight_dtype": _policy_op(
        "linear_sequence_losses", weight=torch.randn(C, H, dtype=torch.float64)
    ),
}


# One valid call per op, as arguments (what the mixed-device cases move to meta, one tensor at a time).
_VALID_CALLS: dict[str, Callable[[], dict]] = {
    "select_sb_cpu": _sb_args,
    "select_sb_cpu.losses": lambda: _sb_args(logits=None, targets=None, losses=torch.rand(N),
                                             flags=torch.zeros(N, dtype=torch.int8)),
    "row_stats_cpu": lambda: dict(logits=_logits(), targets=_targets(), losses=None, meta=_meta(), ignore_index=-100,
                                  label_smoothing=0.0, row_offset=0),
    "residuals_cpu": lambda: dict(logits=_logits(), targets=_targets(), ignore_index=-100),
    "sample_rows_cpu": lambda: dict(logits=_logits(), targets=_targets(), losses=None, meta=_meta(), policy="keep",
                                    param=0.5, k=3, ignore_index=-100, row_offset=0),
    "token_losses_cpu": lambda: dict(logits=torch.randn(B, T, C), labels=_labels(), shift=True, ignore_index=-100,
                                     label_smoothing=0.0),
    "tile_stats_cpu": lambda: dict(logits=_logits(), labels=_targets(), column_offset=0, logit_sums=True),
    "gather_rows": lambda: dict(sources=[torch.randn(N, 3), torch.randn(N)], indices=torch.arange(N),
                                count=torch.tensor(N, dtype=torch.int32), outputs=[torch.empty(10, 3),
                                torch.empty(10)], cursor=torch.zeros(CURSOR_SIZE, dtype=torch.int64)),
    "select_sb": lambda: dict(logits=None, targets=None, losses=torch.rand(N), flags=torch.zeros(N, dtype=torch.int8),
                              history=torch.rand(R), meta=_meta(), beta=1.0, floor=0.0, prime=0, ignore_index=-100,
                              label_smoothing=0.0, backend="native"),
    "uniform": lambda: dict(logits=_logits(), targets=_targets(), losses=None, flags=None, history=torch.rand(R),
                            meta=_meta(), rate=0.5, k=-1, row_offset=0, ignore_index=-100, backend="reference"),
    "keep": lambda: dict(logits=None, targets=None, losses=torch.rand(N), flags=torch.zeros(N, dtype=torch.int8),
                         meta=_meta(), keep=0.5, row_offset=0, ignore_index=-100, backend="native"),
    "importance": lambda: dict(logits=_logits(), targets=_targets(), meta=_meta(), k=3, row_offset=0,
                               ignore_index=-100, backend="native"),
    "gradmatch": lambda: dict(logits=_logits(), targets=_targets(), features=torch.randn(N, 3), meta=_meta(), k=3,
                              steps=10, ignore_index=-100, backend="native"),
    "row_losses": lambda: dict(logits=_logits(), targets=_targets(), losses=None, ignore_index=-100,
                               label_smoothing=0.0, backend="native"),
    "sequence_losses": lambda: dict(logits=torch.randn(B, T, C), labels=_labels(), shift=True, ignore_index=-100,
                                    reduction="mean", label_smoothing=0.0, softcap=0.0, logit_scale=1.0,
                                    backend="reference"),
    "linear_sequence_losses": lambda: dict(hidden=torch.randn(B, T, H), weight=torch.randn(C, H),
                                           bias=torch.randn(C), labels=_labels(), shift=True, ignore_index=-100,
                                           reduction="mean", label_smoothing=0.0, softcap=0.0, logit_scale=1.0,
                                           tile_bytes=80, backend="native"),
}  # fmt: skip
CASES.update(mixed_device_cases(_VALID_CALLS))
CASES.update(checkpoint_cases())


def _segfault() -> None:
    ctypes.string_at(0)


def _hang() -> None:
    time.sleep(3600)


CONTROLS: dict[str, Callable[[], object]] = {
    "control.segfault": _segfault,
    "control.hang": _hang,
    "control.returns": lambda: None,
}
