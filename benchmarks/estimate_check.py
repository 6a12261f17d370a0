"""Is ``sbkernels.estimate`` right on models it was not developed on? Its prediction against measured loops.

    python -m benchmarks.estimate_check [--batches 50] [--rounds 3] [--models mlp,cnn,resnet18,gpt2] [--out ...]

Four models, each with a loader of 64 rows per batch: an MLP and a small CNN on scikit-learn's digits, a
ResNet-18 (CIFAR stem) on the digits in 3 channels (8x8: its step is compute-bound all the same), and a
2-layer GPT-2 (random init) on 64-byte windows of Python's own sources. For each backward batch size (64 and
32) and each policy (SB beta 1, Uniform 0.5): the estimate, given the model, a batch, the loader and the
optimizer, predicts the cost of a loader batch, ``F + s + r (B / b) S_b``, and its ratio to a plain step.
Then a fresh copy of the model trains for ``--batches`` loader batches (the estimate's horizon: its run's 48
and 2 warm-up; over the loader's epochs), once plainly and once selectively (the loop written here, not the
estimate's), and the mean CPU time per loader batch of each is measured. ``--rounds`` rounds of the three;
each quantity's median over the rounds. Error: ``predicted / measured - 1``, of the cost and of the ratio.
The goal: within 15%.

The keep rate moves as training goes, so a loop longer than the estimate's run can keep more or fewer rows than
it saw: each row shows both rates by quarter (``--batches 128`` shows the drift).

CPU time (``time.process_time``) on both sides: the shared machine's other load moves wall time by 2x. One
intra-op thread: the process's CPU time is then exact, while a second thread's time is only counted at the
scheduler's ticks (4 ms here), which a step of 1 ms cannot be measured with. CPU numbers, not GPU claims;
``--device cuda`` (``benchmarks/gpu_run.sh``) measures wall time with the device synchronized.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sbkernels

from .measure import device_name, git_commit
from .step import resnet18

BATCH = 64
#: Set by main: CPU time on the CPU, wall time (the device synchronized) on a GPU.
DEVICE = torch.device("cpu")
clock = time.process_time


def on_device(data):
    if isinstance(data, dict):
        return {k: v.to(DEVICE) for k, v in data.items()}
    return tuple(t.to(DEVICE) for t in data)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# -------------------------------------------------------------------------------------------- the cases
def digits(size: int | None = None, channels: int = 1):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return torch.utils.data.TensorDataset(x.expand(-1, channels, -1, -1).contiguous(), torch.tensor(d.target))


def python_sources(tokens: int = 64, windows: int = 4096):
    """Byte windows of the standard library's sources: ids in [0, 256), labels the ids (a causal LM)."""
    text = b"".join(p.read_bytes() for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200])
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    starts = torch.randperm(len(data) - tokens, generator=torch.Generator().manual_seed(0))[:windows]
    ids = torch.stack([data[s : s + tokens] for s in starts.tolist()])

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": ids[i]}

    return Windows()


def mlp():
    layers = [nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


def cnn():
    features = [nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*features, nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 10))


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=64, n_embd=128, n_layer=2, n_head=4))


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


CASES = {  # name: (model factory, dataset factory, optimizer factory)
    "mlp": (mlp, digits, sgd),
    "cnn": (cnn, digits, sgd),
    "resnet18": (lambda: resnet18(10), lambda: digits(channels=3), sgd),
    "gpt2": (gpt2, python_sources, adamw),
}


def loader(dataset, seed: int):
    return torch.utils.data.DataLoader(dataset, BATCH, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(seed))  # fmt: skip


# ------------------------------------------------------------------------------- the measured loops
def step(model, opt, data) -> None:
    loss = model(**data).loss if isinstance(data, dict) else F.cross_entropy(model(data[0]), data[1])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def score_and_observe(model, sb, data) -> None:
    """The scoring pass as the training loops make it: an LM from its hidden states (the HF trainer's route)."""
    model.eval()
    with torch.no_grad():
        if isinstance(data, dict):
            hidden = model.transformer(input_ids=data["input_ids"]).last_hidden_state
            sb.observe(hidden, data["labels"], data, lm_head=model.lm_head)
        else:
            sb.observe(model(data[0]), data[1], *data)
    model.train()


