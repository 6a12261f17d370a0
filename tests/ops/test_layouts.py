"""Every tensor argument of every op in every layout a caller can hand it (#27): strided along rows, strided
inside a row, and expanded (stride 0). Each call must give what the same values give contiguous, or raise a
clear error (ValueError / RuntimeError) - never a different result or a read outside the tensor (make asan
runs this file). Found this way: the Triton linear form read a strided bias at unit stride (wrong losses)
and an expanded one past its one-element buffer.

Mixed devices (one argument on ``meta``) are cases of the fuzz table (tests/tools/fuzz_cases.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import sbkernels
from sbkernels.kernels import interpreting
from sbkernels.slots import CURSOR_SIZE, META_PUSHED, META_SIZE, ROW_IGNORED

ops = torch.ops.sbkernels
N, C, R, B, T, H = 7, 5, 4, 3, 6, 8


def _meta() -> torch.Tensor:
    meta = torch.zeros(META_SIZE, dtype=torch.int64)
    meta[META_PUSHED] = 9
    return meta


def _args(op: str, gen: torch.Generator) -> dict[str, object]:
    """Valid arguments of ``op`` (positional order), with the optional tensors given."""
    logits, targets = torch.randn(N, C, generator=gen), torch.randint(0, C, (N,), generator=gen)
    losses = torch.rand(N, generator=gen)
    flags = (torch.rand(N, generator=gen) < 0.4).to(torch.int8) * ROW_IGNORED  # a pattern a stride would shift
    history, labels = torch.rand(R, generator=gen), torch.randint(0, C, (B, T), generator=gen)
    labels[0, 2] = -100
    table: dict[str, dict[str, object]] = {
        "select_sb": dict(logits=None, targets=None, losses=losses, flags=flags, history=history, meta=_meta(),
                          beta=1.0, floor=0.0, prime=0, ignore_index=-100, label_smoothing=0.0),
        "select_sb.logits": dict(logits=logits, targets=targets, losses=None, flags=None, history=history,
                                 meta=_meta(), beta=2.0, floor=0.0, prime=0, ignore_index=-100, label_smoothing=0.1),
        "uniform": dict(logits=logits, targets=targets, losses=None, flags=None, history=history, meta=_meta(),
                        rate=0.5, k=-1, row_offset=0, ignore_index=-100),
        "uniform.k": dict(logits=None, targets=None, losses=losses, flags=flags, history=history, meta=_meta(),
                          rate=-1.0, k=3, row_offset=0, ignore_index=-100),
        "keep": dict(logits=logits, targets=targets, losses=None, flags=None, meta=_meta(), keep=0.5, row_offset=0,
                     ignore_index=-100),
        "keep.losses": dict(logits=None, targets=None, losses=losses, flags=flags, meta=_meta(), keep=0.5,
                            row_offset=0, ignore_index=-100),
        "importance": dict(logits=logits, targets=targets, meta=_meta(), k=3, row_offset=0, ignore_index=-100),
        "gradmatch": dict(logits=logits, targets=targets, features=torch.randn(N, 3, generator=gen), meta=_meta(),
                          k=3, steps=10, ignore_index=-100),
        "row_losses": dict(logits=logits, targets=targets, losses=None, ignore_index=-100, label_smoothing=0.0),
        "sequence_losses": dict(logits=torch.randn(B, T, C, generator=gen), labels=labels, shift=True,
                                ignore_index=-100, reduction="mean", label_smoothing=0.0, softcap=0.0,
                                logit_scale=1.0),
        "linear_sequence_losses": dict(hidden=torch.randn(B, T, H, generator=gen),
                                       weight=torch.randn(C, H, generator=gen), bias=torch.randn(C, generator=gen),
                                       labels=labels, shift=True, ignore_index=-100, reduction="mean",
                                       label_smoothing=0.0, softcap=0.0, logit_scale=1.0, tile_bytes=40),
    }  # fmt: skip
    return dict(table[op])


PYTHON_OPS = [
    "select_sb", "select_sb.logits", "uniform", "uniform.k", "keep", "keep.losses", "importance", "gradmatch",
    "row_losses", "sequence_losses", "linear_sequence_losses",
]  # fmt: skip
BACKENDS = ["native", "triton", "reference"]


def _cpp_args(op: str, gen: torch.Generator) -> dict[str, object]:
    logits, targets = torch.randn(N, C, generator=gen), torch.randint(0, C, (N,), generator=gen)
    return {
        "select_sb_cpu": dict(logits=logits, targets=targets, losses=None, flags=None, history=torch.rand(R),
                              meta=_meta(), beta=2.0, floor=0.0, prime=0, ignore_index=-100, label_smoothing=0.0,
                              fixed_prob=-1.0, beta_int=2),
        "row_stats_cpu": dict(logits=logits, targets=targets, losses=None, meta=_meta(), ignore_index=-100,
                              label_smoothing=0.0, row_offset=0),
        "sample_rows_cpu": dict(logits=logits, targets=targets, losses=None, meta=_meta(), policy="importance",
                                param=0.0, k=3, ignore_index=-100, row_offset=0),
        "residuals_cpu": dict(logits=logits, targets=targets, ignore_index=-100),
        "token_losses_cpu": dict(logits=torch.randn(B, T, C, generator=gen), labels=torch.randint(0, C, (B, T),
                                 generator=gen), shift=True, ignore_index=-100, label_smoothing=0.0),
        "tile_stats_cpu": dict(logits=logits, labels=targets, column_offset=0, logit_sums=True),
        "gather_rows": dict(sources=[torch.randn(N, 3, generator=gen)], indices=torch.randperm(N, generator=gen),
                            count=torch.tensor(5, dtype=torch.int32), outputs=[torch.zeros(10, 3)],
                            cursor=torch.zeros(CURSOR_SIZE, dtype=torch.int64)),
    }[op]  # fmt: skip


CPP_OPS = ["select_sb_cpu", "row_stats_cpu", "sample_rows_cpu", "residuals_cpu", "token_losses_cpu", "tile_stats_cpu",
           "gather_rows"]  # fmt: skip


# --- the layouts -------------------------------------------------------------------------------------------------


def strided_rows(t: torch.Tensor) -> torch.Tensor:
    """The same values, every other row of a buffer twice as long (stride(0) doubled)."""
    return torch.repeat_interleave(t, 2, dim=0)[::2] if t.dim() >= 1 and t.shape[0] > 0 else t


def strided_inside(t: torch.Tensor) -> torch.Tensor:
    """The same values, the last dim at stride 2."""
    return torch.stack([t, t], dim=-1)[..., 0] if t.dim() >= 1 else t


def expanded(t: torch.Tensor) -> torch.Tensor:
    """Row 0 repeated by a stride-0 view (the values change: the contiguous call gets the same rows)."""
    return t[:1].expand_as(t) if t.dim() >= 1 and t.shape[0] > 1 else t


LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "strided_rows": strided_rows, "strided_inside": strided_inside, "expanded": expanded,
}  # fmt: skip


def _tensor_slots(args: dict[str, object]) -> list[tuple[str, int | None]]:
    """(argument, list index or None) of every tensor argument."""
    slots: list[tuple[str, int | None]] = []
    for name, value in args.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            slots.append((name, None))
        elif isinstance(value, list):
            slots += [(name, i) for i in range(len(value))]
    return slots


def _replace(args: dict[str, object], slot: tuple[str, int | None], value: torch.Tensor) -> dict[str, object]:
    out = {k: ([t.clone() for t in v] if isinstance(v, list) else v.clone() if isinstance(v, torch.Tensor) else v)
           for k, v in args.items()}  # fmt: skip
    name, index = slot
    if index is None:
        out[name] = value
    else:
        out[name][index] = value  # type: ignore[index]
    return out


def _outcome(op: Callable, args: dict[str, object]) -> list[torch.Tensor] | Exception:
    """The op's outputs and every argument it may write (as contiguous copies), or the exception raised."""
    try:
        result = op(*args.values())
    except (ValueError, RuntimeError, TypeError) as error:
        return error
    outputs = list(result) if isinstance(result, tuple) else [] if result is None else [result]
    written = [t for v in args.values() for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor)]
    return [t.contiguous() for t in outputs + written]


