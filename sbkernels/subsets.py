"""Dataset-level subset selection: Grad-Match, Cached-Grad-Match and RandomPB.

- :class:`GradMatchSubsets` (Killamsetty et al. 2021): every ``select_every`` epochs from ``select_after`` on,
  choose a weighted subset of ``fraction`` of the training set whose last-layer gradients match the full
  training gradient (per class or over the whole set), by non-negative OMP (:func:`sbkernels.ops._omp.omp_nnls`).
  An optional warm start trains on all the data first; :func:`select_after_within_budget` places
  ``select_after`` so that the warm start costs no more than the subset epochs it replaces (CORDS's schedule).
- :class:`SubsetRecorder` / :class:`SubsetReplayer`: write each round's indices and weights to a file and
  read them back, so a later run trains on the same subsets without selecting (Cached-Grad-Match).
- :class:`RandomPB`: the training set cut once into fixed random batches; each epoch trains on a random
  choice of whole batches covering the budget.

Subsets are index/weight tensors; :func:`weighted_batches` turns one into ``(inputs, targets, weights)``
mini-batches of in-memory tensors. Grad-Match weights are normalized to mean 1 over the subset, so
``mean(weight * loss)`` has the scale of the plain mean loss (the ridge of the regularized OMP shrinks the
raw weights; their relative sizes carry the matching).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .ops._omp import last_layer_gram, omp_nnls


@dataclass
class Subset:
    epoch: int  # the epoch at which it was chosen
    indices: Tensor  # (k,) int64, ascending
    weights: Tensor  # (k,) float32 >= 0


def _no_training(epoch: int) -> Subset:
    """The empty subset of the epochs that pay for the warm start."""
    return Subset(epoch, torch.zeros(0, dtype=torch.int64), torch.zeros(0))


def _on_schedule(epoch: int, warm_start_epochs: int, select_after: int, latest: Subset | None) -> Subset | None:
    """What ``epoch`` trains on: all data (None) in the warm start, nothing until select_after, then ``latest``."""
    if epoch < warm_start_epochs:
        return None
    return latest if epoch >= select_after else _no_training(epoch)


def select_after_within_budget(fraction: float, epochs: int, warm_start_epochs: int) -> int:
    """The first subset epoch such that a warm start stays within the budget of ``epochs`` subset epochs.

    Schedule (CORDS's warm start): ``W = warm_start_epochs`` epochs on all n examples, then no training
    until ``select_after``, then ``S = epochs - select_after`` epochs on subsets of ``f n`` examples. One full
    epoch costs ``1 / f`` subset epochs, so the budget ``epochs * f * n`` holds when ``W + S f = epochs f``:

        S = round(epochs - W / f),  select_after = epochs - S

    (exact up to the rounding of S to whole epochs). Raises if the budget leaves no subset epoch.
    """
    if not 0.0 < fraction <= 1.0 or epochs < 1 or warm_start_epochs < 0:
        raise ValueError(
            f"need 0 < fraction <= 1, epochs >= 1, warm_start_epochs >= 0; got {(fraction, epochs, warm_start_epochs)}"
        )
    subset_epochs = round(epochs - warm_start_epochs / fraction)
    if subset_epochs < 1:
        raise ValueError(
            f"a budget of {epochs} epochs at fraction {fraction} cannot pay for {warm_start_epochs} full-data "
            "warm-start epoch(s) and leave a subset epoch"
        )
    return max(epochs - subset_epochs, warm_start_epochs)


def weighted_batches(
    inputs: Tensor, targets: Tensor, subset: Subset | None, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Shuffled mini-batches ``(inputs, targets, weights)`` of the subset (all rows, weight 1, if None)."""
    if subset is None:
        indices = torch.arange(len(targets))
        weights = torch.ones(len(targets))
    else:
        indices, weights = subset.indices.cpu(), subset.weights.cpu()
    order = torch.randperm(len(indices), generator=generator)
    for first in range(0, len(order), batch_size):
        take = order[first : first + batch_size]
        rows = indices[take].to(inputs.device)
        yield inputs[rows], targets[rows], weights[take].to(inputs.device)


class GradMatchSubsets:
    """Grad-Match subsets of a training set of ``num_samples`` examples.

    Args:
        fraction: share of the training set in each subset.
        select_every: epochs between selection rounds (R in the paper).
        per_class: match each class's gradient with its own share of the budget (the usual setting; its
            Gram matrices are per class, so memory is sum_c n_c^2 instead of n^2).
        warm_start_epochs: full-data epochs at the start (epochs ``[0, warm_start_epochs)``).
        select_after: the epoch of the first selection (default ``warm_start_epochs``). The epochs in
            between train on nothing: they pay for the warm start (see :func:`select_after_within_budget`).
        steps: projected-gradient steps of each NNLS refit.
        ridge: L2 penalty of the regularized OMP, relative to the mean squared gradient norm of the group
            (Grad-Match regularizes its OMP; without it a few examples get very large weights).
        weighted: train with the OMP weights (Grad-Match). ``False`` keeps the chosen examples but gives
            each weight 1, which separates the choice of the subset from its weighting.
        recorder: a :class:`SubsetRecorder` that saves every round.
    """

    def __init__(
        self,
        num_samples: int,
        fraction: float,
        select_every: int = 5,
        per_class: bool = True,
        warm_start_epochs: int = 0,
        select_after: int | None = None,
        steps: int = 40,
        ridge: float = 0.5,
        weighted: bool = True,
        recorder: SubsetRecorder | None = None,
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        select_after = warm_start_epochs if select_after is None else select_after
        if select_every < 1 or not 0 <= warm_start_epochs <= select_after:
            raise ValueError("need select_every >= 1 and 0 <= warm_start_epochs <= select_after")
        self.num_samples, self.fraction, self.select_every = num_samples, fraction, select_every
        self.per_class, self.steps, self.ridge = per_class, steps, ridge
        self.warm_start_epochs, self.select_after = warm_start_epochs, select_after
        self.weighted = weighted
        self.recorder = recorder
        if recorder is not None:
            recorder.schedule = {"warm_start_epochs": warm_start_epochs, "select_after": select_after}
        self.current: Subset | None = None

    def needs_selection(self, epoch: int) -> bool:
        """True at the epochs where a new subset is chosen (needs proxies of the whole training set)."""
        return epoch >= self.select_after and (epoch - self.select_after) % self.select_every == 0

    def subset_for(self, epoch: int) -> Subset | None:
        """The subset to train on in ``epoch``: None (everything) in the warm start, empty until select_after."""
        return _on_schedule(epoch, self.warm_start_epochs, self.select_after, self.current)

    def select(self, epoch: int, r: Tensor, labels: Tensor, features: Tensor | None = None) -> Subset:
        """Choose the subset from bias gradients r (n, C), labels (n,) and optional features h (n, ...)."""
        n = r.shape[0]
        if n != self.num_samples:
            raise ValueError(f"expected proxies for {self.num_samples} samples, got {n}")
        groups = [torch.nonzero(labels == c).flatten() for c in labels.unique()] if self.per_class else [None]
        picked, weights = [], []
        for group in groups:
            rows = torch.arange(n, device=r.device) if group is None else group
            k = max(1, round(self.fraction * len(rows)))
            gram = last_layer_gram(r[rows], None if features is None else features[rows])
            ridge = self.ridge * float(gram.diagonal().mean())  # one host read per group and round
            chosen, w, _ = omp_nnls(gram, gram.mean(dim=1), gram.mean(), k, self.steps, ridge)
            keep = w > 0
            # sum_i w_i g_i matches this group's mean gradient; the group holds len(rows)/n of the data.
            picked.append(rows[chosen[keep]])
            weights.append(w[keep] * len(rows) / n)
        indices = torch.cat(picked)
        scaled = torch.cat(weights).float()
        scaled = scaled * len(scaled) / scaled.sum().clamp_min(1e-30)  # mean 1: the plain mean's loss scale
        if not self.weighted:
            scaled = torch.ones_like(scaled)
        order = torch.argsort(indices)
        self.current = Subset(epoch, indices[order].cpu(), scaled[order].cpu())
        if self.recorder is not None:
            self.recorder.record(self.current)
        return self.current


class SubsetRecorder:
    """Appends every selection round to ``path`` (a torch.save file rewritten after each round)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rounds: list[dict] = []
        self.schedule: dict[str, int] | None = None  # set by GradMatchSubsets: warm_start_epochs, select_after

    def record(self, subset: Subset) -> None:
        self.rounds.append({"epoch": subset.epoch, "indices": subset.indices.cpu(), "weights": subset.weights.cpu()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"version": 2, "schedule": self.schedule, "rounds": self.rounds}, self.path)


class SubsetReplayer:
    """Cached-Grad-Match: serves the subsets recorded by an earlier run, without selecting anything."""

    def __init__(self, path: str | Path) -> None:
        saved = torch.load(Path(path))
        if saved.get("version") not in (1, 2):
            raise ValueError(f"{path}: unsupported subset file version {saved.get('version')!r}")
        self.rounds = [Subset(r["epoch"], r["indices"], r["weights"]) for r in saved["rounds"]]
        if not self.rounds:
            raise ValueError(f"{path} holds no selection rounds")
        # Version 1 files have no schedule: all data until the first round.
        first = self.rounds[0].epoch
        schedule = saved.get("schedule") or {"warm_start_epochs": first, "select_after": first}
        self.warm_start_epochs, self.select_after = schedule["warm_start_epochs"], schedule["select_after"]

    def subset_for(self, epoch: int) -> Subset | None:
        """What the recorded run trained on in ``epoch``: its warm start and pause, then its latest round."""
        earlier = [s for s in self.rounds if s.epoch <= epoch]
        latest = earlier[-1] if earlier else _no_training(epoch)
        return _on_schedule(epoch, self.warm_start_epochs, self.select_after, latest)


class RandomPB:
    """Random fixed batches: one fixed partition of the training set into batches; each epoch picks
    ``ceil(fraction * num_batches)`` whole batches at random."""

    def __init__(self, num_samples: int, batch_size: int, fraction: float, seed: int = 0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
        self.fixed = list(order.split(batch_size))
        self.budget = math.ceil(fraction * len(self.fixed))
        self.seed = seed

    def batches(self, epoch: int) -> list[Tensor]:
        """This epoch's batches: ``budget`` whole fixed batches, in random order."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        chosen = torch.randperm(len(self.fixed), generator=gen)[: self.budget]
        return [self.fixed[i] for i in chosen.tolist()]
