"""What global selection costs across ranks, and how late a selected row reaches its backward step.

    python -m benchmarks.distributed                  # 2 gloo ranks on the CPU
    python -m benchmarks.distributed --world 4 --calls 300

Part 1, per ``select`` call, medians over ``--calls`` calls, side by side in one run on every rank: the
single-process call on the local batch, the global call (process group), and the collective alone (the
same ``all_gather`` of ``[losses, flags, N]``). Part 2: a ``SelectiveBackprop`` loop with a process group
and unequal selectivity (rank 0's rows are hard); for every selected row, the pushes between its selection
and its backward step, per ``lag``, and the host waits. On CPU with gloo: not a GPU or NCCL claim.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sbkernels
from sbkernels.distributed import release_collective_tensors

from .measure import git_commit

SHAPES = [(128, 10), (1024, 10), (1024, 1000)]


def _median_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def select_costs(rank: int, world: int, calls: int) -> list[dict]:
    rows = []
    group = dist.group.WORLD
    for n, num_classes in SHAPES:
        gen = torch.Generator().manual_seed(rank)
        logits, targets = torch.randn(n, num_classes, generator=gen), torch.randint(0, num_classes, (n,), generator=gen)
        alone = sbkernels.SelectorState(1024, seed=0)
        together = sbkernels.SelectorState(1024, seed=0, process_group=group)
        payload = torch.zeros(2 * n + 1)
        gathered = torch.empty(world * (2 * n + 1))
        for _ in range(5):  # warm-up
            sbkernels.select(logits, targets, alone, beta=2.0)
            sbkernels.select(logits, targets, together, beta=2.0)
        local = _median_us(partial(sbkernels.select, logits, targets, alone, beta=2.0), calls)
        global_ = _median_us(partial(sbkernels.select, logits, targets, together, beta=2.0), calls)
        collective = _median_us(partial(dist.all_gather_into_tensor, gathered, payload, group=group), calls)
        rows.append({"n": n, "c": num_classes, "local_us": local, "global_us": global_, "collective_us": collective})
    return rows


def step_lag(rank: int, world: int, lag: int, pushes: int = 200, n: int = 128, batch: int = 64) -> dict:
    """Pushes between each row's selection and its backward step, with unequal selectivity across ranks."""
    group = dist.group.WORLD
    sb = sbkernels.SelectiveBackprop(batch, sbkernels.SB(beta=2.0, seed=1), process_group=group, lag=lag)
    selected_at: dict[int, int] = {}
    delays = []
    gen = torch.Generator().manual_seed(50 + rank)
    for p in range(pushes):
        scale = 4.0 if rank == 0 else 1.0 + (p % 7) * 0.1  # rank 0's rows stay hard
        logits, targets = torch.randn(n, 10, generator=gen) * scale, torch.randint(0, 10, (n,), generator=gen)
        ids = torch.arange(n) + p * n
        sel = sb.observe(logits, targets, targets, sample_ids=ids)
        for i in ids[sel.indices[: int(sel.count)]].tolist():
            selected_at[i] = p
        for b in sb.ready_batches():
            delays += [p - selected_at[i] for i in b.sample_ids.tolist()]
    held = sum(1 for _ in sb.flush())
    return {
        "lag": lag,
        "mean_delay": statistics.mean(delays) if delays else None,
        "max_delay": max(delays) if delays else None,
        "steps": len(delays) // batch,
        "final_batches": held,
        "host_waits": sb.coordinator.host_waits,
        "backward": sb.counts["backward"],
    }


def _rank(rank: int, world: int, store: str, out: str, calls: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))  # fmt: skip
    result = {"select": select_costs(rank, world, calls), "lag": [step_lag(rank, world, lag) for lag in (0, 1, 2, 4)]}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    release_collective_tensors()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank, args=(args.world, f"{tmp}/store", tmp, args.calls), nprocs=args.world,
                           start_method="spawn")  # fmt: skip
        results = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(args.world)]
    meta = {"world": args.world, "backend": "gloo (CPU)", "commit": git_commit(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count()}  # fmt: skip
    lines = [
        f"# Global selection across {args.world} ranks: gloo on a {meta['cores']}-core CPU (not a GPU/NCCL claim)",
        "",
        f"torch {meta['torch']}, commit {meta['commit']}, {meta['date']}; medians of {args.calls} calls, rank 0 "
        "(ranks synchronized by a barrier before every call). SB beta=2, history 1024, default backend (native C++).",
        "",
        "| N per rank x C | single-process select (us) | global select (us) | collective alone (us) | added (us) |",
        "|---|---|---|---|---|",
    ]
    for r in results[0]["select"]:
        added = r["global_us"] - r["local_us"]
        lines.append(f"| {r['n']} x {r['c']} | {r['local_us']:.0f} | {r['global_us']:.0f} | "
                     f"{r['collective_us']:.0f} | {added:.0f} |")  # fmt: skip
    lines += [
        "",
        "Step decision lag: 200 pushes of 128 rows per rank, batch 64, rank 0's rows hard (it selects more);",
        "pushes between a row's selection and its backward step (0 = the same push), per rank.",
        "",
        "| lag | rank | mean delay (pushes) | max delay | steps | final batches | host waits |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, result in enumerate(results):
        for r in result["lag"]:
            lines.append(f"| {r['lag']} | {rank} | {r['mean_delay']:.2f} | {r['max_delay']} | {r['steps']} | "
                         f"{r['final_batches']} | {r['host_waits']} |")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed-cpu.json").write_text(json.dumps({"meta": meta, "ranks": results}, indent=1))
    (out / "distributed-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"meta": meta, "ranks": results}


if __name__ == "__main__":
    main()
