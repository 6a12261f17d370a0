"""SelectiveBackpropTrainer inside a real ``transformers.Trainer`` (SPEC section 10): a random-init GPT-2,
a collator with dynamic padding, gradient accumulation, evaluation and a resumed checkpoint. Offline.
transformers is installed by `make test`; outside CI the module skips without it."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("CI"):
    import transformers  # noqa: F401  (CI installs it: a missing extra must fail, not skip)
else:
    pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import sbkernels
from sbkernels.integrations.hf import STATE_FILE, SelectiveBackpropTrainer

VOCAB, PAD = 64, 0


def sequences(count: int, seed: int) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 20, (count,), generator=gen).tolist()
    return [{"input_ids": torch.randint(1, VOCAB, (n,), generator=gen).tolist()} for n in lengths]


def collate(examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """What DataCollatorForLanguageModeling(mlm=False) returns: padded to the batch's longest sequence."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), PAD)
    mask = torch.zeros(len(examples), width, dtype=torch.int64)
    for i, e in enumerate(examples):
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, : len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, -100)}


def model() -> GPT2LMHeadModel:
    """No dropout: training then does not depend on the global RNG, which the Trainer's evaluation draws from
    (a DataLoader iterator takes a seed), so runs with and without evaluation can be compared batch by batch."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=1, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(config)


class Recording(SelectiveBackpropTrainer):
    """Records what the Trainer trains on: every training_step's batch and num_items_in_batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained: list[dict[str, torch.Tensor]] = []
        self.items: list[int] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.trained.append({key: value.clone() for key, value in inputs.items()})
        self.items.append(int(num_items_in_batch))
        return super().training_step(model, inputs, num_items_in_batch)


def make_trainer(tmp_path, max_steps=6, save_steps=1000, scoring="auto", cls=Recording, eval_steps=0) -> Recording:
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        learning_rate=1e-3, logging_steps=1, save_steps=save_steps, report_to=[],
        eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps or None,
        use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(beta=1.0, history_size=32, seed=1), pad_values={"input_ids": PAD})
    return cls(
        model=model(), args=args, train_dataset=sequences(40, 0), eval_dataset=sequences(16, 1),
        data_collator=collate, selective_backprop=sb, scoring=scoring,
    )  # fmt: skip


@pytest.mark.parametrize("scoring", ["auto", "logits"])
def test_trains_backward_batches_with_accumulation_and_the_right_item_counts(tmp_path, scoring):
    trainer = make_trainer(tmp_path, scoring=scoring)
    trainer.train()
    assert trainer.state.global_step == 6  # optimizer steps taken, as max_steps says
    assert len(trainer.trained) == 12  # 2 accumulated backward batches per step
    for step in range(6):  # num_items_in_batch counts the labels of the two batches the step trains on (by
        pair = trainer.trained[2 * step : 2 * step + 2]  # the Trainer's rule: shifted or not, per model)
        counts = {sum(int((b["labels"][:, shift:] != -100).sum()) for b in pair) for shift in (0, 1)}
        assert trainer.items[2 * step] == trainer.items[2 * step + 1] and trainer.items[2 * step] in counts
    assert all(b["input_ids"].shape[0] <= 4 for b in trainer.trained)
    counts = trainer.selective_backprop.counts
    assert counts["backward"] < counts["scored"]  # selection happened
    logs = [entry for entry in trainer.state.log_history if "sb_selected_fraction" in entry]
    assert logs and 0 < logs[-1]["sb_selected_fraction"] < 1 and logs[-1]["sb_scored_rows"] == counts["scored"]
    assert logs[-1]["epoch"] == logs[-1]["sb_epoch"] > 0  # the logged epoch: passes over the training data


