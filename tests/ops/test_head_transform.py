"""Soft-capped and scaled LM heads (#29): ``softcap`` and ``logit_scale`` applied to every logit before the loss,
in both forms (logits, and hidden states with the LM head) on every backend, against an fp64 reference that
applies ``softcap * tanh(logit_scale * x / softcap)`` itself (Gemma-2's cap, Cohere's and Granite's scale)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sbkernels
from tests.ops.test_sequences import BACKENDS, fp64_sequence_losses

HEADS = [(None, 1.0), (30.0, 1.0), (2.0, 1.0), (None, 0.0625), (None, 1 / 8.0), (1.5, 3.0)]


def fp64_head(logits: torch.Tensor, softcap: float | None, logit_scale: float) -> torch.Tensor:
    x = logits.double() * logit_scale
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def _batch(seed: int, vocab: int = 37):
    gen = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(3, 7, 16, generator=gen), torch.randn(vocab, 16, generator=gen)
    labels = torch.randint(0, vocab, (3, 7), generator=gen)
    labels[0, :3], labels[2, :] = -100, -100
    return hidden, weight, labels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("softcap", "logit_scale"), HEADS)
def test_logits_form_applies_the_head_transform(backend, softcap, logit_scale):
    hidden, weight, labels = _batch(0)
    logits = F.linear(hidden, weight) * 2  # big enough that a cap of 2 changes every loss
    for shift in (True, False):
        got = sbkernels.sequence_losses(logits, labels, shift=shift, softcap=softcap, logit_scale=logit_scale,
                                        backend=backend)  # fmt: skip
        want, _ = fp64_sequence_losses(fp64_head(logits, softcap, logit_scale), labels, shift)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("softcap", "logit_scale"), HEADS)
@pytest.mark.parametrize("tile_bytes", [20, 4 * 10**6])
def test_linear_form_applies_the_head_transform(backend, softcap, logit_scale, tile_bytes):
    """On Triton inside the fused kernel (each vocabulary tile in registers; columns past V stay -inf)."""
    hidden, weight, labels = _batch(1)
    bias = torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(2))
    for shift in (True, False):
        got = sbkernels.linear_sequence_losses(
            hidden * 2, weight, labels, bias=bias, shift=shift, softcap=softcap, logit_scale=logit_scale,
            tile_bytes=tile_bytes, backend=backend,
        )  # fmt: skip
        want, _ = fp64_sequence_losses(fp64_head(F.linear(hidden * 2, weight, bias), softcap, logit_scale), labels,
                                       shift)  # fmt: skip
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


def test_the_cap_changes_the_losses():
    """Control: the transform is not a no-op at these scales (a reference that ignored it would fail above)."""
    hidden, weight, labels = _batch(0)
    logits = F.linear(hidden, weight) * 2
    plain = sbkernels.sequence_losses(logits, labels)
    capped = sbkernels.sequence_losses(logits, labels, softcap=2.0)
    assert (plain - capped).abs().max() > 0.5


@pytest.mark.parametrize(("softcap", "logit_scale"), [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (None, 0.0),
                                                      (None, -2.0), (None, float("inf")), ("30", 1.0)])  # fmt: skip
def test_bad_head_transforms_are_refused_by_name(softcap, logit_scale):
    hidden, weight, labels = _batch(0)
    with pytest.raises(ValueError, match=r"softcap|logit_scale"):
        sbkernels.linear_sequence_losses(hidden, weight, labels, softcap=softcap, logit_scale=logit_scale)
    with pytest.raises(ValueError, match=r"softcap|logit_scale"):
        sbkernels.sequence_losses(F.linear(hidden, weight), labels, softcap=softcap, logit_scale=logit_scale)
