"""The demo's model, training context and one training run (a learning curve per epoch)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset


def make_model(image_size: int, num_classes: int = 10) -> nn.Sequential:
    """A small CNN: two convolutions, one pooling stage per 8 pixels of input, two linear layers."""
    pools = 2 if image_size >= 28 else 1
    layers: list[nn.Module] = [nn.Conv2d(1, 32, 3, padding=1), nn.ReLU()]
    if pools == 2:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
    side = image_size // (2**pools)
    layers += [nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes)]
    return nn.Sequential(*layers)


@dataclass
class Curve:
    """Per-epoch measurements of one run (cumulative)."""

    seconds: list[float] = field(default_factory=list)
    backward: list[int] = field(default_factory=list)
    forward: list[int] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)  # held-out cross-entropy


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> tuple[float, float]:
    """(error, mean cross-entropy) on held-out data."""
    wrong, total = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            logits = model(x[i : i + batch])
            wrong += int((logits.argmax(1) != y[i : i + batch]).sum())
            total += float(F.cross_entropy(logits, y[i : i + batch], reduction="sum"))
    return wrong / len(y), total / len(y)


@dataclass
class Context:
    """What every method's trainer needs: the model, its optimizer, the data on the device, the settings."""

    model: nn.Sequential
    opt: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    seed: int
    budget: float  # share of examples to backpropagate, for the budget-matched methods
    epochs: int
    order_gen: torch.Generator
    subset_file: Path

    def step(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Forward with grad + backward + optimizer step; returns the per-example losses (detached).

        Weighted batches use mean(w * loss): in-batch gradmatch weights are scaled so that this matches the
        batch's mean gradient, Grad-Match subset weights have mean 1. Grad-Match's reference training loop
        divides by sum(w) per batch instead; measured here before the OMP was regularized (heavy-tailed
        weights, median 0.1, max ~35), that rescaled steps by 64 / sum(w) and did much worse (3 seeds, CPU):
        digits gradmatch 57.3% vs 98.9%, Grad-Match 88.6% vs 99.0%; Fashion-MNIST Grad-Match 61.8% vs 64.2%.
        """
        losses = F.cross_entropy(self.model(x), y, reduction="none")
        loss = losses.mean() if weight is None else (losses * weight).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return losses.detach()

    def order(self) -> torch.Tensor:
        return torch.randperm(len(self.y), generator=self.order_gen).to(self.x.device)


def train_run(
    make_trainer, label: str, data: Dataset, *, seed: int, epochs: int, batch_size: int, lr: float,
    device: torch.device, budget: float, subset_file: Path, progress: bool = True,
) -> Curve:  # fmt: skip
    """Train a fresh model with the trainer ``make_trainer(ctx)`` builds; measure after every epoch."""
    torch.manual_seed(seed)
    model = make_model(data.train_x.shape[-1]).to(device)
    ctx = Context(
        model=model, opt=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4),
        x=data.train_x.to(device), y=data.train_y.to(device), batch_size=batch_size, seed=seed, budget=budget,
        epochs=epochs, order_gen=torch.Generator().manual_seed(1000 + seed), subset_file=subset_file,
    )  # fmt: skip
    trainer = make_trainer(ctx)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    curve, elapsed, backward, forward = Curve(), 0.0, 0, 0
    bar = _progress(epochs, f"{label} seed {seed}", progress)
    for epoch in range(epochs):
        start = time.perf_counter()
        b, f = trainer.epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed += time.perf_counter() - start
        backward, forward = backward + b, forward + f
        curve.seconds.append(elapsed)
        curve.backward.append(backward)
        curve.forward.append(forward)
        error, loss = evaluate(model, test_x, test_y)
        curve.test_error.append(error)
        curve.test_loss.append(loss)
        bar.update(1)
        bar.set_postfix(test_err=f"{curve.test_error[-1]:.3f}", bwd=backward)
    bar.close()
    return curve


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc:<36}", leave=False, disable=not enabled, file=sys.stderr, ncols=100)