def test_evaluation_sees_every_row_and_leaves_the_selection_state_alone(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train()
    before = trainer.selective_backprop.state_dict()
    metrics = trainer.evaluate()
    after = trainer.selective_backprop.state_dict()
    assert torch.equal(before["policy"]["state"]["history"], after["policy"]["state"]["history"])
    assert torch.equal(before["policy"]["state"]["meta"], after["policy"]["state"]["meta"])
    assert before["counts"] == after["counts"]
    # The same evaluation by a plain Trainer on the same model: every row, nothing selected.
    plain = Trainer(model=trainer.model, args=trainer.args, eval_dataset=trainer.eval_dataset, data_collator=collate)
    assert metrics["eval_loss"] == pytest.approx(plain.evaluate()["eval_loss"], rel=1e-6)


def test_evaluation_during_training_changes_nothing_the_training_does(tmp_path):
    """Evaluating every 2 steps: the same batches are trained and the same parameters come out as without."""
    quiet, evaluated = make_trainer(tmp_path / "a"), make_trainer(tmp_path / "b", eval_steps=2)
    quiet.train()
    evaluated.train()
    assert sum("eval_loss" in entry for entry in evaluated.state.log_history) == 3
    for a, b in zip(quiet.trained, evaluated.trained, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
    for p, q in zip(quiet.model.parameters(), evaluated.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_resumed_run_trains_exactly_as_the_uninterrupted_one(tmp_path):
    full = make_trainer(tmp_path / "full", max_steps=8, save_steps=4)
    full.train()
    resumed = make_trainer(tmp_path / "full", max_steps=8, save_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert os.path.exists(tmp_path / "full" / "checkpoint-4" / STATE_FILE)
    tail = full.trained[8:]  # steps 5..8: the batches after the checkpoint
    assert len(resumed.trained) == len(tail) == 8
    for a, b in zip(tail, resumed.trained, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_corrupted_selection_checkpoint_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, save_steps=2)
    trainer.train()
    path = tmp_path / "checkpoint-2" / STATE_FILE
    saved = torch.load(path, weights_only=True)
    saved["selective_backprop"]["policy"]["state"]["history"][0] = float("nan")
    torch.save(saved, path)
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


@pytest.mark.parametrize("epochs", [1, 2])
def test_num_train_epochs_scores_every_row_once_per_epoch_then_stops(tmp_path, epochs):
    """#29: num_train_epochs, the Trainer's most common argument, was refused. The wrapper's passes are the
    epochs: every row scored exactly `epochs` times, then training stops (with fewer optimizer steps than the
    bound the Trainer was told, since not every row is selected)."""
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8,
                             gradient_accumulation_steps=2, report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True)  # fmt: skip
    sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(beta=1.0, history_size=32, seed=1), pad_values={"input_ids": PAD})
    trainer = Recording(model=model(), args=args, train_dataset=sequences(40, 0), data_collator=collate,
                        selective_backprop=sb)  # fmt: skip
    trainer.train()
    assert sb.counts["scored"] == 40 * epochs
    assert trainer.position == {"epoch": epochs, "batches": 0}
    rows = [tuple(ids[mask.bool()].tolist()) for batch in trainer.trained
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]  # fmt: skip
    assert len(rows) == sb.counts["backward"] and max(rows.count(row) for row in rows) <= epochs
    assert 0 < trainer.state.global_step < args.max_steps == epochs * 10 // 2


def test_max_steps_wins_over_num_train_epochs(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=5, max_steps=2, per_device_train_batch_size=8,
                             report_to=[], use_cpu=True, disable_tqdm=True)  # fmt: skip
    sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(history_size=32), pad_values={"input_ids": PAD})
    trainer = Recording(model=model(), args=args, train_dataset=sequences(40, 0), data_collator=collate,
                        selective_backprop=sb)  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.passes is None


def test_a_fractional_num_train_epochs_is_refused(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=1.5, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="whole number"):
        SelectiveBackpropTrainer(
            model=model(), args=args, train_dataset=sequences(8, 0), data_collator=collate,
            selective_backprop=sbkernels.SelectiveBackprop(4),
        )  # fmt: skip


def word_tokenizer():
    """A word-level tokenizer built offline, its pad id 3 (not 0: a default of 0 would go unnoticed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "<bos>", "<pad>", *[f"w{i}" for i in range(VOCAB - 4)]]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


def test_the_tokenizer_pads_input_ids_when_pad_values_does_not(tmp_path):
    """With an ordinary collator (DataCollatorForLanguageModeling) and no pad_values, input_ids are re-padded
    with the tokenizer's pad id, also after a resume. Control: with no tokenizer to read it from, the pool
    refuses the second length and names pad_values."""
    from transformers import DataCollatorForLanguageModeling

    tokenizer = word_tokenizer()
    texts = [
        " ".join(f"w{int(i)}" for i in torch.randint(0, VOCAB - 4, (int(n),))) for n in torch.randint(3, 19, (40,))
    ]
    data = [tokenizer(text) for text in texts]

    def trainer(max_steps, collator, **kwargs):
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
            save_steps=2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        )  # fmt: skip
        sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(beta=1.0, history_size=32, seed=1))
        return Recording(model=model(), args=args, train_dataset=data, data_collator=collator, selective_backprop=sb,
                         **kwargs)  # fmt: skip

    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    run = trainer(4, collator, processing_class=tokenizer)
    run.train()
    padded = [b["input_ids"][b["attention_mask"] == 0] for b in run.trained]
    assert sum(p.numel() for p in padded) > 0 and all(bool((p == 3).all()) for p in padded)
    resumed = trainer(4, collator)  # the collator's own tokenizer gives the id too
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for a, b in zip(run.trained[2:], resumed.trained, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])

    def bare(examples):  # the collator's work without a tokenizer the trainer could read
        return collator(examples)

    with pytest.raises(ValueError, match="pad_values"):
        trainer(4, bare).train()


def masked_lm_trainer(tmp_path, policy, scoring="auto", ignore_first=False):
    """A random-init BERT masked LM: labels at their own positions (no shift), a head that transforms the
    hidden states before the output embeddings."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip

    batches = []

    def masked(examples):
        batch = collate(examples)
        keep = torch.rand(batch["labels"].shape, generator=torch.Generator().manual_seed(len(examples))) < 0.3
        batch["labels"] = torch.where(keep & batch["attention_mask"].bool(), batch["input_ids"], -100)
        if ignore_first and not batches:  # a first batch with no masked token at all
            batch["labels"].fill_(-100)
        batches.append(batch)
        return batch

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to=[],
                             use_cpu=True, seed=0, disable_tqdm=True)  # fmt: skip
    sb = sbkernels.SelectiveBackprop(4, policy, pad_values={"input_ids": PAD})
    return Recording(model=BertForMaskedLM(config), args=args, train_dataset=sequences(40, 0), data_collator=masked,
                     selective_backprop=sb, scoring=scoring)  # fmt: skip


