"""Batches padded to different lengths (SPEC section 9): the pool keeps every row, re-padded per field.

A Hugging Face collator pads each batch to its own longest sequence. The pool re-pads each padded field to
the longest length it holds (``labels`` with -100, ``attention_mask`` with 0, ``input_ids`` with the pad id
the caller gives); a field without a pad value keeps a fixed shape. Errors name the field.
"""

from __future__ import annotations

from collections import UserDict

import pytest
import torch

import sbkernels
from sbkernels import SelectionPool, Uniform

PAD_ID = 50


def collated(lengths: list[int], seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A dynamically padded batch: each row's own length, padded to the batch's longest."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), PAD_ID)
    mask = torch.zeros(len(lengths), width, dtype=torch.int64)
    for i, n in enumerate(lengths):
        input_ids[i, :n] = torch.randint(0, PAD_ID, (n,), generator=gen)
        mask[i, :n] = 1
    labels = torch.where(mask.bool(), input_ids, -100)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}, torch.randn(len(lengths), 3)


def _padded_to(row: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.cat([row, row.new_full((width - row.shape[0],), value)])


def test_every_row_comes_out_once_re_padded_per_field():
    sb = sbkernels.SelectiveBackprop(3, Uniform(rate=1.0), pad_values={"input_ids": PAD_ID})
    originals = {}
    for step, lengths in enumerate([[5, 2, 4], [9, 1, 3, 7], [2, 2], [6, 8, 4]]):
        batch, extra = collated(lengths, seed=step)
        ids = torch.arange(len(lengths)) + 10 * step
        for i, sample in enumerate(ids.tolist()):
            originals[sample] = {key: value[i] for key, value in batch.items()} | {"extra": extra[i]}
        sb.observe(torch.rand(len(lengths)), None, {**batch, "extra": extra}, sample_ids=ids)
    seen = []
    for out in [*sb.ready_batches(), *sb.flush()]:
        data = out.data
        width = data["input_ids"].shape[1]
        assert data["labels"].shape[1] == data["attention_mask"].shape[1] == width
        assert data["extra"].shape[1:] == (3,)  # no pad value: a fixed shape, untouched
        for i, sample in enumerate(out.sample_ids.tolist()):
            row = originals[sample]
            for key, pad in (("input_ids", PAD_ID), ("attention_mask", 0), ("labels", -100)):
                assert torch.equal(data[key][i], _padded_to(row[key], width, pad)), (sample, key)
            assert torch.equal(data["extra"][i], row["extra"])
            seen.append(sample)
    assert sorted(seen) == sorted(originals)  # every row exactly once


def test_a_field_without_pad_value_is_named_in_the_error():
    sb = sbkernels.SelectiveBackprop(3, Uniform(rate=1.0))  # no pad value for input_ids
    sb.observe(torch.rand(2), None, collated([4, 3], seed=0)[0])
    with pytest.raises(ValueError, match=r"input_ids has rows \(6,\).*need a pad value for input_ids"):
        sb.observe(torch.rand(2), None, collated([6, 3], seed=1)[0])


def test_fields_that_are_not_per_row_are_refused_by_name_never_dropped():
    batch, _ = collated([4, 3], seed=0)
    for extra, what in (
        (torch.arange(4)[None], r"shape \(1, 4\)"),
        ("text", "str"),
        (torch.tensor(2.0), r"shape \(\)"),
    ):
        sb = sbkernels.SelectiveBackprop(3, Uniform(rate=1.0), pad_values={"input_ids": PAD_ID})
        with pytest.raises(ValueError, match=rf"batch field 'position_ids' \({what}\) is not per row"):
            sb.observe(torch.rand(2), None, {**batch, "position_ids": extra})
    sb = sbkernels.SelectiveBackprop(
        3, Uniform(rate=1.0), fields=("input_ids", "labels"), pad_values={"input_ids": PAD_ID}
    )
    sb.observe(torch.rand(2), None, {**batch, "position_ids": torch.arange(4)[None]})  # named fields travel
    assert set(next(iter(sb.flush())).data) == {"input_ids", "labels"}


class Encoding(UserDict):
    """Stands for transformers' BatchEncoding: a mapping type built from a dict."""


def test_the_batch_mapping_type_comes_back():
    batch, _ = collated([4, 3, 2], seed=0)
    sb = sbkernels.SelectiveBackprop(3, Uniform(rate=1.0), pad_values={"input_ids": PAD_ID})
    sb.observe(torch.rand(3), None, Encoding(batch))
    out = next(iter(sb.ready_batches(sync=True)))
    assert isinstance(out.data, Encoding) and set(out.data) == set(batch)


def test_a_resumed_run_with_padded_rows_yields_the_same_batches():
    def run(stop_at: int | None):
        sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(seed=1), pad_values={"input_ids": PAD_ID})
        out = []
        for step, lengths in enumerate([[5, 2, 4], [9, 1, 3], [2, 2, 8], [6, 8, 4], [3, 3, 3]]):
            if step == stop_at:
                saved = sb.state_dict()
                sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(seed=1), pad_values={"input_ids": PAD_ID})
                sb.load_state_dict(saved)
            batch, _ = collated(lengths, seed=step)
            sb.observe(torch.rand(3, generator=torch.Generator().manual_seed(step)), None, batch)
            out += [b.data for b in sb.ready_batches(sync=True)]
        out += [b.data for b in sb.flush()]
        return out

    want, got = run(None), run(stop_at=2)
    assert len(want) == len(got) > 1
    for a, b in zip(want, got, strict=True):
        width = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
        for key, pad in (("input_ids", PAD_ID), ("labels", -100), ("attention_mask", 0)):
            pa = torch.nn.functional.pad(a[key], (0, width - a[key].shape[1]), value=pad)
            pb = torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=pad)
            assert torch.equal(pa, pb), key


