"""One table for a user deciding whether to adopt sbkernels: selection and gather, against the alternatives.

    python -m benchmarks.report                 # CUDA if present, else CPU; writes benchmarks/results/
    python -m benchmarks.report --out DIR --quick

For every shape (N, C, dtype) and method of benchmarks/baselines.py, in one run: median time per call
(eager; input sets rotated so repeated calls do not measure the cache), host syncs per call (CUDA sync
debug warnings), kernels per call (CUDA profiler) or aten ops per call (CPU), achieved bandwidth as a
fraction of the measured device-to-device copy bandwidth (bytes: logits + targets read, per-row outputs
written), and peak extra memory (CUDA). sbkernels also gets its CUDA-graph replay time (GPU time without
launch gaps). A second table times gathering half of a 1024x3x224x224 bf16 batch plus labels.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from . import baselines
from .measure import (
    copy_bandwidth,
    count_kernels,
    count_ops,
    count_syncs,
    device_name,
    extra_memory,
    free_memory,
    git_commit,
    graph_seconds,
    median_seconds,
    slug,
)

GPU_SHAPES = [(128, 10, "float32"), (1024, 1000, "float32"), (8192, 32000, "bfloat16"), (16384, 131072, "bfloat16")]
CPU_SHAPES = [(128, 10, "float32"), (1024, 1000, "float32"), (2048, 32000, "bfloat16"), (8192, 131072, "bfloat16")]
ROTATE_BYTES = 256 << 20  # input sets cycled per shape: more than any L2 cache
HEAVY_BYTES = 1 << 30  # logits past this: one input set, one warm-up call, timed calls within HEAVY_SECONDS
HEAVY_SECONDS = 10.0
CPU_SECONDS = 2.0  # other shapes on CPU: timed calls within this (at least --reps): medians of many calls
# Peak extra memory of each method, in float32 copies of the logits (upcast, log-softmax, their temporaries;
# rounded up): a method runs on a shape only if that much memory is free, with MEMORY_MARGIN to spare.
FLOAT32_COPIES = {"sbkernels": 0, "sbkernels select only": 0, "sbkernels keep": 0, "eager reference": 6,
                  "torch.compile reference": 5, "Composer keep": 3, "naive loop": 3}  # fmt: skip
MEMORY_MARGIN = 3 << 30


def selection_rows(device: torch.device, shapes, reps: int, bandwidth: float) -> list[dict]:
    rows = []
    for n, num_classes, dtype_name in shapes:
        dtype = getattr(torch, dtype_name)
        logit_bytes = n * num_classes * torch.finfo(dtype).bits // 8
        heavy = logit_bytes > HEAVY_BYTES
        sets = max(1, min(8, math.ceil(ROTATE_BYTES / logit_bytes))) if device.type == "cuda" else 2
        sets, warmup, budget, least = (1, 1, HEAVY_SECONDS, 3) if heavy else (sets, 3, None, reps)
        if device.type == "cpu" and not heavy:
            budget = CPU_SECONDS
        if logit_bytes * sets + MEMORY_MARGIN > free_memory(device):
            print(f"  shape N={n} C={num_classes} {dtype_name}: skipped, {logit_bytes / 2**30:.1f} GiB of logits")
            continue
        gen = torch.Generator(device=device).manual_seed(0)
        inputs = [
            (
                torch.randn(n, num_classes, device=device, dtype=dtype, generator=gen),
                torch.randint(0, num_classes, (n,), device=device, generator=gen),
                torch.randn(n, 1, device=device, generator=gen),
            )
            for _ in range(sets)
        ]
        moved = logit_bytes + n * 8 + n * (8 + 4 + 4)
        if device.type == "cpu":  # a shared CPU's speed drifts: the copy measured next to this shape's rows
            bandwidth = copy_bandwidth(device)
        print(
            f"  shape N={n} C={num_classes} {dtype_name}: {sets} input sets, {moved / 1e6:.1f} MB per call, "
            f"copy bandwidth {bandwidth / 1e9:.1f} GB/s"
        )
        for name, fn in baselines.methods(n, inputs[0][2]).items():
            need = FLOAT32_COPIES[name] * n * num_classes * 4
            if need + MEMORY_MARGIN > free_memory(device):
                free = free_memory(device) / 2**30
                print(f"    {name:<26} not run: needs ~{need / 2**30:.0f} GiB, {free:.0f} GiB free")
                rows.append({"N": n, "C": num_classes, "dtype": dtype_name, "method": name, "median_us": None,
                             "skipped": f"not run: needs ~{need / 2**30:.0f} GiB, {free:.0f} GiB free"})  # fmt: skip
                continue
            seconds = median_seconds(fn, inputs, device, reps, warmup, budget, least)
            row = {
                "N": n, "C": num_classes, "dtype": dtype_name, "method": name, "median_us": seconds * 1e6,
                "bandwidth_fraction": moved / seconds / bandwidth, "copy_GBps": bandwidth / 1e9,
            }  # fmt: skip
            if device.type == "cuda":
                row["syncs_per_call"] = count_syncs(fn, inputs[0])
                row["kernels_per_call"] = count_kernels(fn, inputs[0])
                row["extra_memory_MB"] = extra_memory(fn, inputs[0]) / 1e6
                if name == "sbkernels":
                    graph = graph_seconds(fn, inputs[0])
                    row["graph_us"] = None if graph is None else graph * 1e6
            elif not heavy:
                row["aten_ops_per_call"] = count_ops(fn, inputs[0])
            print(f"    {name:<26} {seconds * 1e6:12.1f} us  bw {row['bandwidth_fraction']:6.1%}")
            rows.append(row)
        del inputs
    for row in rows:
        eager = next(r for r in rows if r["N"] == row["N"] and r["C"] == row["C"] and r["method"] == "eager reference")
        timed = row["median_us"] is not None and eager["median_us"] is not None
        row["speedup_vs_eager"] = eager["median_us"] / row["median_us"] if timed else None
    return rows


def gather_rows_table(device: torch.device, reps: int, bandwidth: float, n: int) -> list[dict]:
    from sbkernels import gather_rows, new_cursor

    gen = torch.Generator(device=device).manual_seed(1)
    images = torch.randn(n, 3, 224, 224, device=device, generator=gen).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (n,), device=device, generator=gen)
    chosen = torch.randperm(n, device=device, generator=gen)[: n // 2].sort().values
    indices = torch.full((n,), -1, dtype=torch.int64, device=device)
    indices[: n // 2] = chosen
    count = torch.tensor(n // 2, dtype=torch.int32, device=device)
    appends = 4  # gathers per timed call, appending to one pool: the cursor reset (a tiny kernel) is amortized
    pool_images = torch.empty(appends * (n // 2), 3, 224, 224, device=device, dtype=torch.bfloat16)
    pool_labels = torch.empty(appends * (n // 2), dtype=torch.int64, device=device)
    cursor = new_cursor(device)
    held = [images[:0], labels[:0]]

    def one_gather():
        gather_rows([images, labels], indices, count, [pool_images, pool_labels], cursor)

    def fused():
        cursor.zero_()
        for _ in range(appends):
            one_gather()

    def index_select_cat():  # what a pool without sbkernels does: select, then append by concatenation
        picked_images = images.index_select(0, chosen)
        picked_labels = labels.index_select(0, chosen)
        return torch.cat([held[0], picked_images]), torch.cat([held[1], picked_labels])

    moved = 2 * (n // 2) * (3 * 224 * 224 * 2 + 8)
    rows = []
    # (name, timed function, calls it makes, one call for counting kernels and syncs)
    methods = (("sbkernels gather_rows", fused, appends, one_gather), ("index_select + cat", index_select_cat, 1, None))
    for name, fn, calls, single in methods:
        seconds = median_seconds(fn, [()], device, reps) / calls
        single = single or fn
        cursor.zero_()
        row = {
            "method": name,
            "rows": n // 2,
            "median_us": seconds * 1e6,
            "bandwidth_fraction": moved / seconds / bandwidth,
        }
        if device.type == "cuda":
            row["kernels_per_call"] = count_kernels(single, ())
            row["syncs_per_call"] = count_syncs(single, ())
        else:
            row["aten_ops_per_call"] = count_ops(single, ())
        print(f"    {name:<26} {seconds * 1e6:12.1f} us  bw {row['bandwidth_fraction']:6.1%}")
        rows.append(row)
    return rows


def markdown(meta: dict, rows: list[dict], gather: list[dict]) -> str:
    cuda = meta["device_type"] == "cuda"
    head = ["shape", "method", "median us", "x eager", "bw / copy bw"]
    head += ["syncs", "kernels", "extra MB", "graph us"] if cuda else ["aten ops"]
    lines = [
        f"# Selection benchmark: {meta['device']}",
        "",
        f"{'GPU' if cuda else 'CPU (no GPU in this run: CPU numbers, not GPU claims)'}; torch {meta['torch']}, "
        f"triton {meta['triton']}, commit {meta['commit']}, {meta['date']}; copy bandwidth "
        f"{meta['copy_bandwidth_GBps']:.0f} GB/s (read + write).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        if r["median_us"] is None:
            lines.append(
                f"| {r['N']}x{r['C']} {r['dtype']} | {r['method']} | {r['skipped']} |" + " |" * (len(head) - 3)
            )
            continue
        speedup = "" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}"
        cells = [
            f"{r['N']}x{r['C']} {r['dtype']}", r["method"], f"{r['median_us']:.1f}", speedup,
            f"{r['bandwidth_fraction']:.1%}",
        ]  # fmt: skip
        if cuda:
            graph = r.get("graph_us")
            cells += [str(r["syncs_per_call"]), str(r["kernels_per_call"]), f"{r['extra_memory_MB']:.1f}"]
            cells += ["" if graph is None else f"{graph:.1f}"]
        else:
            cells += [str(r.get("aten_ops_per_call", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    if not cuda:
        lines += [
            "",
            "On CPU the sbkernels rows run the native C++ kernels (select_sb_cpu or sample_rows_cpu, then",
            "gather_rows; the Triton kernels are for CUDA) and include the gather and a cursor reset: their aten-op",
            "count sees the native ops, not their inside. CPU copy bandwidth is measured with `Tensor.copy_`, which",
            "memcpy-based row copies can exceed. The bandwidth column divides by the copy measured right before",
            "each shape's rows (the speed of this shared machine drifts): "
            + ", ".join(
                dict.fromkeys(f"{r['N']}x{r['C']}: {r['copy_GBps']:.1f} GB/s" for r in rows if "copy_GBps" in r)
            )
            + ".",
        ]
    title = (
        f"Gathering half of a {gather[0]['rows'] * 2}x3x224x224 bf16 batch plus labels (sbkernels: median per "
        "gather, timed as 4 appends to one pool after one cursor reset):"
    )
    lines += ["", title, ""]
    lines += [
        "| method | median us | bw / copy bw | " + ("kernels | syncs |" if cuda else "aten ops |"),
        "|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for g in gather:
        extra = f"{g['kernels_per_call']} | {g['syncs_per_call']} |" if cuda else f"{g['aten_ops_per_call']} |"
        lines.append(f"| {g['method']} | {g['median_us']:.1f} | {g['bandwidth_fraction']:.1%} | {extra}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    import triton

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed calls per method (default 100 GPU; CPU: at least 10, as many as fit in 2 s)",
    )
    parser.add_argument("--quick", action="store_true", help="only the two small shapes and a small gather")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    reps = args.reps or (100 if device.type == "cuda" else 10)
    shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    if args.quick:
        shapes = shapes[:2]
    bandwidth = copy_bandwidth(device)
    meta = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "triton": triton.__version__, "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "copy_bandwidth_GBps": bandwidth / 1e9, "reps": reps,
    }  # fmt: skip
    print(f"{meta['device']}: copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    rows = selection_rows(device, shapes, reps, bandwidth)
    print("  gather")
    gather = gather_rows_table(device, reps, bandwidth, 64 if args.quick else 1024)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = slug(meta["device"]) if device.type == "cuda" else "cpu"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "selection": rows, "gather": gather}, indent=1))
    table = markdown(meta, rows, gather)
    (out / f"{stem}.md").write_text(table)
    print("\n" + table)
    return {"meta": meta, "selection": rows, "gather": gather}


if __name__ == "__main__":
    main()