def test_the_scoring_pass_is_checked_against_the_models_own_loss(tmp_path):
    """On its first batch the trainer compares its losses with the model's. A masked LM under the causal
    shift is refused with the fix; with shift=False its head's transform makes the hidden-state route
    wrong, so "auto" scores from the logits (with a warning) and "hidden" refuses. Control: a causal GPT-2
    passes both checks and is scored from its hidden states."""
    with pytest.raises(ValueError, match=r"shift=False"):
        masked_lm_trainer(tmp_path / "a", sbkernels.SB(beta=1.0, history_size=32)).train()
    with pytest.warns(UserWarning, match="scoring from the logits instead"):
        trainer = masked_lm_trainer(tmp_path / "b", sbkernels.SB(beta=1.0, history_size=32, shift=False))
        trainer.train()
    assert trainer._hidden_scoring is False and trainer.state.global_step == 2
    with pytest.raises(ValueError, match="use scoring='logits'"):
        masked_lm_trainer(tmp_path / "c", sbkernels.SB(shift=False), scoring="hidden").train()
    causal = make_trainer(tmp_path / "d", max_steps=1)
    causal.train()
    assert causal._hidden_scoring is True


def test_the_scoring_check_waits_for_a_batch_with_valid_tokens(tmp_path):
    """#27 item 3: on a first batch whose labels are all ignored every loss is 0 on both routes, so the
    hidden-state check passed any model. It now runs on the first batch with a valid token: the masked LM's
    head transform is found there and "auto" scores from the logits."""
    with pytest.warns(UserWarning, match="scoring from the logits instead"):
        trainer = masked_lm_trainer(tmp_path, sbkernels.SB(beta=1.0, history_size=32, shift=False), ignore_first=True)
        trainer.train()
    assert trainer._hidden_scoring is False
    assert trainer.selective_backprop.counts["scored"] > 8  # the all-ignored batch was scored too


