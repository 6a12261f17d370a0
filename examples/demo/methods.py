"""The demo's methods, keyed by id: each one a trainer that runs one epoch and counts the examples it used.

``trainer.epoch(epoch)`` returns ``(backward examples, forward examples)``: forward counts every example
that went through any forward pass (scoring, proxies or training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import sbkernels
from sbkernels import reference, subsets

from .training import Context


class FullTrainer:
    """The baseline: every example, every epoch."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def epoch(self, epoch: int) -> tuple[int, int]:
        order = self.ctx.order()
        for first in range(0, len(order), self.ctx.batch_size):
            ids = order[first : first + self.ctx.batch_size]
            self.ctx.step(self.ctx.x[ids], self.ctx.y[ids])
        return len(order), len(order)


class SelectiveTrainer:
    """A SelectiveBackprop policy: score (unless stale), observe, train on the ready batches."""

    def __init__(
        self, ctx: Context, policy: sbkernels.Policy, stale_every: int = 1, schedule: sbkernels.Schedule | None = None
    ) -> None:
        self.ctx = ctx
        self.features = isinstance(policy, sbkernels.GradMatch)
        stale = sbkernels.StaleSB(stale_every, num_samples=len(ctx.y)) if stale_every > 1 else None
        self.sb = sbkernels.SelectiveBackprop(ctx.batch_size, policy, stale=stale, schedule=schedule)

    def _train(self, batches) -> None:
        for batch in batches:
            losses = self.ctx.step(*batch.data, batch.weight)
            self.sb.refresh(batch.sample_ids, losses)

    def epoch(self, epoch: int) -> tuple[int, int]:
        ctx, sb = self.ctx, self.sb
        before = dict(sb.counts)
        sb.start_epoch(epoch)
        order = ctx.order()
        for first in range(0, len(order), ctx.batch_size):
            ids = order[first : first + ctx.batch_size]
            x, y = ctx.x[ids], ctx.y[ids]
            if sb.needs_forward:
                with torch.no_grad():
                    h = ctx.model[:-1](x)
                    logits = ctx.model[-1](h)
                sb.observe(logits, y, x, y, sample_ids=ids, features=h if self.features else None)
            else:
                sb.observe(None, None, x, y, sample_ids=ids)
            self._train(sb.ready_batches())
        self._train(sb.flush())
        backward = sb.counts["backward"] - before["backward"]
        return backward, backward + sb.counts["scored"] - before["scored"]


class SubsetTrainer:
    """Grad-Match (selects from whole-set proxies every few epochs) or Cached-Grad-Match (replays)."""

    def __init__(
        self, ctx: Context, *, cached: bool = False, weighted: bool = True, record: bool = True, ridge: float = 0.5
    ) -> None:
        self.ctx = ctx
        self.selector: subsets.GradMatchSubsets | None = None
        if cached:
            if not ctx.subset_file.exists():
                raise RuntimeError("Cached-Grad-Match replays Grad-Match's recorded rounds: run Grad-Match first")
            self.provider = subsets.SubsetReplayer(ctx.subset_file)
            return
        # The warm start is paid from the budget (CORDS's schedule); skipped when the budget is too small.
        warm = 1
        try:
            select_after = subsets.select_after_within_budget(ctx.budget, ctx.epochs, warm)
        except ValueError:
            warm = select_after = 0
        recorder = subsets.SubsetRecorder(ctx.subset_file) if ctx.seed == 0 and record else None
        self.selector = subsets.GradMatchSubsets(
            len(ctx.y), fraction=ctx.budget, select_every=2, warm_start_epochs=warm, select_after=select_after,
            ridge=ridge, weighted=weighted, recorder=recorder,
        )  # fmt: skip
        self.provider = self.selector

    def epoch(self, epoch: int) -> tuple[int, int]:
        ctx, scored = self.ctx, 0
        if self.selector is not None and self.selector.needs_selection(epoch):
            with torch.no_grad():  # last-layer proxies of the whole training set
                h = torch.cat([ctx.model[:-1](ctx.x[i : i + 1024]) for i in range(0, len(ctx.y), 1024)])
                r, _ = reference.residuals(ctx.model[-1](h), ctx.y)
            self.selector.select(epoch, r, ctx.y, h)
            scored = len(ctx.y)
        backward = 0
        subset = self.provider.subset_for(epoch)
        for x, y, w in subsets.weighted_batches(ctx.x, ctx.y, subset, ctx.batch_size, ctx.order_gen):
            ctx.step(x, y, w)
            backward += len(y)
        return backward, backward + scored


