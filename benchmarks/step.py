"""Step-level benchmark: one training step of a ResNet-18-sized CNN with Selective-Backprop vs the plain step.

    python -m benchmarks.step                    # CUDA: batch 256, 3x32x32, bf16 autocast, channels_last
    python -m benchmarks.step --batch 16 --steps 3   # what a CPU can do

A "step" consumes one loader batch. Plain: forward + backward + optimizer step on all rows. SB: scoring
forward (no grad) + select + pool push, and a forward + backward + optimizer step for every backward batch
that is ready (batch-sized). Reported per beta: mean time per loader batch in steady state, rows
backpropagated per loader batch, and the selection's share of the step (select + push + ready check,
timed with CUDA events around those calls only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sbkernels

from .measure import device_name, git_commit, slug


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 (11.2M parameters) with a CIFAR stem for 32x32 inputs."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


class Timer:
    """Accumulates the time of marked regions: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pairs: list = []

    def __enter__(self):
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs.append((self.start, end))
        else:
            self.pairs.append(time.perf_counter() - self.t0)

    def total(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.pairs) / 1e3
        return sum(self.pairs)


def run(device: torch.device, batch: int, steps: int, warmup: int, beta: float | None) -> dict:
    torch.manual_seed(0)
    model = resnet18().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(1)
    data = [
        (
            torch.randn(batch, 3, 32, 32, device=device, generator=gen).to(memory_format=torch.channels_last),
            torch.randint(0, 10, (batch,), device=device, generator=gen),
        )
        for _ in range(4)
    ]
    sb = None if beta is None else sbkernels.SelectiveBackprop(batch, sbkernels.SB(beta=beta))
    selection_time = Timer(device)
    backward_rows = 0

    def train(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step(i: int, timed: bool) -> None:
        nonlocal backward_rows
        x, y = data[i % len(data)]
        if sb is None:
            train(x, y)
            backward_rows += batch if timed else 0
            return
        with torch.no_grad(), autocast:
            logits = model(x)
        with selection_time if timed else _null():
            sb.observe(logits, y, x, y)
            ready = list(sb.ready_batches())
        for b in ready:
            train(*b.data)
            backward_rows += batch if timed else 0

    for i in range(warmup):
        step(i, timed=False)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i, timed=True)
    _sync(device)
    seconds = (time.perf_counter() - t0) / steps
    return {
        "beta": beta,
        "ms_per_step": seconds * 1e3,
        "backward_rows_per_step": backward_rows / steps,
        "selection_ms_per_step": selection_time.total() / steps * 1e3 if sb is not None else 0.0,
        "selection_share": (selection_time.total() / steps / seconds) if sb is not None else 0.0,
        "host_waits": sb.pool.host_waits if sb is not None else 0,
    }


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 16 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 60 CUDA, 3 CPU)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 16)
    steps = args.steps or (60 if cuda else 3)
    warmup = 20 if cuda else 2
    results = []
    for beta in (None, 1.0, 2.0, 3.0):
        r = run(device, batch, steps, warmup, beta)
        results.append(r)
        label = "plain" if beta is None else f"SB beta={beta:g}"
        print(f"  {label:<12} {r['ms_per_step']:8.2f} ms/step  backward rows/step {r['backward_rows_per_step']:6.1f}  "
              f"selection {r['selection_ms_per_step']:.3f} ms ({r['selection_share']:.1%})")  # fmt: skip
    meta = {
        "device": device_name(device), "commit": git_commit(), "torch": torch.__version__, "batch": batch,
        "steps": steps, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip
    plain = results[0]["ms_per_step"]
    lines = [
        f"# Step benchmark: ResNet-18 (CIFAR stem), batch {batch}, {meta['device']}",
        "",
        f"{'bf16 autocast, channels_last' if cuda else 'CPU, float32 (no GPU in this run: not a GPU claim)'}; "
        f"torch {meta['torch']}, commit {meta['commit']}, {meta['date']}; "
        f"mean of {steps} steps after {warmup} warm-up steps.",
        "",
        "| run | ms per loader batch | x plain | rows backpropagated per batch | selection ms | selection share |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        label = "plain" if r["beta"] is None else f"SB beta={r['beta']:g}"
        lines.append(
            f"| {label} | {r['ms_per_step']:.2f} | {plain / r['ms_per_step']:.2f} | "
            f"{r['backward_rows_per_step']:.1f} | {r['selection_ms_per_step']:.3f} | {r['selection_share']:.1%} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "step-" + (slug(meta["device"]) if cuda else "cpu")
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"meta": meta, "results": results}


if __name__ == "__main__":
    main()
