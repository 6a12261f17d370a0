"""ComposerSchedule against Composer's rule, step by step (SPEC section 10).

Composer (``composer.algorithms.selective_backprop.should_selective_backprop``) selects on a batch when
``start <= elapsed < end`` and ``interrupt == 0 or (batch_in_epoch + 1) % interrupt != 0``, with ``elapsed``
the fraction of ``max_duration`` done before the batch, in its unit (batches, or whole epochs). The rule is
restated here from Composer's documentation and source as a fact, and a real ``SelectiveBackprop`` loop
with ``ComposerSchedule`` must follow it on every batch of several runs.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import sbkernels


def composer_rule(elapsed: float, batch_in_epoch: int, start: float, end: float, interrupt: int) -> bool:
    in_interval = start <= elapsed < end
    return in_interval and (interrupt == 0 or (batch_in_epoch + 1) % interrupt != 0)


def run(schedule, epochs: int, per_epoch: int):
    """(selecting, whole batch selected) for every batch of a SelectiveBackprop loop with ``schedule``."""
    sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(beta=3.0, seed=0), schedule=schedule)
    seen = []
    for epoch in range(epochs):
        sb.start_epoch(epoch)
        for _ in range(per_epoch):
            selecting = sb.selecting()
            losses = torch.rand(5, generator=torch.Generator().manual_seed(len(seen)))
            sel = sb.observe(losses, None, losses)
            seen.append((selecting, int(sel.count) == 5))
        list(sb.flush())
    return seen


GRID = list(itertools.product([(0.5, 0.9), (0.0, 1.0), (0.2, 0.6)], [0, 1, 2, 3], [(3, 4), (2, 7)]))


@pytest.mark.parametrize(("window", "interrupt", "shape"), GRID)
def test_batch_unit_follows_composer_on_every_batch(window, interrupt, shape):
    (start, end), (epochs, per_epoch) = window, shape
    total = epochs * per_epoch
    schedule = sbkernels.ComposerSchedule(start, end, interrupt, max_duration=total, unit="batch")
    seen = run(schedule, epochs, per_epoch)
    for step, (selecting, whole) in enumerate(seen):
        want = composer_rule(step / total, step % per_epoch, start, end, interrupt)
        assert selecting == want, (step, window, interrupt)
        if not want:
            assert whole  # off: the whole batch goes to the backward pass


@pytest.mark.parametrize("interrupt", [0, 2])
def test_epoch_unit_changes_only_at_epoch_boundaries(interrupt):
    epochs, per_epoch = 5, 3
    schedule = sbkernels.ComposerSchedule(0.4, 0.8, interrupt, max_duration=epochs, unit="epoch")
    seen = run(schedule, epochs, per_epoch)
    for step, (selecting, _) in enumerate(seen):
        epoch, batch = divmod(step, per_epoch)
        assert selecting == composer_rule(epoch / epochs, batch, 0.4, 0.8, interrupt)


def test_the_check_catches_the_other_phase():
    """Negative control: sbkernels' own Schedule (interrupts steps 0, n, 2n, ...) fails the same comparison."""
    total, per_epoch = 12, 4
    seen = run(sbkernels.Schedule(0.0, 1.0, interrupt=2, total_steps=total), 3, per_epoch)
    differs = [step for step, (selecting, _) in enumerate(seen)
               if selecting != composer_rule(step / total, step % per_epoch, 0.0, 1.0, 2)]  # fmt: skip
    assert differs


def test_a_resumed_run_keeps_the_batch_in_epoch():
    sb = sbkernels.SelectiveBackprop(4, schedule=sbkernels.ComposerSchedule(0.0, 1.0, 3, max_duration=9))
    sb.start_epoch(0)
    for _ in range(2):
        sb.observe(torch.rand(5), None, torch.rand(5))
    resumed = sbkernels.SelectiveBackprop(4, schedule=sbkernels.ComposerSchedule(0.0, 1.0, 3, max_duration=9))
    resumed.load_state_dict(sb.state_dict())
    assert resumed.batch_in_epoch == 2 and not resumed.selecting()  # (2 + 1) % 3 == 0: Composer's interrupt


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_duration": 0}, "max_duration must be an int >= 1"), ({"max_duration": 5, "unit": "token"}, "unit")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sbkernels.ComposerSchedule(**kwargs)