def _check_layout(op: Callable, args: dict[str, object], slot: tuple[str, int | None], layout: str) -> None:
    name, index = slot
    original = args[name] if index is None else args[name][index]  # type: ignore[index]
    assert isinstance(original, torch.Tensor)
    odd = LAYOUTS[layout](original)
    if odd.stride() == original.stride():
        return  # this layout changes nothing for this tensor (one row, a scalar)
    got = _outcome(op, _replace(args, slot, odd))
    if isinstance(got, Exception):
        assert str(got), f"{name} {layout}: an exception without a message"
        return  # refused: allowed, as long as it says why
    want = _outcome(op, _replace(args, slot, odd.contiguous()))
    assert not isinstance(want, Exception), f"the contiguous call raised: {want}"
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        # the contiguous copy of an argument the op wrote: an expanded one cannot hold what was written
        if g.shape == w.shape and g.is_floating_point():
            torch.testing.assert_close(
                g, w, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m: f"{name} {layout}: {m}"
            )
        else:
            assert torch.equal(g, w), f"{name} {layout}: {g} != {w}"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", PYTHON_OPS)
def test_python_ops_in_every_layout(op: str, backend: str, layout: str) -> None:
    if backend == "triton" and not interpreting():
        pytest.skip("the Triton backend on CPU runs under TRITON_INTERPRET=1 (make test sets it)")
    name = op.split(".")[0]
    args = _args(op, torch.Generator().manual_seed(len(op)))
    for slot in _tensor_slots(args):
        _check_layout(lambda *a: getattr(ops, name)(*a, backend), args, slot, layout)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("op", CPP_OPS)
