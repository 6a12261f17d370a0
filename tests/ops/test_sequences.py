"""Per-sequence losses (SPEC section 9) against an fp64 reference, on every backend, over odd shapes.

The reference here is written independently of sbkernels: ``F.cross_entropy`` in float64 per token, then
the mean (or sum) over each sequence's valid tokens. Every backend's float32 result must match it to
float32 rounding of the logits' magnitude.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import sbkernels
from sbkernels import ops
from sbkernels.ops import _sequence
from tests.helpers import kernel_devices

BACKENDS = ["reference", "native", *(["triton"] if "cpu" in kernel_devices() else [])]


def fp64_sequence_losses(logits, labels, shift=True, reduction="mean", label_smoothing=0.0, ignore_index=-100):
    """(loss, ignored) per sequence in float64; ignored: no valid token. Labels must be in range."""
    x, t = (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)
    batch, length, vocab = x.shape
    token = F.cross_entropy(
        x.double().reshape(-1, vocab), t.reshape(-1).long(), reduction="none", ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    ).view(batch, length)  # fmt: skip
    valid = t != ignore_index
    total = (token * valid).sum(1)
    count = valid.sum(1)
    loss = total / count.clamp_min(1) if reduction == "mean" else total
    return loss, count == 0


def _batch(batch, length, vocab, dtype, seed, ignore_frac=0.2):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[torch.rand(batch, length, generator=gen) < ignore_frac] = -100
    labels[-1, :] = -100  # a sequence with no valid token at all
    return logits, labels


def _tolerance(logits, reduction, length):
    scale = 1.0 + float(logits.float().abs().max())
    return 2e-6 * scale * (length if reduction == "sum" else 1)


SHAPES = [(1, 1, 2), (2, 2, 2), (3, 7, 5), (4, 33, 97), (2, 5, 50_257), (1, 3, 262_144)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("batch", "length", "vocab"), SHAPES)
@pytest.mark.parametrize("shift", [True, False])
def test_sequence_losses_match_fp64(backend, batch, length, vocab, shift):
    logits, labels = _batch(batch, length, vocab, torch.float32, seed=batch * 1000 + length)
    for reduction in ("mean", "sum"):
        got = sbkernels.sequence_losses(logits, labels, shift=shift, reduction=reduction, backend=backend)
        want, ignored = fp64_sequence_losses(logits, labels, shift, reduction)
        assert got.dtype == torch.float32 and got.shape == (batch,)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=_tolerance(logits, reduction, length))
        assert bool((got[ignored] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_scored_in_float32(backend, dtype):
    logits, labels = _batch(3, 9, 131, dtype, seed=7)
    got = sbkernels.sequence_losses(logits, labels, backend=backend)
    want, _ = fp64_sequence_losses(logits, labels)  # the same rounded logits, in float64
    torch.testing.assert_close(got.double(), want, rtol=0, atol=_tolerance(logits, "mean", 9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_smoothing(backend):
    logits, labels = _batch(3, 6, 17, torch.float32, seed=3)
    got = sbkernels.sequence_losses(logits, labels, label_smoothing=0.1, backend=backend)
    want, _ = fp64_sequence_losses(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=_tolerance(logits, "mean", 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_logits_are_read_in_place(backend):
    """A slice of a longer buffer (not mergeable over B and T), and a (T, B, V) buffer seen as (B, T, V)."""
    gen = torch.Generator().manual_seed(5)
    big = torch.randn(3, 12, 23, generator=gen)
    labels = torch.randint(0, 23, (3, 8), generator=gen)
    for logits in (big[:, 2:10], torch.randn(8, 3, 23, generator=gen).transpose(0, 1)):
        got = sbkernels.sequence_losses(logits, labels, backend=backend)
        want, _ = fp64_sequence_losses(logits, labels)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=_tolerance(logits, "mean", 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_labels_and_flags(backend):
    """A label outside [0, V) makes its sequence NaN and a bad row; no valid token makes an ignored row."""
    logits, labels = _batch(4, 6, 11, torch.float32, seed=9, ignore_frac=0.0)
    labels[1, 3] = 11
    labels[2, 1:] = -100
    loss, flags = ops.sequence_losses(logits=logits, labels=labels, backend=backend)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    assert loss[2] == 0 and loss[3] == 0
    from sbkernels.slots import ROW_BAD_TARGET, ROW_IGNORED, ROW_VALID

    assert flags.tolist() == [ROW_VALID, ROW_BAD_TARGET, ROW_IGNORED, ROW_IGNORED]


def test_infinite_logits_follow_cross_entropy():
    """A -inf non-target logit (a masked vocabulary entry) adds nothing; a -inf target gives +inf."""
    logits, labels = _batch(2, 4, 7, torch.float32, seed=2, ignore_frac=0.0)
    labels[-1] = torch.tensor([0, 1, 2, 3])
    logits[:, :, 6] = float("-inf")
    for backend in BACKENDS:
        got = sbkernels.sequence_losses(logits, labels, backend=backend)
        want, _ = fp64_sequence_losses(logits, labels)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    logits[0, 0, labels[0, 1]] = float("-inf")
    for backend in BACKENDS:
        assert sbkernels.sequence_losses(logits, labels, backend=backend)[0] == float("inf")


# ------------------------------------------------------------------------------------ the linear form
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile_bytes", [1, 20, 400, 4 * 10**6])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_form_matches_the_logits_form(backend, tile_bytes, with_bias):
    gen = torch.Generator().manual_seed(tile_bytes)
    hidden, weight = torch.randn(3, 7, 16, generator=gen), torch.randn(41, 16, generator=gen) / 4
    bias = torch.randn(41, generator=gen) if with_bias else None
    labels = torch.randint(0, 41, (3, 7), generator=gen)
    labels[0, :3] = -100
    for shift, label_smoothing in ((True, 0.0), (False, 0.0), (True, 0.2)):
        got = sbkernels.linear_sequence_losses(
            hidden, weight, labels, bias=bias, shift=shift, label_smoothing=label_smoothing,
            tile_bytes=tile_bytes, backend=backend,
        )  # fmt: skip
        want, _ = fp64_sequence_losses(F.linear(hidden, weight, bias), labels, shift, label_smoothing=label_smoothing)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_form_with_masked_vocabulary(backend):
    """A bias of -inf masks tokens (e.g. the first columns, which a tile trick reading column 0 would trip
    on): the losses stay those of the logits form, and a label on a masked token gives +inf."""
    gen = torch.Generator().manual_seed(5)
    hidden, weight = torch.randn(2, 6, 8, generator=gen), torch.randn(30, 8, generator=gen)
    bias = torch.zeros(30)
    bias[:4] = float("-inf")
    labels = torch.randint(4, 30, (2, 6), generator=gen)
    got = sbkernels.linear_sequence_losses(hidden, weight, labels, bias=bias, tile_bytes=48, backend=backend)
    want = sbkernels.sequence_losses(F.linear(hidden, weight, bias), labels, backend="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    labels[1, 3] = 2  # a masked token as a target
    got = sbkernels.linear_sequence_losses(hidden, weight, labels, bias=bias, tile_bytes=48, backend=backend)
    assert got[1] == float("inf") and torch.isfinite(got[0])


class ProductShapes(TorchDispatchMode):
    """Records the shape of every matrix product's output (any aten mm / addmm / bmm overload)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.shapes.append(tuple(out.shape))
        return out


