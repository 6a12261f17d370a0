"""What a user would write instead of sbkernels, each as ``fn(logits, targets, images) -> selected images``.

All of them select rows by loss and gather the selected rows of an image batch, so every method does the
same job end to end:

- ``sbkernels``: ``select`` (one fused launch) + ``gather_rows`` into a preallocated buffer.
- ``sbkernels select only``: the ``select`` call alone (what the Python call of the selection op costs).
- ``sbkernels keep``: Composer's rule through sbkernels (``select_keep``, keep 0.5) + ``gather_rows``.
- ``eager reference``: sbkernels' own PyTorch reference (static shapes, no sync) + ``index_select``.
- ``torch.compile reference``: the same reference compiled by Inductor.
- ``Composer keep``: what MosaicML Composer's ``select_using_loss`` (mosaicml 0.32) does per call, so that
  it costs what Composer's code costs: its argument checks (the loss function's signature inspected),
  the per-example loss in the logits' dtype, ``argsort`` on the device, the rank probabilities
  ``((rank + 0.5) / N) ** (1 / keep - 1)`` in numpy float64, ``numpy.random.choice`` without replacement,
  the chosen ranks indexed from a numpy array (a host-to-device copy on CUDA), and both the input and the
  target gathered.
- ``naive loop``: ``F.cross_entropy(reduction="none")``, a Python list as the loss history (percentile
  computed against it on the device, losses appended with ``.tolist()``), ``torch.bernoulli``,
  ``nonzero``, ``index_select``: the loop most users write first.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import sbkernels
from sbkernels import gather_rows, new_cursor, reference

Method = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]


def make_sbkernels(n: int, images: torch.Tensor, history: int, beta: float) -> Method:
    state = sbkernels.SelectorState(history, seed=0, device=images.device)
    out = torch.empty_like(images)
    cursor = new_cursor(images.device)

    def run(logits, targets, images):
        sel = sbkernels.select(logits, targets, state, beta=beta)
        cursor.narrow(0, 0, 1).zero_()  # a device-side fill: cursor[0] = 0 would be a blocking copy
        gather_rows([images], sel.indices, sel.count, [out], cursor)
        return out

    return run


def make_sbkernels_select_only(n: int, images: torch.Tensor, history: int, beta: float) -> Method:
    state = sbkernels.SelectorState(history, seed=0, device=images.device)

    def run(logits, targets, images):
        return sbkernels.select(logits, targets, state, beta=beta)

    return run


def make_sbkernels_keep(n: int, images: torch.Tensor, history: int, keep: float = 0.5) -> Method:
    state = sbkernels.SelectorState(history, seed=0, device=images.device)
    out = torch.empty_like(images)
    cursor = new_cursor(images.device)

    def run(logits, targets, images):
        sel = sbkernels.select_keep(logits, targets, state, keep)
        cursor.narrow(0, 0, 1).zero_()
        gather_rows([images], sel.indices, sel.count, [out], cursor)
        return out

    return run


def _reference_step(logits, targets, history, meta, beta):
    loss, ignored, bad = reference.cross_entropy(logits, targets)
    return reference.select_sb(loss, ignored, bad, history, meta, beta)


def make_reference(n: int, images: torch.Tensor, history: int, beta: float, compiled: bool = False) -> Method:
    state = sbkernels.SelectorState(history, seed=0, device=images.device)
    step = torch.compile(_reference_step) if compiled else _reference_step

    def run(logits, targets, images):
        indices, _, _, _ = step(logits, targets, state.history, state.meta, beta)
        # Rows past count are -1: clamp and keep the static shape (no sync), as the pool would.
        return images.index_select(0, indices.clamp_min(0))

    return run


def make_composer_keep(n: int, images: torch.Tensor, history: int, keep: float = 0.5) -> Method:
    def loss_fn(outputs, target, reduction="none"):
        return F.cross_entropy(outputs, target, reduction=reduction)  # in the logits' dtype, as the model's loss

    def run(logits, targets, images):
        if not callable(loss_fn) or "reduction" not in inspect.signature(loss_fn).parameters:  # its checks
            raise TypeError("the loss function must take reduction")
        with torch.no_grad():
            count = images.shape[0]
            losses = loss_fn(logits, targets, reduction="none")  # the scoring forward's output is given here
            sorted_idx = torch.argsort(losses)
            n_select = int(keep * count)
            percs = np.arange(0.5, count, 1) / count
            probs = percs ** ((1.0 / keep) - 1.0)
            probs = probs / np.sum(probs)
            chosen = np.random.choice(count, n_select, replace=False, p=probs)  # noqa: NPY002 (Composer's call)
            select_idx = sorted_idx[chosen]
        return images[select_idx], targets[select_idx]

    return run


def make_naive_loop(n: int, images: torch.Tensor, history: int, beta: float) -> Method:
    past: deque[float] = deque(maxlen=history)

    def run(logits, targets, images):
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        if past:
            hist = torch.tensor(list(past), device=logits.device)
            pct = (hist[None, :] < losses[:, None]).float().mean(dim=1)
        else:
            pct = torch.ones_like(losses)
        keep = torch.bernoulli(pct**beta).bool()
        idx = keep.nonzero().squeeze(1)
        past.extend(losses.tolist())
        return images.index_select(0, idx)

    return run


def methods(n: int, images: torch.Tensor, history: int = 1024, beta: float = 1.0) -> dict[str, Method]:
    return {
        "sbkernels": make_sbkernels(n, images, history, beta),
        "sbkernels select only": make_sbkernels_select_only(n, images, history, beta),
        "sbkernels keep": make_sbkernels_keep(n, images, history),
        "eager reference": make_reference(n, images, history, beta),
        "torch.compile reference": make_reference(n, images, history, beta, compiled=True),
        "Composer keep": make_composer_keep(n, images, history),
        "naive loop": make_naive_loop(n, images, history, beta),
    }