def test_a_position_past_the_loaders_end_is_refused_with_the_reason(tmp_path):
    """#27 item 8: a checkpoint's position beyond the loader (another dataset or batch size) was accepted,
    then failed inside the Trainer with 'generator raised StopIteration'."""
    trainer = make_trainer(tmp_path, max_steps=2, save_steps=2)
    trainer.train()
    path = tmp_path / "checkpoint-2" / STATE_FILE
    saved = torch.load(path, weights_only=True)
    saved["position"]["batches"] = 6  # the loader has 40 / 8 = 5 batches
    torch.save(saved, path)
    with pytest.raises(ValueError, match="has only 5 batches"):
        make_trainer(tmp_path, max_steps=4).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def classified(count: int, seed: int) -> list[dict]:
    """Sequences with a class: 1 when the sequence holds token 7 more often than token 9."""
    rows = sequences(count, seed)
    for row in rows:
        row["label"] = int(row["input_ids"].count(7) > row["input_ids"].count(9))
    return rows


def collate_classes(examples: list[dict]) -> dict[str, torch.Tensor]:
    """What DataCollatorWithPadding returns for a BERT tokenizer: ids, mask and token types padded, (B,) labels."""
    batch = collate([{"input_ids": e["input_ids"]} for e in examples])
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    batch["labels"] = torch.tensor([e["label"] for e in examples])
    return batch


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_a_sequence_classifier_trains_each_row_at_most_once(tmp_path, family):
    """#29: GPT2/BertForSequenceClassification with (B,) labels crashed on the first batch ("logits must be
    3-D"). They are scored by their rows' cross-entropy from the logits; every row trained once at most."""
    from transformers import BertConfig, BertForSequenceClassification, GPT2ForSequenceClassification

    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=1, n_head=2, pad_token_id=PAD,
                            num_labels=2)  # fmt: skip
        net = GPT2ForSequenceClassification(config)
    else:
        config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=37, max_position_embeddings=32, num_labels=2)  # fmt: skip
        net = BertForSequenceClassification(config)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                             gradient_accumulation_steps=2, report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True)  # fmt: skip
    sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(beta=1.0, history_size=32, seed=1), pad_values={"input_ids": PAD})
    trainer = Recording(model=net, args=args, train_dataset=classified(96, 0), data_collator=collate_classes,
                        selective_backprop=sb)  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 3 and trainer.position["epoch"] == 0  # all inside the first pass
    rows = [tuple(ids[mask.bool()].tolist()) for batch in trainer.trained
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]  # fmt: skip
    assert len(rows) == 24 and len(set(rows)) == 24
    assert all(batch["labels"].dim() == 1 for batch in trainer.trained)
    assert sb.counts["backward"] < sb.counts["scored"]  # selected, not everything


def test_a_classifier_with_float_labels_is_refused_with_the_reason(tmp_path):
    from transformers import GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=1, n_head=2, pad_token_id=PAD,
                        num_labels=1)  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, report_to=[],
                             use_cpu=True, disable_tqdm=True)  # fmt: skip

    def regression(examples):
        batch = collate_classes(examples)
        batch["labels"] = batch["labels"].float()
        return batch

    sb = sbkernels.SelectiveBackprop(4, sbkernels.SB())
    trainer = Recording(model=GPT2ForSequenceClassification(config), args=args, train_dataset=classified(16, 0),
                        data_collator=regression, selective_backprop=sb)  # fmt: skip
    with pytest.raises(ValueError, match="regression and multi-label problems are not supported"):
        trainer.train()


