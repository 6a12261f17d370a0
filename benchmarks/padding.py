"""How much of a backward batch is padding: the pool's batches against the selected rows' own lengths.

    python -m benchmarks.padding                    # long-tailed lengths, a few seconds on the CPU

Sequence lengths are drawn from a long-tailed (log-normal) distribution, 4 to 512 tokens; loader batches of
32 are padded to their own longest row (dynamic padding, as a collator does); ``SelectiveBackprop`` with
SB(beta=1) selects on random losses into backward batches of 32. For every backward batch, the tokens it
holds (rows x width) against its rows' own lengths, for:

- **after**: the width the pool hands out (the widest loader batch the batch's rows came from);
- **before** (#30): the width the pool used to hand out, the longest row it had held since the start
  (re-padding never shrank), computed from the same run's pushes;
- the loader batches' own padding (what training on every row pays with dynamic padding), for scale.

Counted on the host from shapes: no device time is measured, so the numbers hold on any device.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import sbkernels

RESULTS = Path(__file__).resolve().parent / "results"
PAD = 0


def lengths(count: int, seed: int) -> torch.Tensor:
    """Long-tailed lengths: log-normal around 24 tokens, clipped to [4, 512]."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(count, generator=gen) * 1.0 + 3.2).exp().round().clamp(4, 512).long()


def run(rows: int, loader_batch: int, backward_batch: int, seed: int) -> dict[str, float]:
    sizes = lengths(rows, seed)
    sb = sbkernels.SelectiveBackprop(backward_batch, sbkernels.SB(beta=1.0, history_size=256, seed=seed),
                                     pad_values={"input_ids": PAD})  # fmt: skip
    own = {}
    widest_so_far, before, after, kept, loader_tokens = 0, 0, 0, 0, 0
    gen = torch.Generator().manual_seed(seed + 1)

    def count(batches) -> None:
        nonlocal before, after, kept
        for batch in batches:
            n, width = batch.data["input_ids"].shape
            after += n * width
            before += n * widest_so_far
            kept += sum(own[s] for s in batch.sample_ids.tolist())

    for start in range(0, rows, loader_batch):
        chunk = sizes[start : start + loader_batch]
        width = int(chunk.max())
        ids = torch.full((chunk.shape[0], width), PAD)
        mask = torch.zeros_like(ids)
        for i, n in enumerate(chunk.tolist()):
            ids[i, :n], mask[i, :n] = 1 + torch.arange(n) % 97, 1
            own[start + i] = n
        widest_so_far = max(widest_so_far, width)
        loader_tokens += chunk.shape[0] * width
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, -100)}
        sb.observe(torch.rand(chunk.shape[0], generator=gen), None, batch,
                   sample_ids=torch.arange(start, start + chunk.shape[0]))  # fmt: skip
        count(sb.ready_batches())
    count(sb.flush())
    return {"own_tokens": kept, "before_tokens": before, "after_tokens": after, "before_padding": 1 - kept / before,
            "after_padding": 1 - kept / after, "loader_padding": 1 - int(sizes.sum()) / loader_tokens}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "padding-cpu")
    args = parser.parse_args()
    sizes = lengths(args.rows, 0)
    lines = [
        f"Lengths: {args.rows} rows, median {int(sizes.median())}, 99th percentile "
        f"{int(sizes.float().quantile(0.99))}, max {int(sizes.max())} tokens (log-normal, clipped to [4, 512]).",
        "",
        "| loader batch | backward batch | seed | backward tokens before | after | rows' own tokens | padding "
        "before | padding after | after / before | loader batches' own padding |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = []
    for loader_batch, backward_batch in ((32, 32), (64, 32)):
        for seed in range(args.seeds):
            r = run(args.rows, loader_batch, backward_batch, seed)
            results.append({"loader_batch": loader_batch, "backward_batch": backward_batch, "seed": seed, **r})
            lines.append(
                f"| {loader_batch} | {backward_batch} | {seed} | {r['before_tokens']:,} | {r['after_tokens']:,} | "
                f"{r['own_tokens']:,} | {r['before_padding']:.0%} | {r['after_padding']:.0%} | "
                f"{r['after_tokens'] / r['before_tokens']:.2f} | {r['loader_padding']:.0%} |"
            )
    print("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(
        "# Padding in backward batches, `python -m benchmarks.padding` (counted from shapes)\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
