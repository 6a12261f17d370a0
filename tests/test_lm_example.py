"""examples/lm_gpt2.py as a user runs it, at a tiny size: a random-init GPT-2 from transformers, a collator
with dynamic padding, sequence-level SB from hidden states and from logits. Needs transformers (`make test`
installs it; outside CI the test skips without it)."""

from __future__ import annotations

import math
import os

import pytest

pytestmark = pytest.mark.slow

if os.environ.get("CI"):
    import transformers  # noqa: F401  (CI installs it: a missing extra must fail, not skip)
else:
    pytest.importorskip("transformers")


@pytest.mark.parametrize("scoring", ["hidden", "logits"])
def test_the_lm_example_trains_every_arm_on_dynamically_padded_batches(scoring, tmp_path):
    from examples import lm_gpt2

    args = ["--train", "96", "--eval", "16", "--files", "30", "--vocab", "300", "--context", "48",
            "--batch-size", "8", "--eval-every", "6", "--scoring", scoring,
            "--plot", str(tmp_path / "lm.png")]  # fmt: skip
    results = lm_gpt2.main(args)
    base, sb, composer = results["baseline"], results["sb"], results["composer"]
    assert 0 < composer["backward"] < 96  # Composer's recipe keeps half of some batches
    assert (tmp_path / "lm.png").read_bytes()[:4] == b"\x89PNG"
    assert base["backward"] == 96  # every sequence once
    assert 0 < sb["backward"] <= 96  # the kept sequences, each once (flush included)
    assert all(math.isfinite(r["held_out"]) for r in results.values())
    assert len(sb["curve"]) == len(base["curve"]) == 2
