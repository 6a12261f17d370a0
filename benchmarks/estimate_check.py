"""Is ``sbkernels.estimate`` right? Its prediction against a measured ``SelectiveBackprop`` loop, two models.

    python -m benchmarks.estimate_check [--batches 24] [--out benchmarks/results/estimate-cpu]

For each model (a ResNet-18 on 32x32 images, a 2-layer GPT-2 on token sequences) and each of SB beta 1
and 2: the estimate's predicted time per loader batch, ``(F + s + r * S)``, against the median measured time
per loader batch of a real loop over the same batch shape (scoring pass, ``observe``, a training step on
every ready backward batch with a real optimizer), after the history has filled. One run; the error is
``measured / predicted - 1``. The goal: within 20%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sbkernels

from .measure import device_name, git_commit
from .step import resnet18


def image_case(batch: int):
    torch.manual_seed(0)
    model = resnet18(10)

    def loader(i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def train(model, opt, data) -> None:
        x, y = data
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def score(model, data):
        return model(data[0]), data[1], data

    return model, loader, train, score


def lm_case(batch: int, tokens: int = 128, vocab: int = 8192):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=tokens, n_embd=256, n_layer=2, n_head=4))

    def loader(i: int):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, vocab, (batch, tokens), generator=g)
        return {"input_ids": ids, "labels": ids}

    def train(model, opt, data) -> None:
        loss = model(**data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    def score(model, data):
        return model(input_ids=data["input_ids"]).logits, data["labels"], (data,)

    return model, loader, train, score


def measured_loop(model, loader, train, score, policy, batches: int, batch: int) -> float:
    """Mean ms per loader batch of a real SelectiveBackprop loop, after a warm-up that fills the history.

    The mean, not the median: a loader batch costs F alone until a backward batch is complete, then F + S,
    so the times are bimodal and only their mean is the cost per batch the estimate predicts."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sb = sbkernels.SelectiveBackprop(batch, policy)
    times = []
    for i in range(batches):
        data = loader(i)
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            logits, targets, rows = score(model, data)
        model.train()
        sb.observe(logits, targets, *(rows if isinstance(rows, tuple) else (rows,)))
        for ready in sb.ready_batches():
            train(model, opt, ready.data)
        times.append(time.perf_counter() - start)
    warm = max(1, -(-policy.history_size // batch))  # calls until the history is full
    return 1e3 * statistics.fmean(times[warm:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="loader batches of the measured loop")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/estimate-cpu"))
    args = parser.parse_args(argv)
    rows = []
    cases = {"ResNet-18, 32 images 3x32x32": (image_case, 32), "GPT-2 2 layers, 8 x 128 tokens": (lm_case, 8)}
    for name, (make, batch) in cases.items():
        for beta in (1.0, 2.0):
            model, loader, _, _ = make(batch)
            sample = loader(10_000)

            def predict(model=model, sample=sample, beta=beta, batch=batch):
                fresh = sbkernels.SB(beta=beta, history_size=4 * batch)
                report = sbkernels.estimate(model, sample, policies={"SB": fresh}, reps=7)
                p = report.policies[0]
                return report, p, report.scoring_ms + p.selection_ms + p.keep_rate * report.step_ms

            # The shared 2-core machine drifts by 2x over minutes: estimate before and after the loop, and
            # compare the loop with the mean of the two predictions (both are reported).
            report, p, before = predict()
            loop_model, loop_loader, loop_train, loop_score = make(batch)  # a fresh model for the loop
            fresh = sbkernels.SB(beta=beta, history_size=4 * batch)
            measured = measured_loop(loop_model, loop_loader, loop_train, loop_score, fresh, args.batches, batch)
            _, _, after = predict()
            predicted = (before + after) / 2
            rows.append({"model": name, "beta": beta, "F_ms": report.scoring_ms, "S_ms": report.step_ms,
                         "s_ms": p.selection_ms, "keep_rate": p.keep_rate, "predicted_before_ms": before,
                         "predicted_after_ms": after, "predicted_ms": predicted, "measured_ms": measured,
                         "error": measured / predicted - 1})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    command = "python -m benchmarks.estimate_check " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "commit": git_commit(),
            "command": command}  # fmt: skip
    lines = [
        "# `sbkernels.estimate` against a measured SelectiveBackprop loop (CPU)",
        "",
        f"{meta['device']}, torch {meta['torch']}, commit {meta['commit']}. Command: `{meta['command']}`.",
        "One run. Predicted: F + s + r * S per loader batch from `estimate` on one batch, run before and after",
        "the loop (the shared machine drifts), and their mean; measured: the mean time per loader batch of a real",
        "loop (scoring, observe, a training step on each ready batch, SGD) after the history filled.",
        "Goal: |error| <= 20%. CPU numbers, not GPU claims.",
        "",
        "| model | SB beta | F (ms) | S (ms) | s (ms) | keep r | predicted before / after (ms) | mean | measured (ms) "
        "| error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['beta']:g} | {r['F_ms']:.1f} | {r['S_ms']:.1f} | {r['s_ms']:.2f} | "
            f"{r['keep_rate']:.2f} | {r['predicted_before_ms']:.0f} / {r['predicted_after_ms']:.0f} | "
            f"{r['predicted_ms']:.0f} | {r['measured_ms']:.0f} | {100 * r['error']:+.0f}% |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
