"""Selective-Backprop under DistributedDataParallel: the demo's CNN on digits, global selection, equal steps.

    torchrun --nproc_per_node=2 -m examples.ddp_train               # CPU, gloo, about a minute
    torchrun --nproc_per_node=8 -m examples.ddp_train --device cuda  # one GPU per rank, NCCL

Every rank scores its shard, ``SB`` ranks each loss against one history shared by all ranks (the global
batch is the ranks' batches concatenated), and ``SelectiveBackprop(process_group=...)`` makes every rank
take the same number of backward steps, so DDP's gradient all-reduce always has all its partners. Batches
carry ``weight``: ``(weight * loss).sum()`` makes DDP's averaged gradient the mean over the step's rows.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import sbkernels
from examples.demo.data import load_dataset
from examples.demo.training import evaluate, make_model
from sbkernels.distributed import release_collective_tensors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node=2 -m examples.ddp_train")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank, for scoring and for backward")
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    data = load_dataset("digits")
    train = TensorDataset(data.train_x, data.train_y, torch.arange(len(data.train_y)))
    sampler = DistributedSampler(train, shuffle=True, seed=0, drop_last=True)  # the same N on every rank
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)

    torch.manual_seed(0)  # the same initial model on every rank
    model = make_model(data.train_x.shape[-1]).to(device)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    sb = sbkernels.SelectiveBackprop(args.batch_size, sbkernels.SB(beta=args.beta), process_group=dist.group.WORLD)

    def train_on(batches) -> int:
        steps = 0
        for batch in batches:
            x, y = batch.data
            loss = (batch.weight * F.cross_entropy(ddp(x), y, reduction="none")).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        return steps

    steps, start = 0, time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        sb.start_epoch(epoch)
        for x, y, ids in loader:
            x, y, ids = x.to(device), y.to(device), ids.to(device)
            with torch.no_grad():
                logits = model(x)  # the scoring pass needs no gradient synchronization
            sb.observe(logits, y, x, y, sample_ids=ids)
            steps += train_on(sb.ready_batches())
        steps += train_on(sb.flush())
        error, _ = evaluate(model, data.test_x.to(device), data.test_y.to(device))
        if rank == 0:
            print(f"epoch {epoch}: test accuracy {100 * (1 - error):.2f}%, {steps} steps", flush=True)
    counts = torch.tensor([steps, sb.counts["observed"], sb.counts["backward"]], device=device)
    everyone = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(everyone, counts)
    summary = {"rank": rank, "steps": steps, "observed": sb.counts["observed"], "backward": sb.counts["backward"]}
    if rank == 0:
        for r, c in enumerate(everyone):
            print(f"rank {r}: {int(c[0])} optimizer steps, {int(c[2])} of {int(c[1])} examples backpropagated")
        equal = len({int(c[0]) for c in everyone}) == 1
        print(f"{time.perf_counter() - start:.1f} s; optimizer steps equal on every rank: {equal}")
    dist.barrier()  # every rank done with every collective before the group goes
    release_collective_tensors()  # else torch's gloo teardown can deadlock (see there)
    dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
