"""The pilot through both integrations (#30 item 3): ``SelectiveBackpropTrainer.pilot`` and
``SelectiveBackpropModule.pilot`` run ``sbkernels.pilot`` on the framework's own model, loader, optimizer,
policy, scoring and loss, leave the model and the framework's state as they were, and reach the verdicts the
library's pilot reaches on the same data. transformers and lightning are installed by `make test`."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

if os.environ.get("CI"):
    import lightning  # noqa: F401  (CI installs the extras: a missing one must fail, not skip)
    import transformers  # noqa: F401
else:
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")

import sbkernels
from sbkernels.integrations._pilot import first_optimizer, mean_loss
from sbkernels.integrations.lightning import SelectiveBackpropModule
from tests.integrations.test_hf import make_trainer
from tests.test_pilot import problem


# ------------------------------------------------------------------------------------------ Hugging Face
def test_the_trainer_pilots_on_its_own_model_loader_and_eval_set(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    report = trainer.pilot(budget=400, segment=200, clock="rows")
    assert report.scoring == "hidden"  # a causal LM: the trainer's route, checked on the first batch
    assert "SB(" in report.policy  # the trainer's policy, not the pilot's default
    plain, selective = report.curves[0]
    assert len(plain.losses) == len(selective.losses) == 2 and plain.losses[-1] < 4.5  # it trained (ln 64 = 4.16)
    assert selective.rows_trained < selective.rows_seen  # and selected
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.optimizer is None  # the Trainer still creates its own for train()
    trainer.train()
    assert trainer.state.global_step == 2


def test_the_pilot_refuses_to_run_as_one_of_several_processes(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path)
    monkeypatch.setattr(type(trainer.args), "world_size", property(lambda self: 2))
    with pytest.raises(RuntimeError, match="1 of 2: call it from a single process"):
        trainer.pilot(budget=100, clock="rows")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    with pytest.raises(RuntimeError, match="1 of 2"):
        Classifier(sbkernels.SB()).pilot(problem(True)[1], budget=100, clock="rows", evaluate=lambda m: 0.0)


def test_the_trainer_pilot_needs_held_out_data(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.eval_dataset = None
    with pytest.raises(ValueError, match="eval_dataset"):
        trainer.pilot(budget=100, clock="rows")
    report = trainer.pilot(budget=100, clock="rows", evaluate=lambda model: 1.0)  # a held-out loss of the user's
    assert set(report.curves[0][0].losses) == {1.0}


# --------------------------------------------------------------------------------------------- Lightning
class Classifier(SelectiveBackpropModule):
    """The pilot test's classifier as a module: the library default score and backward_loss."""

    def __init__(self, policy) -> None:
        super().__init__(sbkernels.SelectiveBackprop(64, policy, schedule=sbkernels.Schedule()))
        model = problem(duplicated=True)[0]
        self.net = model

    def forward(self, x):
        return self.net(x)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1)}


def held_out(duplicated: bool) -> DataLoader:
    return DataLoader(TensorDataset(*problem(duplicated)[3].rows), batch_size=250)


@pytest.mark.parametrize("duplicated", [True, False])
def test_the_module_pilot_reaches_the_librarys_verdict(duplicated):
    """SB on mostly-duplicated easy rows pays; Uniform on rows that all teach does not (negative control) —
    through the module's score and backward_loss, as with sbkernels.pilot on the same data (tests/test_pilot)."""
    policy = sbkernels.SB(beta=2.0) if duplicated else sbkernels.Uniform(rate=0.5)
    module = Classifier(policy)
    _, train, _, evaluate = problem(duplicated)
    before = [p.detach().clone() for p in module.parameters()]
    report = module.pilot(train, budget=15000, val_loader=held_out(duplicated), repeats=2, clock="rows")
    assert report.scoring == "module"
    assert report.verdict.startswith("paid" if duplicated else "did not pay"), report
    assert all(torch.equal(p, q) for p, q in zip(before, module.parameters(), strict=True))
    with torch.no_grad():  # the default held-out loss: the module's loss over val_loader, row-weighted
        default = mean_loss(held_out(duplicated), lambda model, batch: model.backward_loss(batch))
        assert default(module) == pytest.approx(evaluate(module.net), rel=1e-5)


def test_the_module_pilot_accumulates_as_the_module_does():
    module = Classifier(sbkernels.SB())
    module.accumulate_grad_batches = 3
    report = module.pilot(problem(True)[1], budget=2000, val_loader=held_out(True), clock="rows")
    plain, _ = report.curves[0]
    batches = -(-plain.rows_trained // 64)
    assert batches // 3 <= plain.optimizer_steps <= batches // 3 + 2


def test_the_module_pilot_needs_held_out_data_and_an_optimizer():
    module = Classifier(sbkernels.SB())
    _, train, _, _ = problem(True)
    with pytest.raises(ValueError, match="val_loader"):
        module.pilot(train, budget=100, clock="rows")
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    assert first_optimizer(opt) is first_optimizer([opt]) is first_optimizer(([opt], [])) is opt
    assert first_optimizer({"optimizer": opt}) is opt
    with pytest.raises(TypeError, match="at least one torch optimizer"):
        first_optimizer([])