def test_cpp_ops_in_every_layout(op: str, layout: str) -> None:
    args = _cpp_args(op, torch.Generator().manual_seed(len(op)))
    for slot in _tensor_slots(args):
        _check_layout(getattr(ops, op), args, slot, layout)


def test_the_triton_linear_form_reads_a_strided_or_expanded_bias_as_given() -> None:
    """The issue's case, with the exact losses: 5.55 against 5.09 before the fix."""
    if not interpreting():
        pytest.skip("the Triton backend on CPU runs under TRITON_INTERPRET=1 (make test sets it)")
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 5, 8, generator=gen), torch.randn(11, 8, generator=gen)
    labels, bias = torch.randint(0, 11, (2, 5), generator=gen), torch.randn(22, generator=gen)
    for odd in (bias[::2], bias[:1].expand(11)):
        got = sbkernels.linear_sequence_losses(hidden, weight, labels, bias=odd, backend="triton")
        logits = (hidden.double() @ weight.double().T + odd.double()).float()
        want = sbkernels.sequence_losses(logits, labels, backend="reference")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_layout_check_catches_a_kernel_that_ignores_a_stride(monkeypatch) -> None:
    """Negative control: the native token kernel handed a row-strided view with its stride dropped (what the
    Triton bias bug did) gives other losses, and the check reports it."""
    real = ops.token_losses_cpu

    def drops_strides(logits, labels, *rest):
        flat = torch.as_strided(logits, logits.shape, torch.empty(logits.shape).stride())
        return real(flat, labels, *rest)

    args = _cpp_args("token_losses_cpu", torch.Generator().manual_seed(3))
    with pytest.raises(AssertionError, match="strided_rows"):
        _check_layout(drops_strides, args, ("logits", None), "strided_rows")
    _check_layout(real, args, ("logits", None), "strided_rows")  # the real kernel passes