def test_linear_form_never_holds_more_than_one_tile_of_logits():
    """Every matrix product the linear form makes has at most ``tile_bytes`` of logits, and together they
    cover the (B * T, V) logits exactly once: the logits never exist whole. Negative control: the logits form
    (what it replaces) makes one product of all of them."""
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(4, 50, 8, generator=gen), torch.randn(300, 8, generator=gen)
    labels = torch.randint(0, 300, (4, 50), generator=gen)
    with ProductShapes() as linear_form:
        sbkernels.linear_sequence_losses(hidden, weight, labels, tile_bytes=4000, backend="native")
    shapes = linear_form.shapes
    assert shapes and all(rows * columns <= 1000 for rows, columns in shapes), shapes
    assert sum(rows * columns for rows, columns in shapes) == 4 * 50 * 300
    with ProductShapes() as logits_form:
        sbkernels.sequence_losses(F.linear(hidden, weight), labels, backend="native")
    assert max(s[0] * s[-1] for s in logits_form.shapes) == 4 * 50 * 300  # the control: all the logits at once


TILE_CASES = [(8192, 32_000, 8 * 2**20), (7, 5, 3), (100, 3, 50), (1, 10**6, 1000), (10**5, 2, 2**20), (3, 4, 12)]


@pytest.mark.parametrize(("tokens", "vocab", "elements"), TILE_CASES)
def test_tile_shape_fills_the_budget_squarely(tokens, vocab, elements):
    rows, columns = _sequence.tile_shape(tokens, vocab, elements)
    assert 1 <= rows <= tokens and 1 <= columns <= vocab and rows * columns <= elements
    if tokens * vocab <= elements:
        assert (rows, columns) == (tokens, vocab)
    else:  # as square as the budget and the shape allow, and no room left for another row or column
        assert min(rows, columns) >= min(math.isqrt(elements), tokens, vocab)
        assert (rows + 1) * columns > elements or rows == tokens
        assert rows * (columns + 1) > elements or columns == vocab


