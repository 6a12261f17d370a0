"""A Lightning ``strategy="ddp"`` run on 2 CPU processes (gloo), as a user launches it: ``python -m
tests.integrations.lightning_ddp_run OUT [policy]``. Lightning re-launches this module once per extra rank.
Each rank writes what it trained to ``OUT/rank<r>.pt`` for tests/integrations/test_lightning_ddp.py."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import sbkernels
from sbkernels.integrations.lightning import SelectiveBackpropModule

ROWS, FEATURES, CLASSES = 100, 6, 4
#: "per_rank" is the negative control: each rank selects alone (no process group), as before #28.
POLICIES = {
    "sb": lambda: sbkernels.SB(beta=2.0, history_size=32, seed=2),
    "importance": lambda: sbkernels.Importance(k=6, seed=2),
    "per_rank": lambda: sbkernels.SB(beta=2.0, history_size=32, seed=2),
}


class Classifier(SelectiveBackpropModule):
    def __init__(self, policy: str) -> None:
        super().__init__(sbkernels.SelectiveBackprop(5, POLICIES[policy]()), accumulate_grad_batches=2)
        self.policy_name = policy
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, CLASSES))
        self.trained: dict[int, list[int]] = {}  # epoch -> sample ids trained with a weight (not filler rows)
        self.backward_passes = 0

    def setup(self, stage: str) -> None:
        if self.policy_name != "per_rank":
            super().setup(stage)

    def forward(self, x):
        return self.net(x)

    def score(self, batch):
        x, y, _ = batch
        return self(x), y

    def backward_loss(self, batch, weight=None):
        x, y, ids = batch
        self.backward_passes += 1
        kept = ids if weight is None else ids[weight != 0]
        self.trained.setdefault(self.current_epoch, []).extend(kept.tolist())
        return super().backward_loss((x, y), weight)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out: Path, policy: str) -> None:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(ROWS, FEATURES, generator=gen), torch.randint(0, CLASSES, (ROWS,), generator=gen),
                         torch.arange(ROWS))  # fmt: skip
    module = Classifier(policy)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(out), num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=10, shuffle=False))
    result = {
        "global_step": trainer.global_step, "trained": module.trained, "backward_passes": module.backward_passes,
        "parameters": [p.detach().clone() for p in module.parameters()], "counts": module.selective_backprop.counts,
    }  # fmt: skip
    torch.save(result, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "sb")
