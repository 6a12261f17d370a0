"""What global selection costs inside the frameworks on several processes: each framework's selective DDP
run against the same framework's plain DDP run, side by side (arms interleaved, medians over repeats).

    python -m benchmarks.frameworks_ddp                 # 2 gloo processes per run on the CPU; a few minutes
    python -m benchmarks.frameworks_ddp --repeats 5

- Hugging Face: ``torchrun --nproc_per_node 2 -m examples.hf_ddp`` (a tiny GPT-2) with
  ``SelectiveBackpropTrainer`` (SB(beta=1), backward batch 8 = the loader batch) against ``--plain``
  (``transformers.Trainer``); 16 rows per rank per optimizer step in both (accumulation 2). Time: the
  Trainer's ``train_runtime`` (no evaluation, no checkpoints).
- Lightning: ``python -m examples.lightning_ddp`` (an MLP on digits) with ``SelectiveBackpropModule``
  (SB(beta=2), backward batch 16, accumulation 2) against ``--plain``; 32 rows per rank per step in both.
  Time: the training loop (``on_train_start`` to ``on_train_end``), without the process group's start-up.

Reported per optimizer step and per loader batch (what an epoch costs): a selective step needs about
1 / keep-rate loader batches, each scored. CPU and gloo: not a GPU or NCCL claim; the models are tiny, so
the frameworks' fixed costs weigh more than they would on a real model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from examples._distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TIMEOUT_S = 600


def _run(command: list[str]) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={"OMP_NUM_THREADS": "1", **os.environ})  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def hf_arm(selective: bool, steps: int, out: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "examples.hf_ddp", "--output", str(out / "hf"), "--max-steps", str(steps),
               "--save-steps", "100000", "--eval-steps", "100000", "--backward-batch", "8"]  # fmt: skip
    if selective:
        command += ["--record", str(out / "hf_record")]
    else:
        command += ["--plain"]
    text = _run(command)
    seconds = float(re.search(r"([\d.]+) s\b", text.strip().splitlines()[-1]).group(1))  # type: ignore[union-attr]
    loader_batches = steps * 2  # plain: every loader batch is a backward batch
    if selective:
        record = torch.load(out / "hf_record" / "rank0.pt", weights_only=False)
        loader_batches = record["counts"]["scored"] / 8
    return {"seconds": seconds, "steps": steps, "loader_batches": loader_batches}


def lightning_arm(selective: bool, epochs: int, out: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "examples.lightning_ddp", "--epochs", str(epochs), "--record", str(out / "lt")]
    if not selective:
        command += ["--plain"]
    _run(command)
    record = torch.load(out / "lt" / "rank0.pt", weights_only=False)
    return {
        "seconds": record["seconds"],
        "steps": record["global_step"],
        "loader_batches": epochs * record["loader_batches"],
    }


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "per_step_ms": statistics.median(1000 * r["seconds"] / r["steps"] for r in runs),
        "per_loader_batch_ms": statistics.median(1000 * r["seconds"] / r["loader_batches"] for r in runs),
        "steps": statistics.median(r["steps"] for r in runs),
        "loader_batches": statistics.median(r["loader_batches"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-steps", type=int, default=12)
    parser.add_argument("--lightning-epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "frameworks-ddp-cpu")
    args = parser.parse_args()
    arms = {
        ("hf", "plain"): lambda out: hf_arm(False, args.hf_steps, out),
        ("hf", "selective"): lambda out: hf_arm(True, args.hf_steps, out),
        ("lightning", "plain"): lambda out: lightning_arm(False, args.lightning_epochs, out),
        ("lightning", "selective"): lambda out: lightning_arm(True, args.lightning_epochs, out),
    }
    runs: dict[tuple[str, str], list[dict[str, float]]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):  # interleaved: drift on a shared machine hits every arm alike
        for arm, run in arms.items():
            with tempfile.TemporaryDirectory() as tmp:
                runs[arm].append(run(Path(tmp)))
            print(f"repeat {repeat + 1}/{args.repeats} {arm[0]} {arm[1]}: {runs[arm][-1]}", flush=True)
    summary = {f"{framework}/{kind}": summarize(result) for (framework, kind), result in runs.items()}
    lines = ["| framework | arm | optimizer steps | loader batches / rank | ms per step | ms per loader batch |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in summary.items():
        framework, kind = name.split("/")
        lines.append(f"| {framework} | {kind} | {s['steps']:.0f} | {s['loader_batches']:.1f} | "
                     f"{s['per_step_ms']:.0f} | {s['per_loader_batch_ms']:.0f} |")  # fmt: skip
    for framework in ("hf", "lightning"):
        plain, selective = summary[f"{framework}/plain"], summary[f"{framework}/selective"]
        step = selective["per_step_ms"] / plain["per_step_ms"]
        batch = selective["per_loader_batch_ms"] / plain["per_loader_batch_ms"]
        lines.append(
            f"\n{framework}: a selective optimizer step costs {step:.2f}x a plain one; a loader batch {batch:.2f}x"
        )
    print("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps({"runs": {"/".join(k): v for k, v in runs.items()},
                                                         "summary": summary}, indent=1))  # fmt: skip
    args.out.with_suffix(".md").write_text(
        "# Frameworks under DDP on the CPU (2 gloo processes), `python -m benchmarks.frameworks_ddp`\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
