"""Language-model scoring on this machine: per-sequence losses, the fused op against the route users write
by hand, and the linear form (from hidden states) against the matrix product it replaces.

    python -m benchmarks.lm [--tokens 8 1024] [--vocab 32000 128256] [--hidden 768] [--out PATH]

Part 1, one run, medians: ``sbkernels.sequence_losses`` against per-token ``F.cross_entropy`` plus a mean
per sequence, at B x T tokens, each V, fp32 and bf16 (CPU: the native kernels).
Part 2: ``linear_sequence_losses(hidden, weight, labels)`` against ``hidden @ weight.T`` alone and against
that product followed by the fused op, time and peak memory. Peak memory is the process's resident
high-water mark (VmHWM) measured in a fresh subprocess per case (inputs allocated and touched first), so it
counts what the case adds beyond its inputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sbkernels

from .measure import device_name, git_commit

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_ms(fn, args: tuple, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cross_entropy_route(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What a user writes without sbkernels: per-token losses, then the mean over each sequence's tokens."""
    x, t = logits[:, :-1], labels[:, 1:]
    token = F.cross_entropy(x.reshape(-1, x.shape[-1]), t.reshape(-1), reduction="none").view(t.shape)
    valid = t != -100
    return (token * valid).sum(1) / valid.sum(1).clamp_min(1)


def inputs(batch: int, length: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float32).to(dtype)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[:, -length // 8 :] = -100  # padding at the end of every sequence
    return logits, labels


def part1(batch: int, length: int, vocabs: list[int], reps: int) -> list[dict]:
    rows = []
    for vocab in vocabs:
        for name, dtype in DTYPES.items():
            logits, labels = inputs(batch, length, vocab, dtype)
            fused = median_ms(sbkernels.sequence_losses, (logits, labels), reps)
            route = median_ms(cross_entropy_route, (logits, labels), reps)
            diff = (sbkernels.sequence_losses(logits, labels) - cross_entropy_route(logits, labels)).abs().max()
            rows.append({"V": vocab, "dtype": name, "fused_ms": fused, "cross_entropy_ms": route,
                         "speedup": route / fused, "max_abs_diff": float(diff)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            del logits
    return rows


CASE = r"""
import sys, time, statistics, torch, torch.nn.functional as F, sbkernels
batch, length, width, vocab, dtype, case, reps = sys.argv[1:8]
batch, length, width, vocab, reps = int(batch), int(length), int(width), int(vocab), int(reps)
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
gen = torch.Generator().manual_seed(0)
hidden = torch.randn(batch, length, width, generator=gen, dtype=dtype)  # made in the dtype: no freed staging
weight = torch.randn(vocab, width, generator=gen, dtype=dtype).div_(width**0.5)
labels = torch.randint(0, vocab, (batch, length), generator=gen)
cases = {
    "matmul": lambda: hidden @ weight.T,
    "matmul+fused": lambda: sbkernels.sequence_losses(hidden @ weight.T, labels),
    "linear": lambda: sbkernels.linear_sequence_losses(hidden, weight, labels),
}
def high_water() -> int:  # VmHWM: this process's peak resident set (exec starts it afresh; ru_maxrss does not)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
base = high_water()
times = []
for i in range(reps + 1):
    start = time.perf_counter()
    out = cases[case]()
    del out
    if i:
        times.append(time.perf_counter() - start)
peak = high_water()
print(1e3 * statistics.median(times), (peak - base) * 1024)
"""


def part2(batch: int, length: int, width: int, vocab: int, reps: int) -> list[dict]:
    rows = []
    for name in DTYPES:
        logits_bytes = batch * length * vocab * DTYPES[name].itemsize
        for case in ("matmul", "matmul+fused", "linear"):
            args = [str(v) for v in (batch, length, width, vocab, name, case, reps)]
            done = subprocess.run(
                [sys.executable, "-c", CASE, *args], capture_output=True, text=True, check=True, timeout=3600
            )
            ms, extra = done.stdout.split()
            rows.append({"dtype": name, "case": case, "ms": float(ms), "extra_peak_MB": int(extra) / 2**20,
                         "extra_over_logits": int(extra) / logits_bytes})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(meta: dict, first: list[dict], second: list[dict]) -> str:
    lines = [
        "# Language-model scoring on CPU",
        "",
        f"{meta['device']}, torch {meta['torch']}, commit {meta['commit']}. Command: `{meta['command']}`.",
        "One run; medians. CPU numbers, not GPU claims.",
        "",
        f"## `sequence_losses` against the `F.cross_entropy` route ({meta['tokens']} tokens)",
        "",
        "| V | dtype | sequence_losses (ms) | F.cross_entropy + mean (ms) | speedup | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in first:
        lines.append(
            f"| {r['V']:,} | {r['dtype']} | {r['fused_ms']:.1f} | {r['cross_entropy_ms']:.1f} | "
            f"{r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        f"## The linear form ({meta['tokens']} tokens, H = {meta['hidden']}, V = {meta['linear_vocab']:,})",
        "",
        "Extra peak: resident high-water mark beyond the inputs, over the size of the (B, T, V) logits.",
        "",
        "| dtype | case | ms | vs matmul | extra peak (MB) | extra peak / logits |",
        "|---|---|---|---|---|---|",
    ]
    for r in second:
        base = next(x["ms"] for x in second if x["dtype"] == r["dtype"] and x["case"] == "matmul")
        lines.append(
            f"| {r['dtype']} | {r['case']} | {r['ms']:.0f} | {r['ms'] / base:.2f}x | {r['extra_peak_MB']:.0f} | "
            f"{100 * r['extra_over_logits']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs=2, default=[8, 1024], metavar=("B", "T"))
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_256])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--linear-vocab", type=int, default=32_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lm-cpu"))
    args = parser.parse_args(argv)
    batch, length = args.tokens
    meta = {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "commit": git_commit(),
            "command": "python -m benchmarks.lm " + " ".join(argv if argv is not None else sys.argv[1:]),
            "tokens": f"{batch} x {length}", "hidden": args.hidden, "linear_vocab": args.linear_vocab}  # fmt: skip
    first = part1(batch, length, args.vocab, args.reps)
    second = part2(batch, length, args.hidden, args.linear_vocab, args.reps)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "losses": first, "linear": second}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(meta, first, second))
    print(markdown(meta, first, second))


if __name__ == "__main__":
    main()
