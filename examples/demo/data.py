"""The demo's datasets: scikit-learn's digits (embedded, the default) and Fashion-MNIST (a Debian package)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # (n, 1, H, W) float32, standardized with the training mean and std
    train_y: torch.Tensor  # (n,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def _fashion_mnist() -> tuple[torch.Tensor, ...]:
    missing = [f for f in FASHION_MNIST_FILES.values() if not (FASHION_MNIST_DIR / f).exists()]
    if missing:
        raise SystemExit(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR} (missing {', '.join(missing)}).\n"
            "Install the Debian package: apt-get install dataset-fashion-mnist"
        )
    arrays = {k: torch.from_numpy(_read_idx(FASHION_MNIST_DIR / f).copy()) for k, f in FASHION_MNIST_FILES.items()}
    return (
        arrays["train_x"].float().unsqueeze(1) / 255.0,
        arrays["train_y"].long(),
        arrays["test_x"].float().unsqueeze(1) / 255.0,
        arrays["test_y"].long(),
    )


def load_dataset(name: str, train_subset: int | None = None) -> Dataset:
    """Digits (8x8, shipped by scikit-learn) or Fashion-MNIST (28x28, Debian's dataset-fashion-mnist)."""
    loaders = {"digits": _digits, "fashion-mnist": _fashion_mnist}
    if name not in loaders:
        raise SystemExit(f"unknown dataset {name!r}: use {' or '.join(loaders)}")
    train_x, train_y, test_x, test_y = loaders[name]()
    if train_subset is not None and train_subset < len(train_y):
        keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(1))[:train_subset]
        train_x, train_y = train_x[keep], train_y[keep]
    mean, std = train_x.mean(), train_x.std()
    return Dataset(name, (train_x - mean) / std, train_y, (test_x - mean) / std, test_y)


def add_label_noise(labels: torch.Tensor, fraction: float, num_classes: int, seed: int = 2) -> torch.Tensor:
    """Replace a fraction of labels by a different class, chosen uniformly."""
    gen = torch.Generator().manual_seed(seed)
    noisy = labels.clone()
    flip = torch.rand(len(labels), generator=gen) < fraction
    shift = torch.randint(1, num_classes, (len(labels),), generator=gen)
    noisy[flip] = (labels[flip] + shift[flip]) % num_classes
    return noisy
