"""The demo's report: the summary table (mean +- sd over seeds) and the learning-curve plot."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from .training import Curve

TARGET_FACTOR = 1.1  # "time to reach 1.1x the baseline's final error"


def time_to_target(curve: Curve, target: float) -> float | None:
    return next((s for s, e in zip(curve.seconds, curve.test_error, strict=True) if e <= target), None)


def _time_to_loss(curves: list[Curve], base_curves: list[Curve]) -> float | None:
    """Seed-mean wall time to first reach the baseline's final held-out loss (seed means), over the
    baseline's time; None when the seed-mean curve never gets there."""
    target = statistics.mean(c.test_loss[-1] for c in base_curves)
    base_time = statistics.mean(c.seconds[-1] for c in base_curves)
    losses = [statistics.mean(values) for values in zip(*(c.test_loss for c in curves), strict=True)]
    seconds = [statistics.mean(values) for values in zip(*(c.seconds for c in curves), strict=True)]
    reached = next((s for s, loss in zip(seconds, losses, strict=True) if loss <= target), None)
    return None if reached is None else reached / base_time


def summarize(results: dict[str, list[Curve]]) -> list[dict]:
    """One row per method (keyed by its label); the first entry of ``results`` is the baseline."""
    base_curves = next(iter(results.values()))
    target = TARGET_FACTOR * statistics.mean(c.test_error[-1] for c in base_curves)
    rows = []
    for label, curves in results.items():
        acc = [100 * (1 - c.test_error[-1]) for c in curves]
        reached = [t for t in (time_to_target(c, target) for c in curves) if t is not None]
        rows.append(
            {
                "method": label,
                "acc_mean": statistics.mean(acc),
                "acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "backward": statistics.mean(c.backward[-1] for c in curves),
                "forward": statistics.mean(c.forward[-1] for c in curves),
                "seconds": statistics.mean(c.seconds[-1] for c in curves),
                "to_target": statistics.mean(reached) if reached else None,
                "reached": f"{len(reached)}/{len(curves)}",
                "loss": statistics.mean(c.test_loss[-1] for c in curves),
                "to_base_loss": _time_to_loss(curves, base_curves),
            }
        )
    return rows


def format_table(rows: list[dict], base_err: float) -> str:
    lines = [
        f"| method | test acc % (mean +- sd) | backward ex. | forward ex. | wall s | s to {TARGET_FACTOR}x base err "
        f"({100 * TARGET_FACTOR * base_err:.2f}%) | held-out loss | time to the baseline's final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        to_target = "not reached" if r["to_target"] is None else f"{r['to_target']:.1f} ({r['reached']})"
        to_loss = "not reached" if r["to_base_loss"] is None else f"{r['to_base_loss']:.2f}x the baseline's"
        lines.append(
            f"| {r['method']} | {r['acc_mean']:.2f} +- {r['acc_sd']:.2f} | {r['backward']:,.0f} | "
            f"{r['forward']:,.0f} | {r['seconds']:.1f} | {to_target} | {r['loss']:.4f} | {to_loss} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, list[Curve]], path: Path, title: str) -> None:
    """Test error against wall time and against backward examples, one line per method (seed means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for index, (label, curves) in enumerate(results.items()):
        err = np.mean([c.test_error for c in curves], axis=0) * 100
        loss = np.mean([c.test_loss for c in curves], axis=0)
        seconds = np.mean([c.seconds for c in curves], axis=0)
        backward = np.mean([c.backward for c in curves], axis=0)
        style = "k-" if index == 0 else "-"
        axes[0].plot(seconds, err, style, label=label, marker=".")
        axes[1].plot(backward, err, style, label=label, marker=".")
        axes[2].plot(seconds, loss, style, label=label, marker=".")
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("examples through the backward pass")
    axes[2].set_xlabel("training wall time (s)")
    for ax in axes[:2]:
        ax.set_ylabel("test error (%)")
    axes[2].set_ylabel("held-out loss (cross-entropy)")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
