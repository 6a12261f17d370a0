"""``python -m sbkernels.estimate MODULE:CALLABLE [--input 3x224x224 --classes 1000 | --vocab V --tokens T]``:
the estimate of :mod:`sbkernels.estimate` on a model built by MODULE:CALLABLE and random data (one batch,
repeated: the keep rates of random labels are not your data's; call ``sbkernels.estimate`` with your loader)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import Batch, Estimate, estimate

OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def _factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise SystemExit(f"model must be MODULE:CALLABLE (e.g. torchvision.models:resnet18), got {spec!r}")
    import importlib

    return getattr(importlib.import_module(module_name), attribute)


def main(argv: Sequence[str] | None = None) -> Estimate:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m sbkernels.estimate", description="Will selection pay for this model? (random data)"
    )
    parser.add_argument("model", help="MODULE:CALLABLE returning the model, e.g. torchvision.models:resnet18")
    parser.add_argument("--input", default="3x32x32", help="one example's input shape, e.g. 3x224x224")
    parser.add_argument("--classes", type=int, default=10, help="classes (the model's output width)")
    parser.add_argument("--vocab", type=int, help="a language model: token ids in [0, vocab), batch as a dict")
    parser.add_argument("--tokens", type=int, default=128, help="a language model's sequence length")
    parser.add_argument("--batch", type=int, default=64, help="rows of one loader batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backward-batch", type=int, help="rows of one backward batch (default: --batch)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw", help="the training step's")
    parser.add_argument("--lr", type=float, default=1e-3, help="the optimizer's learning rate")
    parser.add_argument("--steps", type=int, default=48, help="loader batches of each policy's selective run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = _factory(args.model)().to(device)
    gen = torch.Generator().manual_seed(0)
    batch: Batch
    if args.vocab:
        ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=gen).to(device)
        batch = {"input_ids": ids, "labels": ids}
    else:
        shape = tuple(int(d) for d in args.input.split("x"))
        inputs = torch.randn(args.batch, *shape, generator=gen).to(device)
        batch = (inputs, torch.randint(0, args.classes, (args.batch,), generator=gen).to(device))
    kind, lr = OPTIMIZERS[args.optimizer], args.lr

    def optimizer(params):
        return kind(params, lr=lr)

    optimizer.__name__ = f"{kind.__name__}(lr={lr:g})"
    report = estimate(model, batch, backward_batch_size=args.backward_batch, optimizer=optimizer, steps=args.steps)
    print(report)
    return report


if __name__ == "__main__":
    main()
