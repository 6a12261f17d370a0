"""Selective-Backprop in Lightning with ``strategy="ddp"``: an MLP on scikit-learn's digits, 2 CPU processes.

    python -m examples.lightning_ddp                        # SB(beta=2), gloo; Lightning launches rank 1
    python -m examples.lightning_ddp --policy importance    # a weighted policy: backward_loss gets the weights
    python -m examples.lightning_ddp --plain                # the same run with a plain LightningModule
    python -m examples.lightning_ddp --strategy fsdp2       # FSDP2 (fully_shard) on CPU: the scoring pass runs
                                                            # on the sharded model

``SelectiveBackpropModule`` sees the strategy's process group and selects globally over the ranks (SPEC
section 8): every rank takes the same optimizer steps, a rank whose share of an epoch's last step is empty
trains one row at weight 0, and the checkpoints hold every rank's selection state. ``--record DIR`` writes
what each rank trained to ``DIR/rank<r>.pt`` (the tests' evidence: tests/integrations/test_lightning_ddp.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import sbkernels
from examples._distributed import whole_parameter
from examples.demo.data import load_dataset
from sbkernels.integrations.lightning import SelectiveBackpropModule

POLICIES = {
    "sb": lambda: sbkernels.SB(beta=2.0, history_size=256, seed=2),
    "importance": lambda: sbkernels.Importance(k=24, seed=2),
    "per_rank": lambda: sbkernels.SB(beta=2.0, history_size=256, seed=2),  # the tests' negative control
}


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


class Classifier(SelectiveBackpropModule):
    def __init__(self, policy: str, batch_size: int) -> None:
        super().__init__(sbkernels.SelectiveBackprop(batch_size, POLICIES[policy]()), accumulate_grad_batches=2)
        self.policy_name, self.net = policy, mlp()
        self.trained: dict[int, list[int]] = {}  # epoch -> sample ids trained with a weight (not filler rows)
        self.backward_passes = 0
        self.first_step: list[tuple] = []
        self.initial = [p.detach().clone() for p in self.net.parameters()]
        self.selections: list[dict] = []  # every observe's logits, targets and this rank's selected rows
        observe = self.selective_backprop.observe

        def recorded(scores, targets, *batch, **kwargs):
            selection = observe(scores, targets, *batch, **kwargs)
            self.selections.append({"logits": scores.clone(), "targets": targets.clone(),
                                    "local": selection.indices[: int(selection.count)].clone()})  # fmt: skip
            return selection

        self.selective_backprop.observe = recorded  # type: ignore[method-assign]

    def setup(self, stage: str) -> None:
        if self.policy_name != "per_rank":  # per_rank: each rank selects alone, as before #28
            super().setup(stage)

    def configure_model(self) -> None:
        shard(self)

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
        if self.global_step == 0:  # the first optimizer step's rows and weights, for the gradient check
            self.first_step.append((x.clone(), y.clone(), None if weight is None else weight.clone()))
        return super().backward_loss((x, y), weight)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def strategy(name: str) -> str | L.pytorch.strategies.Strategy:
    """FSDP2 is Lightning's ModelParallelStrategy with data parallelism only; the modules shard in
    ``configure_model``."""
    if name == "fsdp2":
        return L.pytorch.strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    return name


def shard(module: L.LightningModule) -> None:
    """``configure_model`` under FSDP2: the MLP's layers sharded over the ranks (fully_shard)."""
    if isinstance(module.trainer.strategy, L.pytorch.strategies.ModelParallelStrategy):
        from torch.distributed.fsdp import fully_shard

        for layer in module.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(module.net)


class Plain(L.LightningModule):
    """The same model and optimizer, every row backpropagated (the baseline)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def configure_model(self) -> None:
        shard(self)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TrainTime(L.Callback):
    """Seconds of the training loop alone (without the process group's start-up and teardown)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", choices=sorted(POLICIES), default="sb")
    parser.add_argument("--plain", action="store_true", help="train every row (the baseline)")
    parser.add_argument(
        "--strategy",
        choices=("ddp", "fsdp", "fsdp2"),
        default="ddp",
        help="ddp; fsdp (Lightning's FSDPStrategy: GPUs only); fsdp2 (fully_shard, CPU too)",
    )
    parser.add_argument("--accelerator", default="cpu", help="cpu, or cuda (benchmarks/gpu_run.sh)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32, help="loader batch per rank (backward batch: half)")
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--record", type=Path, help="write what each rank trained to RECORD/rank<r>.pt")
    parser.add_argument("--checkpoints", type=Path, help="save a checkpoint at every epoch's end in CHECKPOINTS")
    parser.add_argument("--every-n-steps", type=int, help="with --checkpoints: every N optimizer steps instead")
    parser.add_argument("--resume", type=Path, help="a checkpoint to resume from")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits", train_subset=args.train_rows)
    rows = data.train_x.shape[0]
    train = TensorDataset(data.train_x, data.train_y, torch.arange(rows))
    module = Plain() if args.plain else Classifier(args.policy, args.batch_size // 2)
    module.lr = args.lr
    saving = args.checkpoints is not None
    timer = TrainTime()
    every = {"every_n_train_steps": args.every_n_steps} if args.every_n_steps else {}
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=args.checkpoints, save_top_k=-1, **every)
    callbacks = [timer, *([checkpoint] * saving)]
    trainer = L.Trainer(
        max_epochs=args.epochs, max_steps=args.max_steps, accelerator=args.accelerator, devices=2,
        strategy=strategy(args.strategy), logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=saving, callbacks=callbacks, default_root_dir="runs/lightning_ddp",
        num_sanity_val_steps=0,
    )  # fmt: skip
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=False)
    trainer.fit(module, loader, ckpt_path=args.resume)
    seconds = timer.seconds
    if args.record is not None:
        args.record.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": trainer.global_step, "seconds": seconds,
                    "loader_batches": trainer.num_training_batches, "trained": getattr(module, "trained", None),
                    "backward_passes": getattr(module, "backward_passes", 0),
                    "first_step": getattr(module, "first_step", None), "initial": getattr(module, "initial", None),
                    "selections": getattr(module, "selections", None),
                    "parameters": [whole_parameter(p) for p in module.parameters()]},
                   args.record / f"rank{trainer.global_rank}.pt")  # fmt: skip
    if trainer.global_rank == 0:
        arm = "plain" if args.plain else args.policy
        print(f"{arm}: {trainer.global_step} optimizer steps, training loop {seconds:.2f} s")


if __name__ == "__main__":
    main()
