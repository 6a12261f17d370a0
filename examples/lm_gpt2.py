"""Sequence-level Selective-Backprop on a language model: a tiny GPT-2 (random init) on Python's own sources.

    python -m examples.lm_gpt2                       # CPU, about two minutes
    python -m examples.lm_gpt2 --scoring logits      # score from (B, T, V) logits instead of hidden states

Everything is offline: the model is built from a ``GPT2Config`` with random weights, the tokenizer is a
byte-level BPE trained here on the standard library's ``.py`` files, and those files are the data. Batches
come from transformers' ``DataCollatorForLanguageModeling`` (dynamic padding: each batch is padded to its
own longest sequence, labels -100 on padding), fed to sbkernels unchanged.

Three runs over the same loader batches: the baseline backpropagates every sequence, Composer's recipe
(keep 0.5 from 50% to 90% of the run) half of some batches, and Selective-Backprop
scores each batch in eval mode under no_grad (from the last hidden states and the LM head, never forming
the logits, or from the logits), keeps whole sequences by their loss percentile and backpropagates full
batches of the kept ones. It prints held-out loss against the sequences backpropagated and the wall time.
"""

from __future__ import annotations

import argparse
import random
import sysconfig
import time
from pathlib import Path

import torch

import sbkernels

try:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
except ImportError as error:  # pragma: no cover - the example's one optional dependency
    raise SystemExit("examples.lm_gpt2 needs transformers: pip install transformers (or `make test`)") from error


def stdlib_snippets(limit_files: int, max_chars: int, seed: int) -> list[str]:
    """Paragraphs (blocks between blank lines) of the standard library's sources, shuffled."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))[:limit_files]
    snippets = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="ignore")
        snippets += [block.strip()[:max_chars] for block in text.split("\n\n") if len(block.strip()) > 40]
    random.Random(seed).shuffle(snippets)
    return snippets


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` (a few seconds), wrapped for transformers."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def make_model(vocab_size: int, context: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=128, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config)


@torch.no_grad()
def held_out_loss(model: GPT2LMHeadModel, batches: list[dict]) -> float:
    model.eval()
    total = count = 0.0
    for batch in batches:
        out = model(**batch)
        tokens = float((batch["labels"][:, 1:] != -100).sum())
        total, count = total + float(out.loss) * tokens, count + tokens
    model.train()
    return total / count


ARMS = ("baseline", "sb", "composer")


def train(args, loader_batches: list[dict], eval_batches: list[dict], vocab: int, pad_id: int, arm: str) -> dict:
    """One arm: "baseline" (every sequence), "sb" (SB(beta)) or "composer" (Composer's recipe as it ships:
    keep 0.5 from 50% to 90% of the run, every second batch whole)."""
    model = make_model(vocab, args.context, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sb = None
    if arm == "sb":
        policy = sbkernels.SB(beta=args.beta, history_size=4 * args.batch_size, seed=args.seed)
        sb = sbkernels.SelectiveBackprop(args.batch_size, policy, pad_values={"input_ids": pad_id})
    elif arm == "composer":
        schedule = sbkernels.ComposerSchedule(0.5, 0.9, 2, max_duration=len(loader_batches))
        sb = sbkernels.SelectiveBackprop(args.batch_size, sbkernels.Keep(0.5, seed=args.seed), schedule=schedule,
                                         pad_values={"input_ids": pad_id})  # fmt: skip
    curve, backward, start = [], 0, time.perf_counter()

    def step(batch: dict) -> None:
        nonlocal backward
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        backward += batch["input_ids"].shape[0]

    for i, batch in enumerate(loader_batches):
        if sb is None:
            step(batch)
        else:
            model.eval()  # the scoring pass: no dropout, no graph
            with torch.no_grad():
                if args.scoring == "hidden":
                    out = model.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    sb.observe(out.last_hidden_state, batch["labels"], batch, lm_head=model.lm_head)
                else:
                    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    sb.observe(out.logits, batch["labels"], batch)
            model.train()
            for ready in sb.ready_batches():
                step(dict(ready.data))
        if (i + 1) % args.eval_every == 0 or i + 1 == len(loader_batches):
            curve.append((i + 1, backward, held_out_loss(model, eval_batches), time.perf_counter() - start))
            print(f"  {arm:8s} batch {i + 1:4d}  backward sequences {backward:5d}  "
                  f"held-out loss {curve[-1][2]:.3f}  {curve[-1][3]:.0f} s", flush=True)  # fmt: skip
    if sb is not None:
        for ready in sb.flush():
            step(dict(ready.data))
        sb.check()
    final = held_out_loss(model, eval_batches)
    return {"curve": curve, "backward": backward, "held_out": final, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m examples.lm_gpt2", description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000, help="training sequences (one pass)")
    parser.add_argument("--eval", type=int, default=300, help="held-out sequences")
    parser.add_argument("--files", type=int, default=120, help="standard-library files read")
    parser.add_argument("--context", type=int, default=128, help="tokens per sequence at most")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scoring", choices=["hidden", "logits"], default="hidden")
    parser.add_argument("--eval-every", type=int, default=50, help="loader batches between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write held-out loss against wall time to this PNG")
    args = parser.parse_args(argv)

    texts = stdlib_snippets(args.files, max_chars=4 * args.context, seed=args.seed)
    if len(texts) < args.train + args.eval:
        raise SystemExit(f"only {len(texts)} snippets in {args.files} files: raise --files or lower --train")
    tokenizer = train_tokenizer(texts[: args.train], args.vocab)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False, return_tensors="pt")

    def batches(chunk: list[str]) -> list[dict]:
        encoded = [tokenizer(t, truncation=True, max_length=args.context) for t in chunk]
        return [dict(collator(encoded[i : i + args.batch_size])) for i in range(0, len(encoded), args.batch_size)]

    train_batches, eval_batches = batches(texts[: args.train]), batches(texts[args.train : args.train + args.eval])
    vocab = len(tokenizer)
    print(f"{len(train_batches)} loader batches of {args.batch_size} sequences (dynamic padding), "
          f"{len(eval_batches)} held-out batches, vocabulary {vocab}, scoring from {args.scoring}")  # fmt: skip
    results = {name: train(args, train_batches, eval_batches, vocab, tokenizer.pad_token_id, name) for name in ARMS}
    print("\nrun       backward sequences   held-out loss   wall time")
    for name, r in results.items():
        print(f"{name:9s} {r['backward']:18d}   {r['held_out']:13.3f}   {r['seconds']:7.0f} s")
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    return results


def plot(results: dict, path: str) -> None:
    """Held-out loss against wall time, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, r in results.items():
        axes.plot([p[3] for p in r["curve"]], [p[2] for p in r["curve"]], marker=".", label=name)
    axes.set_xlabel("training wall time (s)")
    axes.set_ylabel("held-out loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