def test_a_masked_lm_under_the_causal_shift_is_refused_even_when_its_loss_is_ambiguous(tmp_path):
    """#29: on an untrained BERT both alignments came within the old tolerance of the model's loss (7.6007
    model, 7.6334 shifted), so the causal default trained a masked LM silently. The model's class decides
    (BertForMaskedLM: no shift); a causal GPT-2 with the default passes (test above: scored from hidden states)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=2000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=32)  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, report_to=[],
                             use_cpu=True, disable_tqdm=True)  # fmt: skip

    def masked(examples):
        batch = collate(examples)
        batch["labels"] = batch["labels"].masked_fill(torch.rand(batch["labels"].shape) < 0.7, -100)
        return batch

    sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(beta=1.0, history_size=32), pad_values={"input_ids": PAD})
    trainer = Recording(model=BertForMaskedLM(config), args=args, train_dataset=sequences(16, 0),
                        data_collator=masked, selective_backprop=sb)  # fmt: skip
    with pytest.raises(ValueError, match=r"a masked LM .* pass the policy shift=False"):
        trainer.train()


def test_without_a_declared_alignment_the_better_matching_one_decides() -> None:
    """The issue's numbers: the model's loss equals the unshifted mean and is 0.03 from the shifted one,
    inside the old tolerance; the better match (no shift) decides, and the causal policy is refused."""
    from sbkernels.integrations import _lm_scoring

    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    unshifted = _lm_scoring._token_mean(logits, labels, False, -100)
    with pytest.raises(ValueError, match="shift=False"):
        _lm_scoring.check_label_alignment(torch.tensor(unshifted), logits, labels, sbkernels.SB())
    _lm_scoring.check_label_alignment(torch.tensor(unshifted), logits, labels, sbkernels.SB(shift=False))


def test_the_speed_logs_count_the_rows_scored_and_trained(tmp_path):
    """#29: train_samples_per_second counted max_steps x batch x accumulation (1920 in a run that scored 1160
    rows and trained 472). It now counts the rows scored; the rows trained get their own figure."""
    trainer = make_trainer(tmp_path, max_steps=4)
    metrics = trainer.train().metrics
    counts, runtime = trainer.selective_backprop.counts, metrics["train_runtime"]
    assert metrics["train_samples_per_second"] == pytest.approx(counts["scored"] / runtime, rel=1e-2)
    assert metrics["train_backward_samples_per_second"] == pytest.approx(counts["backward"] / runtime, rel=1e-2)
    assert counts["backward"] < counts["scored"]


def test_a_soft_capped_head_keeps_the_hidden_state_route(tmp_path):
    """#29: Gemma-2's final_logit_softcapping makes its logits tanh-capped, not hidden @ W.T, so the trainer
    fell back to the (B, T, V) logits and scoring="hidden" raised. It reads the cap from the config and
    scores from the hidden states with it: the per-sequence losses equal the model's own. Control: without
    the cap, the hidden-state losses differ from the model's by more than the check's tolerance."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from sbkernels.integrations._lm_scoring import HIDDEN_STATE_TOLERANCE, head_transform

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                          final_logit_softcapping=0.5, pad_token_id=PAD)  # fmt: skip
    net = Gemma2ForCausalLM(config)
    with torch.no_grad():  # logits of a trained model's size (a random-init one's are ~0.1: no cap would show)
        net.get_output_embeddings().weight.mul_(100)
    batch = collate(sequences(8, 3))
    policy = sbkernels.SB(beta=1.0, history_size=32)
    with torch.no_grad():
        logits = net(**batch).logits
        hidden = net.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    weight = net.get_output_embeddings().weight
    model_losses, _ = policy.sequence_losses(logits, batch["labels"])
    capped, _ = policy.linear_sequence_losses(hidden, weight, None, batch["labels"], **head_transform(net))
    uncapped, _ = policy.linear_sequence_losses(hidden, weight, None, batch["labels"])
    torch.testing.assert_close(capped, model_losses, rtol=1e-4, atol=1e-4)
    assert (uncapped - model_losses).abs().max() > HIDDEN_STATE_TOLERANCE
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, report_to=[],
                             use_cpu=True, seed=0, disable_tqdm=True)  # fmt: skip
    sb = sbkernels.SelectiveBackprop(4, sbkernels.SB(beta=1.0, history_size=32, seed=1), pad_values={"input_ids": PAD})
    trainer = Recording(model=net, args=args, train_dataset=sequences(40, 0), data_collator=collate,
                        selective_backprop=sb, scoring="hidden")  # fmt: skip
    trainer.train()
    assert trainer._hidden_scoring is True and trainer.state.global_step == 2
