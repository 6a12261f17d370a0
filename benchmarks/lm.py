"""Language-model scoring: per-sequence losses, the fused op against the route users write by hand, and
the linear form (from hidden states) against the matrix product it replaces.

    python -m benchmarks.lm [--device cpu|cuda] [--tokens 8 1024] [--vocab 32000 128256] [--hidden 768]
                            [--out PATH]

Part 1, one run, medians: ``sbkernels.sequence_losses`` against per-token ``F.cross_entropy`` plus a mean
per sequence, at B x T tokens, each V, fp32 and bf16 (CPU: the native kernels; CUDA: the Triton kernels).
Part 2: ``linear_sequence_losses(hidden, weight, labels)`` against ``hidden @ weight.T`` alone and against
that product followed by the fused op, time and peak memory, each case in a fresh subprocess with its
inputs made first. Peak memory beyond the inputs is the resident high-water mark (VmHWM) on CPU and the
caching allocator's peak on CUDA.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import sbkernels

from .measure import device_name, git_commit, median_seconds

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cross_entropy_route(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What a user writes without sbkernels: per-token losses, then the mean over each sequence's tokens."""
    x, t = logits[:, :-1], labels[:, 1:]
    token = F.cross_entropy(x.reshape(-1, x.shape[-1]), t.reshape(-1), reduction="none").view(t.shape)
    valid = t != -100
    return (token * valid).sum(1) / valid.sum(1).clamp_min(1)


def inputs(batch: int, length: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float32).to(device, dtype)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[:, -length // 8 :] = -100  # padding at the end of every sequence
    return logits, labels.to(device)


def median_ms(fn, args: tuple, device: torch.device, reps: int) -> float:
    return 1e3 * median_seconds(fn, [args], device, reps, warmup=1)


def part1(batch: int, length: int, vocabs: list[int], device: torch.device, reps: int) -> list[dict]:
    rows = []
    for vocab in vocabs:
        for name, dtype in DTYPES.items():
            logits, labels = inputs(batch, length, vocab, dtype, device)
            fused = median_ms(sbkernels.sequence_losses, (logits, labels), device, reps)
            route = median_ms(cross_entropy_route, (logits, labels), device, reps)
            diff = (sbkernels.sequence_losses(logits, labels) - cross_entropy_route(logits, labels)).abs().max()
            rows.append({"V": vocab, "dtype": name, "fused_ms": fused, "cross_entropy_ms": route,
                         "speedup": route / fused, "max_abs_diff": float(diff)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            del logits
    return rows


CASE = r"""
import sys, torch, sbkernels
from benchmarks.measure import extra_memory, median_seconds
batch, length, width, vocab, dtype, case, reps, device = sys.argv[1:9]
batch, length, width, vocab, reps = int(batch), int(length), int(width), int(vocab), int(reps)
dtype, device = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype], torch.device(device)
gen = torch.Generator(device).manual_seed(0)
# Made in the dtype on the device: no freed staging copy counts as the case's memory.
hidden = torch.randn(batch, length, width, generator=gen, dtype=dtype, device=device)
weight = torch.randn(vocab, width, generator=gen, dtype=dtype, device=device).div_(width**0.5)
labels = torch.randint(0, vocab, (batch, length), generator=gen, device=device)
cases = {
    "matmul": lambda: hidden @ weight.T,
    "matmul+fused": lambda: sbkernels.sequence_losses(hidden @ weight.T, labels),
    "linear": lambda: sbkernels.linear_sequence_losses(hidden, weight, labels),
}
def high_water() -> int:  # VmHWM: this process's peak resident set (exec starts it afresh; ru_maxrss does not)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
if device.type == "cuda":
    seconds = median_seconds(cases[case], [()], device, reps, warmup=1)
    extra = extra_memory(cases[case], ())
else:
    base = high_water()
    seconds = median_seconds(cases[case], [()], device, reps, warmup=1)  # each result freed at once
    extra = high_water() - base
print(1e3 * seconds, extra)
"""


def part2(batch: int, length: int, width: int, vocab: int, device: torch.device, reps: int) -> list[dict]:
    rows = []
    for name in DTYPES:
        logits_bytes = batch * length * vocab * DTYPES[name].itemsize
        for case in ("matmul", "matmul+fused", "linear"):
            args = [str(v) for v in (batch, length, width, vocab, name, case, reps, device)]
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
        f"# Language-model scoring on {meta['device_type'].upper()}",
        "",
        f"{meta['device']}, torch {meta['torch']}, commit {meta['commit']}. Command: `{meta['command']}`.",
        "One run; medians." + (" CPU numbers, not GPU claims." if meta["device_type"] == "cpu" else ""),
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
        "Extra peak: memory beyond the inputs at the case's peak (CPU: resident high-water mark; CUDA: the",
        "caching allocator's peak), over the size of the (B, T, V) logits.",
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
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--tokens", type=int, nargs=2, default=[8, 1024], metavar=("B", "T"))
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_256])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--linear-vocab", type=int, default=32_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, help="results path without suffix (default benchmarks/results/lm-DEVICE)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    out = args.out or Path(f"benchmarks/results/lm-{'gpu' if device.type == 'cuda' else 'cpu'}")
    batch, length = args.tokens
    command = "python -m benchmarks.lm " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "commit": git_commit(), "command": command, "tokens": f"{batch} x {length}", "hidden": args.hidden,
            "linear_vocab": args.linear_vocab}  # fmt: skip
    first = part1(batch, length, args.vocab, device, args.reps)
    second = part2(batch, length, args.hidden, args.linear_vocab, device, args.reps)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "losses": first, "linear": second}, indent=1))
    out.with_suffix(".md").write_text(markdown(meta, first, second))
    print(markdown(meta, first, second))


if __name__ == "__main__":
    main()
