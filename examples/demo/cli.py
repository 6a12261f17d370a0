"""End-to-end demo: what Selective-Backprop buys on real data, against the full baseline and random selection.

    python -m examples.demo                                   # digits (scikit-learn), CPU or GPU, < 5 min on CPU
    python -m examples.demo --dataset fashion-mnist --epochs 5 --train-subset 20000
    python -m examples.demo --label-noise 0.2 --device cuda --out results-local/demo

Every method trains the same small CNN for the same number of epochs (each epoch shows every training
example once to the scoring pass, or to the cached losses for Stale-SB) with three seeds. The table
reports final test accuracy (mean +- sd), examples through the backward pass and through any forward
pass, training wall time (evaluation excluded), and the time to reach 1.1x the baseline's final test error.
A plot of test error against wall time and against backward examples is written next to a JSON of every
curve. Method ids (``--methods``): baseline; sb-1, sb-2, sb-3 (SB at beta 1, 2, 3); uniform (random
selection at the backward budget SB beta 2 used); keep (Composer's, 0.5); stale-sb (n = 3, beta 2). The
group ``subsets`` adds, at the same budget: gradmatch (in-batch gradient matching, seed 002), grad-match
(Grad-Match over the whole training set: regularized OMP per class, a new subset every 2 epochs, one
full-data warm-start epoch paid from the budget, as in CORDS), grad-match-unweighted (its subsets with
weight 1), cached-grad-match (seed 0's Grad-Match rounds replayed by every seed) and random-pb (random
fixed batches, seed 003).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from .data import add_label_noise, load_dataset
from .methods import select_methods
from .report import format_table, plot, summarize
from .training import Curve, train_run

DEFAULT_BUDGET = 0.3  # backward share of the budget-matched methods when SB beta=2 is not run
BUDGET_SOURCE = "sb-2"  # the budget-matched methods use this method's measured backward share


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    p.add_argument("--epochs", type=int, default=None, help="default: 30 for digits, 5 for fashion-mnist")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--label-noise", type=float, default=0.0, metavar="FRACTION")
    p.add_argument("--train-subset", type=int, default=None, help="train on this many examples")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated method ids, 'default' (the 7 default methods), 'subsets' (gradmatch, grad-match, "
        "grad-match-unweighted, cached-grad-match, random-pb) or 'all'; the baseline always runs",
    )
    p.add_argument("--out", default="results-local/demo", help="folder for the table, curves and plot")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 30 if args.dataset == "digits" else 5
    if not 0.0 <= args.label_noise < 1.0:
        p.error("--label-noise must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    data = load_dataset(args.dataset, args.train_subset)
    if args.label_noise > 0:
        data.train_y = add_label_noise(data.train_y, args.label_noise, 10)
    methods = select_methods(args.methods)
    print(
        f"sbkernels demo: {data.name}, {len(data.train_y)} train / {len(data.test_y)} test, {args.epochs} epochs, "
        f"batch {args.batch_size}, label noise {args.label_noise}, {args.seeds} seeds, device {device}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{data.name}{'-noise' + str(args.label_noise) if args.label_noise else ''}"
    subset_file = out / f"{stem}-grad-match-rounds.pt"
    subset_file.unlink(missing_ok=True)  # Cached-Grad-Match must replay this run's Grad-Match
    results: dict[str, list[Curve]] = {}
    by_id: dict[str, list[Curve]] = {}
    budget = DEFAULT_BUDGET
    total_start = time.perf_counter()
    for method in methods:
        if BUDGET_SOURCE in by_id:
            examples = args.epochs * len(data.train_y)
            budget = statistics.mean(c.backward[-1] for c in by_id[BUDGET_SOURCE]) / examples
        label = f"{method.label} at {budget:.3f}" if method.budgeted else method.label
        by_id[method.id] = results[label] = [
            train_run(
                method.make,
                label,
                data,
                seed=seed,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                device=device,
                budget=budget,
                subset_file=subset_file,
                progress=not args.no_progress,
            )
            for seed in range(args.seeds)
        ]
        last = summarize({"baseline": by_id["baseline"], label: results[label]})[-1]
        print(f"  {label:<40} acc {last['acc_mean']:.2f}%  backward {last['backward']:,.0f}  {last['seconds']:.1f}s")
    base_err = statistics.mean(c.test_error[-1] for c in by_id["baseline"])
    rows = summarize(results)
    table = format_table(rows, base_err)
    title = f"{data.name}, {args.epochs} epochs, label noise {args.label_noise}, {args.seeds} seeds, {device}"
    plot(results, out / f"{stem}.png", title)
    curves = {label: [vars(c) for c in runs] for label, runs in results.items()}
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "rows": rows, "curves": curves}))
    (out / f"{stem}.md").write_text(f"{title}\n\n{table}\n")
    print(f"\n{title}\n\n{table}\n\nwrote {out / stem}.png, .json, .md in {time.perf_counter() - total_start:.0f}s")
    if any(math.isnan(r["acc_mean"]) for r in rows):
        raise SystemExit("a run diverged (NaN accuracy)")
    return {"rows": rows, "curves": results}


if __name__ == "__main__":
    main()