class RandomPBTrainer:
    """Random fixed batches (seed 003): whole fixed batches covering the budget each epoch."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pb = subsets.RandomPB(len(ctx.y), ctx.batch_size, ctx.budget, seed=ctx.seed)

    def epoch(self, epoch: int) -> tuple[int, int]:
        backward = 0
        for rows in self.pb.batches(epoch):
            rows = rows.to(self.ctx.x.device)
            self.ctx.step(self.ctx.x[rows], self.ctx.y[rows])
            backward += len(rows)
        return backward, backward


def _budget_k(ctx: Context) -> int:
    return max(1, round(ctx.budget * ctx.batch_size))


@dataclass(frozen=True)
class Method:
    id: str  # what --methods takes
    label: str  # what the table shows
    make: Callable[[Context], object]  # the trainer for one run
    budgeted: bool = False  # trains at the backward budget SB beta=2 measured (or DEFAULT_BUDGET)
    group: str = "default"  # "default" or "subsets" (seeds 002 / 003)


METHODS = [
    Method("baseline", "baseline", FullTrainer),
    Method("sb-1", "SB beta=1", lambda ctx: SelectiveTrainer(ctx, sbkernels.SB(beta=1.0, seed=ctx.seed))),
    Method("sb-2", "SB beta=2", lambda ctx: SelectiveTrainer(ctx, sbkernels.SB(beta=2.0, seed=ctx.seed))),
    Method("sb-3", "SB beta=3", lambda ctx: SelectiveTrainer(ctx, sbkernels.SB(beta=3.0, seed=ctx.seed))),
    Method(
        "uniform",
        "uniform",
        lambda ctx: SelectiveTrainer(ctx, sbkernels.Uniform(rate=round(ctx.budget, 4), seed=ctx.seed)),
        budgeted=True,
    ),
    Method("keep", "keep 0.5 (Composer)", lambda ctx: SelectiveTrainer(ctx, sbkernels.Keep(0.5, seed=ctx.seed))),
    # Composer's recipe as it ships: keep 0.5 from 50% to 90% of the run, every second batch whole
    Method(
        "composer",
        "Composer schedule",
        lambda ctx: SelectiveTrainer(
            ctx,
            sbkernels.Keep(0.5, seed=ctx.seed),
            schedule=sbkernels.ComposerSchedule(0.5, 0.9, 2, max_duration=ctx.epochs, unit="epoch"),
        ),
    ),
    Method(
        "stale-sb",
        "Stale-SB n=3 beta=2",
        lambda ctx: SelectiveTrainer(ctx, sbkernels.SB(beta=2.0, seed=ctx.seed), stale_every=3),
    ),
    Method(
        "gradmatch",
        "gradmatch",
        lambda ctx: SelectiveTrainer(ctx, sbkernels.GradMatch(_budget_k(ctx), seed=ctx.seed)),
        budgeted=True,
        group="subsets",
    ),
    Method("grad-match", "Grad-Match", SubsetTrainer, budgeted=True, group="subsets"),
    # the same subsets' examples with weight 1: isolates the OMP weights' effect on training
    Method(
        "grad-match-unweighted",
        "Grad-Match unweighted",
        lambda ctx: SubsetTrainer(ctx, weighted=False, record=False),
        budgeted=True,
        group="subsets",
    ),
    Method(
        "cached-grad-match",
        "Cached-Grad-Match",
        lambda ctx: SubsetTrainer(ctx, cached=True),
        budgeted=True,
        group="subsets",
    ),
    Method("random-pb", "RandomPB", RandomPBTrainer, budgeted=True, group="subsets"),
]
BY_ID = {m.id: m for m in METHODS}


def select_methods(spec: str | None) -> list[Method]:
    """Methods by comma-separated ids, 'default', 'subsets' or 'all'; the baseline always runs first."""
    wanted: set[str] = {"baseline"}
    for item in (w.strip() for w in (spec or "default").split(",")):
        if item in ("default", "subsets", "all"):
            wanted |= {m.id for m in METHODS if item in ("all", m.group)}
        elif item in BY_ID:
            wanted.add(item)
        else:
            raise SystemExit(f"unknown method {item!r}; known: {', '.join(BY_ID)}, default, subsets, all")
    if "cached-grad-match" in wanted:
        wanted.add("grad-match")  # it replays Grad-Match's rounds
    return [m for m in METHODS if m.id in wanted]
