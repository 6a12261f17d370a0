"""Selective-Backprop in the Hugging Face ``Trainer`` on several processes: a tiny GPT-2 (random init) on
Python's own sources, offline.

    torchrun --nproc_per_node 2 -m examples.hf_ddp              # CPU: gloo; about a minute
    torchrun --nproc_per_node 2 -m examples.hf_ddp --resume     # continue from the last checkpoint

``SelectiveBackpropTrainer`` sees ``world_size > 1`` and selects globally over the ranks by itself (SPEC
section 8): each rank scores its shard of every loader batch, the sequences are ranked against one shared
loss history, and every rank takes the same optimizer steps. Checkpoints hold every rank's selection state
(``selective_backprop.pt``) and resume only at the same world size.

``--record DIR`` writes what each rank scored, selected and trained to ``DIR/rank<r>.pt`` (the tests'
evidence: tests/integrations/test_hf_ddp.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist

import sbkernels
from examples._distributed import whole_parameter
from examples.lm_gpt2 import make_model, stdlib_snippets, train_tokenizer

try:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
except ImportError as error:  # pragma: no cover - the example's one optional dependency
    raise SystemExit("examples.hf_ddp needs transformers: pip install transformers (or `make test`)") from error

from sbkernels.integrations.hf import SelectiveBackpropTrainer


class RecordingTrainer(SelectiveBackpropTrainer):
    """Keeps, per pass over the data, the rows each optimizer step trained, and every selection's inputs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trained: list[tuple[int, list[tuple[int, ...]]]] = []  # (pass, rows as token tuples)
        self.selections: list[dict] = []
        self.handed: list[dict] = []
        self.initial = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        policy = self.selective_backprop.policy
        select_rows = policy.select_rows

        def recorded(losses, flags, state):
            selection = select_rows(losses, flags, state)
            self.selections.append({"losses": losses.clone(), "flags": flags.clone(),
                                    "local": selection.indices[: int(selection.count)].clone()})  # fmt: skip
            return selection

        policy.select_rows = recorded  # type: ignore[method-assign]

    def get_train_dataloader(self):
        """The backward batches as handed to the Trainer, recorded with the pass they come from (at hand-out:
        with accumulation the Trainer fetches a batch of the next pass before it trains this pass's last)."""
        return _Recorded(self, super().get_train_dataloader())


class _Recorded:
    def __init__(self, trainer: RecordingTrainer, batches) -> None:
        self.trainer, self.batches = trainer, batches

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self):
        for inputs in self.batches:
            rows = [
                tuple(ids[mask.bool()].tolist())
                for ids, mask, labels in zip(
                    inputs["input_ids"], inputs["attention_mask"], inputs["labels"], strict=True
                )
                if bool((labels != -100).any())
            ]  # fmt: skip  (a filler row has no label)
            self.trainer.trained.append((self.trainer.position["epoch"], rows))
            if len(self.trainer.handed) < 2:  # the first optimizer step's batches (accumulation 2), whole
                self.trainer.handed.append({key: value.clone() for key, value in inputs.items()})
            yield inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/hf_ddp", help="the Trainer's output_dir (checkpoints)")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--save-steps", type=int, default=4)
    parser.add_argument("--eval-steps", type=int, default=6)
    parser.add_argument("--backward-batch", type=int, default=4, help="rows per backward batch (per rank)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, help="a checkpoint, or the last one")
    parser.add_argument("--record", type=Path, help="write what each rank trained to RECORD/rank<r>.pt")
    parser.add_argument("--texts", type=int, default=96, help="training sequences")
    parser.add_argument("--per-rank", action="store_true", help="(the tests' negative control) select per rank")
    parser.add_argument("--plain", action="store_true", help="transformers.Trainer on every row (the baseline)")
    parser.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 (GPUs only: accelerate)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--optim", default="adamw_torch", help="the Trainer's optimizer (the tests: sgd)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    parser.add_argument("--no-dropout", action="store_true", help="a deterministic forward (the tests)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.per_rank:  # what the trainer did before #28: every rank selects alone
        SelectiveBackpropTrainer._use_process_group = lambda self: None  # type: ignore[method-assign]

    texts = sorted(set(stdlib_snippets(limit_files=12, max_chars=160, seed=0)))[: args.texts + 32]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    encoded = [{"input_ids": tokenizer(text)["input_ids"][:48]} for text in texts]
    train, held_out = encoded[: args.texts], encoded[args.texts :]
    training = TrainingArguments(
        output_dir=args.output, max_steps=args.max_steps, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        learning_rate=args.lr, optim=args.optim, lr_scheduler_type="constant", max_grad_norm=args.max_grad_norm,
        logging_steps=2, save_steps=args.save_steps, eval_strategy="steps",
        eval_steps=args.eval_steps,
        report_to=[], use_cpu=args.device == "cpu", seed=0, dataloader_num_workers=0, disable_tqdm=True,
        ddp_backend="gloo" if args.device == "cpu" else "nccl",
        ddp_find_unused_parameters=False,
        **({"fsdp": "full_shard", "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["GPT2Block"]}}
           if args.fsdp else {}),
    )  # fmt: skip
    model = make_model(len(tokenizer), context=64, seed=0)
    for module in model.modules():
        if args.no_dropout and isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    common = dict(model=model, args=training, train_dataset=train,
                  eval_dataset=held_out, data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                  processing_class=tokenizer)  # fmt: skip
    if args.plain:
        trainer = Trainer(**common)
    else:
        sb = sbkernels.SelectiveBackprop(args.backward_batch, sbkernels.SB(beta=1.0, history_size=64, seed=1))
        trainer = RecordingTrainer(**common, selective_backprop=sb)
    metrics = trainer.train(resume_from_checkpoint=args.resume).metrics
    rank = dist.get_rank() if dist.is_initialized() else 0
    if args.plain:
        if rank == 0:
            print(f"plain: {trainer.state.global_step} optimizer steps in {metrics['train_runtime']:.2f} s")
        return
    if args.record is not None:
        args.record.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": trainer.state.global_step, "trained": trainer.trained,
                    "train_runtime": metrics["train_runtime"], "hidden_scoring": trainer._hidden_scoring,
                    "handed": trainer.handed, "initial": trainer.initial, "config": trainer.model.config.to_dict(),
                    "final": {name: whole_parameter(p) for name, p in trainer.model.named_parameters()},
                    "sharded": any(hasattr(p, "full_tensor") for p in trainer.model.parameters()),
                    "selections": trainer.selections, "counts": trainer.selective_backprop.counts,
                    "parameters": [whole_parameter(p) for p in trainer.model.parameters()]},
                   args.record / f"rank{rank}.pt")  # fmt: skip
    if rank == 0:
        logs = [log for log in trainer.state.log_history if "eval_loss" in log] or [{"eval_loss": float("nan")}]
        counts = trainer.selective_backprop.counts
        print(f"world size {int(os.environ.get('WORLD_SIZE', 1))}: {trainer.state.global_step} optimizer steps, "
              f"held-out loss {logs[-1]['eval_loss']:.3f}, rows {counts}, "
              f"{metrics['train_runtime']:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