def test_the_raw_pool_takes_pad_values_and_names():
    pool = SelectionPool(2, pad_values=[0, None], names=["tokens", "weights"])
    every = sbkernels.Selection(torch.arange(2), torch.tensor(2, dtype=torch.int32), torch.zeros(2), torch.ones(2))
    pool.push(every, torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 4))
    pool.push(every, torch.full((2, 5), 2), torch.ones(2, 4))
    first, second = pool.ready_batches(sync=True)
    assert first[0].tolist() == [[1, 1, 1]] * 2 and second[0].tolist() == [[2] * 5] * 2  # as wide as pushed
    with pytest.raises(ValueError, match=r"weights has rows \(5,\)"):
        pool.push(every, torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 5))


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("policy", ["uniform", "sb"])
def test_a_backward_batch_is_never_wider_than_the_widest_push_its_rows_came_from(late, policy):
    """#30: the pool re-padded every batch to the longest sequence it ever held, so after one 128-token
    sequence every batch of 8-token rows was (B, 128). Each batch is now cut to the widest loader batch its
    rows came from, known on the host from each push's width and row count (late readbacks: the GPU's
    asynchronous path). Every row still comes out once, its own tokens intact and padded with its pad."""
    from tests.helpers import LateReadbacks

    gen = torch.Generator().manual_seed(7)
    chosen = Uniform(rate=0.6, seed=1) if policy == "uniform" else sbkernels.SB(beta=1.0, history_size=16, seed=1)
    sb = sbkernels.SelectiveBackprop(
        3, chosen, pad_values={"input_ids": PAD_ID}, readback=LateReadbacks(3, seed=2) if late else None
    )
    widths, originals, seen = {}, {}, []
    lengths_per_step = [[120, 3], *([[int(n) for n in torch.randint(2, 9, (4,), generator=gen)]] * 12)]
    batches = []
    for step, lengths in enumerate(lengths_per_step):
        batch, _ = collated(lengths, seed=step)
        ids = torch.arange(len(lengths)) + 10 * step
        for i, sample in enumerate(ids.tolist()):
            widths[sample], originals[sample] = max(lengths), batch["input_ids"][i]
        sb.observe(torch.rand(len(lengths), generator=gen), None, batch, sample_ids=ids)
        batches += list(sb.ready_batches())
    batches += list(sb.flush())
    for out in batches:
        width = out.data["input_ids"].shape[1]
        assert width == max(widths[s] for s in out.sample_ids.tolist())  # the widest push, no wider
        for i, sample in enumerate(out.sample_ids.tolist()):
            row, own = out.data["input_ids"][i], originals[sample]
            keep = min(width, own.shape[0])
            assert torch.equal(row[:keep], own[:keep]) and bool((row[keep:] == PAD_ID).all())
            seen.append(sample)
    assert len(seen) == len(set(seen)) and sb.counts["backward"] == len(seen)
    assert max(out.data["input_ids"].shape[1] for out in batches[-3:]) < 120  # the long row is gone by then