def measured_loop(case: str, policy, b: int, batches: int, seed: int) -> tuple[float, list[float]]:
    """(Mean CPU ms per loader batch over ``batches``, the keep rate of each quarter) (plain when ``policy`` is
    None); the first 2 batches (the allocator's and the optimizer's first-call costs) left out."""
    make_model, make_data, make_opt = CASES[case]
    torch.manual_seed(seed)
    model = make_model().to(DEVICE).train()
    opt = make_opt(list(model.parameters()))
    sb = None if policy is None else sbkernels.SelectiveBackprop(b, policy)
    times, kept, epoch = [], [], 0
    while len(times) < batches:
        for data in loader(make_data(), seed + 1000 * epoch):
            if len(times) == batches:
                break
            data = on_device(data)
            sync()
            start = clock()
            if sb is None:
                step(model, opt, data)
            else:
                before = sb.counts["backward"]
                score_and_observe(model, sb, data)
                for ready in sb.ready_batches():
                    step(model, opt, ready.data)
                kept.append(sb.counts["backward"] - before)
            sync()
            times.append(clock() - start)
        epoch += 1
    quarter = -(-len(kept) // 4) or 1
    rates = [sum(kept[i : i + quarter]) / (BATCH * len(kept[i : i + quarter])) for i in range(0, len(kept), quarter)]
    return 1e3 * statistics.fmean(times[2:]), rates


def one_round(case: str, b: int, name: str, policy_factory, batches: int) -> dict:
    make_model, make_data, make_opt = CASES[case]
    torch.manual_seed(1)
    model = make_model().to(DEVICE)
    sample = on_device(next(iter(loader(make_data(), 1))))
    report = sbkernels.estimate(model, sample, loader=loader(make_data(), 2), backward_batch_size=b,
                                optimizer=make_opt, policies={name: policy_factory()}, timer=clock)  # fmt: skip
    p = report.policies[0]
    plain, _ = measured_loop(case, None, b, batches, seed=3)
    selective, rates = measured_loop(case, policy_factory(), b, batches, seed=3)
    return {"F_ms": report.scoring_ms, "S_ms": report.step_ms, "S_b_ms": report.backward_step_ms,
            "s_ms": p.selection_ms, "keep_rate": p.keep_rate, "keep_windows": p.keep_windows,
            "measured_keep_windows": rates, "predicted_ms": p.cost_ms, "measured_ms": selective,
            "predicted_ratio": p.relative_cost, "plain_ms": plain}  # fmt: skip


def check(case: str, b: int, name: str, policy_factory, batches: int, rounds: int) -> dict:
    """``rounds`` rounds of (estimate, plain loop, selective loop), each quantity's median over the rounds: the
    shared machine's speed drifts by up to 50% over minutes, even in CPU time (a round's prediction of the same
    cost read 10.1 and 15.0 ms), and the median of 3 rounds drops one drifted round on either side."""
    made = [one_round(case, b, name, policy_factory, batches) for _ in range(rounds)]
    row: dict = {"model": case, "b": b, "policy": name, "rounds": rounds}
    for key in made[0]:
        values = [m[key] for m in made]
        row[key] = statistics.median(values) if isinstance(values[0], float) else values[0]
    row["predicted_rounds_ms"] = [m["predicted_ms"] for m in made]
    row["measured_rounds_ms"] = [m["measured_ms"] for m in made]
    row["measured_ratio"] = row["measured_ms"] / row["plain_ms"]
    row["error"] = row["predicted_ms"] / row["measured_ms"] - 1
    row["ratio_error"] = row["predicted_ratio"] / row["measured_ratio"] - 1
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50, help="loader batches of each measured loop")
    parser.add_argument("--models", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (estimate, loops); the median per row")
    parser.add_argument("--device", default="cpu", help="cpu (CPU time, one thread) or cuda (wall time, synchronized)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/estimate-cpu"))
    args = parser.parse_args(argv)
    global DEVICE, clock
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    else:
        clock = time.perf_counter
    policies = {"SB(beta=1)": lambda: sbkernels.SB(beta=1.0), "Uniform(0.5)": lambda: sbkernels.Uniform(rate=0.5)}
    rows = []
    for case in args.models.split(","):
        for b in (64, 32):
            for name, factory in policies.items():
                rows.append(check(case, b, name, factory, args.batches, args.rounds))
                print(json.dumps(rows[-1]), flush=True)
    write(rows, args.out, argv, DEVICE)
    return rows


def write(rows: list[dict], out: Path, argv, device: torch.device) -> None:
    command = "python -m benchmarks.estimate_check " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# `sbkernels.estimate` against measured loops, on models it was not developed on ({device.type})",
        "",
        f"{device_name(device)}, torch {torch.__version__}, commit {git_commit()}. Command: `{command.strip()}`.",
        "",
        "Loader batch B = 64. Predicted: `F + s + r (B / b) S_b` per loader batch from `estimate` (the model, a batch,",
        "the loader, the optimizer; a 48-batch selective run per policy); measured: the mean CPU time per loader",
        "batch of a plain and a selective loop over the loader from a fresh model; each row the median of 3 rounds",
        "(estimate, plain loop, selective loop; the shared machine drifts over minutes). Goal: |error| <= 15%.",
        "F, S, S_b, s in ms: "
        + (
            "CPU time, one thread; CPU numbers, not GPU claims."
            if device.type == "cpu"
            else "wall time, the device synchronized."
        ),
        "",
        "| model | b | policy | F | S | S_b | s | keep r | r by quarter | loop's r by quarter | predicted (ms) "
        "| measured (ms) | error "
        "| predicted / plain | measured / plain | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        estimated, measured = (" ".join(f"{x:.2f}" for x in r[k]) for k in ("keep_windows", "measured_keep_windows"))
        lines.append(
            f"| {r['model']} | {r['b']} | {r['policy']} | {r['F_ms']:.2f} | {r['S_ms']:.2f} | {r['S_b_ms']:.2f} | "
            f"{r['s_ms']:.2f} | {r['keep_rate']:.2f} | {estimated} | {measured} | "
            f"{r['predicted_ms']:.2f} | "
            f"{r['measured_ms']:.2f} | {100 * r['error']:+.0f}% | {r['predicted_ratio']:.2f} | "
            f"{r['measured_ratio']:.2f} | {100 * r['ratio_error']:+.0f}% |"
        )
    worst = max(abs(r["error"]) for r in rows)
    lines += ["", f"Largest |error| of the cost per loader batch: {100 * worst:.0f}%."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