# ------------------------------------------------------------------------- errors name the argument
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: sbkernels.sequence_losses(x[0], y), "logits must be 3-D"),
        (lambda x, y: sbkernels.sequence_losses(x, y[:, 1:]), "labels must have shape"),
        (lambda x, y: sbkernels.sequence_losses(x, y.float()), "labels dtype"),
        (lambda x, y: sbkernels.sequence_losses(x, y, reduction="max"), "reduction must be one of"),
        (lambda x, y: sbkernels.sequence_losses(x.transpose(1, 2).contiguous().transpose(1, 2), y), "unit stride"),
        (lambda x, y: sbkernels.linear_sequence_losses(x, torch.randn(5, 3), y), "weight must be"),
        (lambda x, y: sbkernels.linear_sequence_losses(x, torch.randn(5, 11), y, tile_bytes=0), "tile_bytes"),
    ],
)
def test_bad_arguments_raise_with_the_argument_named(call, message):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 4, 11, generator=gen), torch.randint(0, 11, (2, 4), generator=gen)
    with pytest.raises(ValueError, match=message):
        call(x, y)


# --------------------------------------------------------------------- registered-op machinery
@pytest.mark.parametrize("backend", ["reference", "native"])
def test_opcheck(backend):
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3, 5, 13, generator=gen), torch.randint(0, 13, (3, 5), generator=gen)
    hidden, weight = torch.randn(3, 5, 4, generator=gen), torch.randn(13, 4, generator=gen)
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(
        torch.ops.sbkernels.sequence_losses.default, (logits, labels, True, -100, "mean", 0.0, 30.0, 0.5, backend),
        test_utils=tests,
    )  # fmt: skip
    torch.library.opcheck(
        torch.ops.sbkernels.linear_sequence_losses.default,
        (hidden, weight, None, labels, True, -100, "sum", 0.0, 0.0, 1.0, 80, backend), test_utils=tests,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.sbkernels.token_losses_cpu.default, (logits, labels, True, -100, 0.0))
    torch.library.opcheck(torch.ops.sbkernels.tile_stats_cpu.default, (logits[0], labels[0], 3, True))


def test_compile_fullgraph_matches_eager():
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(3, 6, 19, generator=gen), torch.randint(0, 19, (3, 6), generator=gen)
    hidden, weight = torch.randn(3, 6, 4, generator=gen), torch.randn(19, 4, generator=gen)

    def both(logits, labels, hidden, weight):
        return (
            sbkernels.sequence_losses(logits, labels, backend="native"),
            sbkernels.linear_sequence_losses(hidden, weight, labels, tile_bytes=80, backend="native"),
        )

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(logits, labels, hidden, weight), both(logits, labels, hidden, weight), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_form_in_low_precision(backend):
    """bf16 hidden states and head: the native and reference paths round each tile's logits to bf16 as the
    model would; the Triton kernel keeps its tiles in float32. Both stay within bf16 rounding of fp64."""
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 9, 32, generator=gen).to(torch.bfloat16)
    weight = (torch.randn(70, 32, generator=gen) / 6).to(torch.bfloat16)
    labels = torch.randint(0, 70, (2, 9), generator=gen)
    got = sbkernels.linear_sequence_losses(hidden, weight, labels, tile_bytes=200, backend=backend)
    want, _ = fp64_sequence_losses(F.linear(hidden.double(), weight.double()), labels)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=3e-2)


@pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton kernels run only where this session interprets them")
def test_the_triton_linear_form_forms_no_logits_outside_its_kernel():
    """The fused kernel makes its vocabulary tiles in registers: no matrix product runs outside it, where the
    native path makes one per tile (the control)."""
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 20, 16, generator=gen), torch.randn(90, 16, generator=gen)
    labels = torch.randint(0, 90, (2, 20), generator=gen)
    with ProductShapes() as fused:
        sbkernels.linear_sequence_losses(hidden, weight, labels, backend="triton")
    with ProductShapes() as tiled:
        sbkernels.linear_sequence_losses(hidden, weight, labels, tile_bytes=4 * 8 * 90, backend="native")
    assert fused.shapes == [] and len(tiled.shapes) == 8  # 2 x 4 tiles of at most 26 x 27


def test_the_linear_form_follows_autocast_as_the_lm_head_would():
    """Under autocast the hidden states and the head are cast as the head's F.linear casts them (bf16 on
    CPU): the same losses as bf16 operands give, on the public function and on the policy's path. Outside
    autocast, mismatched dtypes are refused with the fix."""
    gen = torch.Generator().manual_seed(8)
    hidden, weight = torch.randn(2, 6, 16, generator=gen), torch.randn(40, 16, generator=gen) / 4
    labels = torch.randint(0, 40, (2, 6), generator=gen)
    want = sbkernels.linear_sequence_losses(hidden.bfloat16(), weight.bfloat16(), labels)
    assert not torch.equal(want, sbkernels.linear_sequence_losses(hidden, weight, labels))  # bf16 shows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(sbkernels.linear_sequence_losses(hidden, weight, labels), want)
        assert torch.equal(sbkernels.linear_sequence_losses(hidden.bfloat16(), weight, labels), want)
        policy_losses, _ = sbkernels.SB().linear_sequence_losses(hidden, weight, None, labels)
    assert torch.equal(policy_losses, want)
    with pytest.raises(ValueError, match="score under the model's autocast"):
        sbkernels.linear_sequence_losses(hidden.bfloat16(), weight, labels)
