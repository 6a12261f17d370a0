"""SelectiveBackpropModule in a real Lightning ``Trainer`` (SPEC section 10): accumulation, the learning-rate
schedule in optimizer steps taken, validation untouched, every selected row trained once, and a run resumed
from an epoch-end checkpoint equal to the uninterrupted one. lightning is installed by `make test`."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

if os.environ.get("CI"):
    import lightning  # noqa: F401  (CI installs it: a missing extra must fail, not skip)
else:
    pytest.importorskip("lightning")

import lightning as L

import sbkernels
from sbkernels.integrations.lightning import SelectiveBackpropModule

ROWS, FEATURES, CLASSES = 96, 6, 4


class Classifier(SelectiveBackpropModule):
    def __init__(self, accumulate: int = 2) -> None:
        sb = sbkernels.SelectiveBackprop(8, sbkernels.SB(beta=1.0, history_size=32, seed=2))
        super().__init__(sb, accumulate_grad_batches=accumulate)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, CLASSES))
        self.trained_ids: list[int] = []
        self.batches_per_epoch: dict[int, int] = {}
        self.ids_per_epoch: dict[int, list[int]] = {}
        self.validated = 0

    def forward(self, x):
        return self.net(x)

    def score(self, batch):
        x, y, _ = batch
        return self(x), y

    def backward_loss(self, batch):
        x, y, ids = batch
        self.trained_ids += ids.tolist()
        self.batches_per_epoch[self.current_epoch] = self.batches_per_epoch.get(self.current_epoch, 0) + 1
        self.ids_per_epoch.setdefault(self.current_epoch, []).extend(ids.tolist())
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.validated += x.shape[0]
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)}


def loader(shuffle_seed: int | None = None) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(ROWS, FEATURES, generator=gen), torch.randint(0, CLASSES, (ROWS,), generator=gen),
                         torch.arange(ROWS))  # fmt: skip
    return DataLoader(data, batch_size=16, shuffle=False)


def trainer(tmp_path, epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


def test_steps_schedule_and_rows(tmp_path):
    module = Classifier(accumulate=2)
    fit = trainer(tmp_path, epochs=2, enable_checkpointing=False)
    fit.fit(module, loader(), loader())
    counts = module.selective_backprop.counts
    assert counts["scored"] == 2 * ROWS and 0 < counts["backward"] < counts["scored"]
    assert len(module.trained_ids) == counts["backward"]  # every handed-out row trained once
    for ids in module.ids_per_epoch.values():  # within an epoch no row is trained twice (the pool is flushed)
        assert len(set(ids)) == len(ids)
    # Optimizer steps: ceil(backward batches of the epoch / 2) per epoch (the last partial accumulation of
    # an epoch steps too); the per-step schedule stepped with them.
    assert fit.global_step == sum(-(-n // 2) for n in module.batches_per_epoch.values())
    lr = module.optimizers().param_groups[0]["lr"]
    assert lr == pytest.approx(0.1 * 0.9**fit.global_step)
    assert module.validated == 2 * ROWS  # validation saw every row each epoch


def test_validation_leaves_the_selection_state_alone(tmp_path):
    module = Classifier()
    trainer(tmp_path, epochs=1, enable_checkpointing=False).fit(module, loader())
    before = module.selective_backprop.state_dict()
    trainer(tmp_path, epochs=1, enable_checkpointing=False).validate(module, loader())
    after = module.selective_backprop.state_dict()
    assert torch.equal(before["policy"]["state"]["meta"], after["policy"]["state"]["meta"])
    assert torch.equal(before["policy"]["state"]["history"], after["policy"]["state"]["history"])
    assert before["counts"] == after["counts"]


def test_a_run_resumed_from_an_epoch_end_checkpoint_equals_the_uninterrupted_one(tmp_path):
    full = Classifier()
    trainer(tmp_path / "full", epochs=3, enable_checkpointing=False).fit(full, loader())
    first = Classifier()
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1)
    trainer(tmp_path / "first", epochs=1, callbacks=[checkpoints]).fit(first, loader())
    path = checkpoints.best_model_path or checkpoints.last_model_path
    resumed = Classifier()
    trainer(tmp_path / "resumed", epochs=3, enable_checkpointing=False).fit(resumed, loader(), ckpt_path=path)
    assert first.trained_ids + resumed.trained_ids == full.trained_ids
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_the_trainers_own_accumulation_is_refused(tmp_path):
    """Lightning refuses its own accumulation with manual optimization; the module accumulates instead."""
    with pytest.raises(Exception, match="accumulate_grad_batches"):
        trainer(tmp_path, epochs=1, enable_checkpointing=False, accumulate_grad_batches=2).fit(Classifier(), loader())


class SmallCNN(SelectiveBackpropModule):
    def __init__(self) -> None:
        super().__init__(sbkernels.SelectiveBackprop(8, sbkernels.SB()), scale_factor=0.5)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(4, CLASSES))  # fmt: skip
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        return self.net(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_scale_factor_scores_on_downsampled_inputs_and_trains_on_full_ones(tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 8, 8, generator=gen), torch.randint(0, CLASSES, (32,), generator=gen))
    module = SmallCNN()
    trainer(tmp_path, epochs=1, enable_checkpointing=False).fit(module, DataLoader(data, batch_size=16))
    assert (4, 4) in module.seen and (8, 8) in module.seen  # scoring at half size, training at full size
    assert module.seen.count((4, 4)) == 2  # one scoring pass per loader batch


class LanguageModel(SelectiveBackpropModule):
    """A random-init GPT-2 on dict batches padded per batch (the module's language-model defaults), scored
    from its logits or, through the 3-tuple ``score``, from its hidden states and LM head."""

    def __init__(self, scoring: str) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        sb = sbkernels.SelectiveBackprop(
            4, sbkernels.SB(beta=1.0, history_size=32, seed=2), pad_values={"input_ids": 0}
        )
        super().__init__(sb)
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        self.model = GPT2LMHeadModel(config)
        self.scoring = scoring
        self.trained: list[dict[str, torch.Tensor]] = []

    def forward(self, **inputs):
        return self.model(**inputs)

    def score(self, batch):
        if self.scoring == "logits":
            return super().score(batch)
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        return self.model.base_model(**inputs).last_hidden_state, batch["labels"], self.model.get_output_embeddings()

    def backward_loss(self, batch):
        self.trained.append({key: value.clone() for key, value in batch.items()})
        return super().backward_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def lm_loader() -> DataLoader:
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(1, 64, (int(n),), generator=gen) for n in torch.randint(4, 20, (48,), generator=gen)]

    def collate(examples):  # dynamic padding, as DataCollatorForLanguageModeling(mlm=False) does
        width = max(len(e) for e in examples)
        ids = torch.zeros(len(examples), width, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(examples):
            ids[i, : len(e)], mask[i, : len(e)] = e, 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, -100)}

    return DataLoader(rows, batch_size=8, collate_fn=collate)


def test_language_models_train_whole_sequences_scored_from_logits_or_hidden_states(tmp_path):
    if os.environ.get("CI"):
        import transformers  # noqa: F401
    else:
        pytest.importorskip("transformers")
    runs = {}
    for scoring in ("logits", "hidden states"):
        module = LanguageModel(scoring)
        trainer(tmp_path / scoring, epochs=2).fit(module, lm_loader())
        counts = module.selective_backprop.counts
        assert counts["scored"] == 2 * 48 and 0 < counts["backward"] < counts["scored"]
        assert sum(b["input_ids"].shape[0] for b in module.trained) == counts["backward"]
        for batch in module.trained:  # re-padded rows: the pad id where the mask is 0, labels -100 there
            padding = batch["attention_mask"] == 0
            assert bool((batch["input_ids"][padding] == 0).all()) and bool((batch["labels"][padding] == -100).all())
        runs[scoring] = module.trained
    for a, b in zip(runs["logits"], runs["hidden states"], strict=True):  # the same sequences either way
        assert torch.equal(a["input_ids"], b["input_ids"])


@pytest.mark.parametrize("accumulated", [2, 7])
def test_a_checkpoint_with_more_waiting_batches_than_a_step_takes_is_refused(tmp_path, accumulated):
    """#27 item 2: ``accumulated`` was checked only for >= 0 while a step is taken when it equals
    accumulate_grad_batches: resumed at 2 of 2, the next epoch took 1 optimizer step instead of 8."""
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1)
    trainer(tmp_path / "first", epochs=1, callbacks=[checkpoints]).fit(Classifier(), loader())
    saved = torch.load(checkpoints.last_model_path or checkpoints.best_model_path, weights_only=False)
    saved["selective_backprop"]["accumulated"] = accumulated
    path = tmp_path / "tampered.ckpt"
    torch.save(saved, path)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        trainer(tmp_path / "resumed", epochs=2, enable_checkpointing=False).fit(Classifier(), loader(), ckpt_path=path)


class WeightedClassifier(Classifier):
    """Importance sampling: per-row weights that make the gradient unbiased (SPEC section 5)."""

    def __init__(self) -> None:
        super().__init__(accumulate=1)
        self.selective_backprop = sbkernels.SelectiveBackprop(8, sbkernels.Importance(k=8, seed=4))
        self.engine.selective_backprop = self.selective_backprop
        self.seen: list[tuple] = []

    def backward_loss(self, batch, weight=None):
        x, y, _ = batch
        self.seen.append((x.clone(), y.clone(), None if weight is None else weight.clone()))
        return SelectiveBackpropModule.backward_loss(self, (x, y), weight)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_one_sgd_step_follows_the_weighted_gradient(tmp_path):
    """#28: batch.weight was dropped, so Importance trained unweighted. One SGD step must move the
    parameters by -lr * grad of mean_i(weight_i * loss_i); the unweighted gradient is the control."""
    module = WeightedClassifier()
    before = [p.detach().clone() for p in module.parameters()]
    trainer(tmp_path, epochs=1, max_steps=1, enable_checkpointing=False).fit(module, loader())
    x, y, weight = module.seen[0]
    assert weight is not None and not torch.allclose(weight, weight[0].expand_as(weight))
    reference = Classifier(accumulate=1)
    for p, b in zip(reference.parameters(), before, strict=True):
        p.data.copy_(b)
    losses = F.cross_entropy(reference(x), y, reduction="none")
    weighted = torch.autograd.grad((weight * losses).sum(), list(reference.parameters()), retain_graph=True)
    plain = torch.autograd.grad(losses.mean(), list(reference.parameters()))
    moved = [b - p.detach() for p, b in zip(module.parameters(), before, strict=True)]
    for step, grad in zip(moved, weighted, strict=True):
        torch.testing.assert_close(step, 0.5 * grad, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(step, 0.5 * g, rtol=1e-3, atol=1e-5) for step, g in zip(moved, plain, strict=True))


def test_an_override_without_weight_is_refused_when_the_batches_carry_weights(tmp_path):
    class Unweighted(WeightedClassifier):
        def backward_loss(self, batch):
            x, y, _ = batch
            return F.cross_entropy(self(x), y)

    with pytest.raises(TypeError, match="give it a weight argument"):
        trainer(tmp_path, epochs=1, max_steps=1, enable_checkpointing=False).fit(Unweighted(), loader())


@pytest.mark.parametrize("step", [2, 3, 5])
def test_a_run_resumed_mid_epoch_trains_the_uninterrupted_runs_rows(tmp_path, step):
    """#29: resumed from a ModelCheckpoint(every_n_train_steps=...) checkpoint, Lightning continued at the
    saved batch_idx but restarted the loader from its first batch: rows of the epoch were trained again
    (392 trained, 379 distinct in the issue's run) and the run ended with other weights. Also covers a
    checkpoint taken with a backward batch waiting for its optimizer step (accumulation 2)."""
    full = Classifier()
    trainer(tmp_path / "full", epochs=2, enable_checkpointing=False).fit(full, loader())
    first = Classifier()
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=step,
                                                      save_top_k=-1)  # fmt: skip
    trainer(tmp_path / "first", epochs=2, callbacks=[checkpoints]).fit(first, loader())
    path = next((tmp_path / "ckpt").glob(f"epoch=*-step={step}.ckpt"))
    saved = torch.load(path, weights_only=False)["selective_backprop"]
    assert 0 < saved["position"]["batches"] < 6  # mid-epoch
    resumed = Classifier()
    trainer(tmp_path / "resumed", epochs=2, enable_checkpointing=False).fit(resumed, loader(), ckpt_path=str(path))
    done = len(full.trained_ids) - len(resumed.trained_ids)
    assert resumed.trained_ids == full.trained_ids[done:]
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


class SaveAt(L.Callback):
    """Saves a checkpoint after loader batch ``batch`` of epoch 0, wherever the optimizer steps fall."""

    def __init__(self, batch: int, path) -> None:
        self.batch, self.path = batch, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            trainer.save_checkpoint(self.path)


def test_a_checkpoint_with_a_backward_batch_waiting_for_its_step_resumes_exactly(tmp_path):
    """A framework checkpoint holds no gradients: the accumulated gradients of the backward batches that
    wait for the next optimizer step travel in the selection entry and are restored before the next
    backward pass. Checkpoints after each of epoch 0's first loader batches; at least one has one waiting."""
    full = Classifier()
    trainer(tmp_path / "full", epochs=2, enable_checkpointing=False).fit(full, loader())
    waiting = []
    for batch in range(4):
        path = tmp_path / f"mid{batch}.ckpt"
        trainer(tmp_path / f"first{batch}", epochs=2, enable_checkpointing=False,
                callbacks=[SaveAt(batch, path)]).fit(Classifier(), loader())  # fmt: skip
        saved = torch.load(path, weights_only=False)["selective_backprop"]
        assert (saved["gradients"] is not None) == (saved["accumulated"] > 0)
        waiting.append(saved["accumulated"])
        resumed = Classifier()
        trainer(tmp_path / f"resumed{batch}", epochs=2, enable_checkpointing=False).fit(
            resumed, loader(), ckpt_path=str(path)
        )
        done = len(full.trained_ids) - len(resumed.trained_ids)
        assert resumed.trained_ids == full.trained_ids[done:]
        for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert any(waiting), waiting


class ValidatedLanguageModel(LanguageModel):
    """The GPT-2 module with accumulation 2 and a validation loop (the model's own loss, untouched by SB)."""

    def __init__(self) -> None:
        super().__init__("hidden")
        self.accumulate_grad_batches = self.engine.accumulate = 2
        self.validated = 0

    def validation_step(self, batch, batch_idx):
        self.validated += batch["input_ids"].shape[0]
        self.log("val_loss", self.model(**batch).loss)


def test_a_hugging_face_lm_in_lightning_end_to_end_with_a_mid_epoch_resume(tmp_path):
    """#29: a Lightning Trainer with a Hugging Face LM scored from its hidden states through ``score``, batches
    padded per batch by the collator, accumulation 2, validation each epoch, and a resume from a mid-epoch
    checkpoint: the resumed run trains the uninterrupted run's sequences and ends with its parameters."""
    full = ValidatedLanguageModel()
    trainer(tmp_path / "full", epochs=2, enable_checkpointing=False).fit(full, lm_loader(), lm_loader())
    assert full.validated == 2 * 48 and full.selective_backprop.counts["scored"] == 2 * 48
    widths = {batch["input_ids"].shape[1] for batch in full.trained}
    assert len(widths) > 1  # backward batches of different lengths, re-padded
    path = tmp_path / "mid.ckpt"
    trainer(tmp_path / "first", epochs=2, enable_checkpointing=False, callbacks=[SaveAt(2, path)]).fit(
        ValidatedLanguageModel(), lm_loader(), lm_loader()
    )
    resumed = ValidatedLanguageModel()
    trainer(tmp_path / "resumed", epochs=2, enable_checkpointing=False).fit(
        resumed, lm_loader(), lm_loader(), ckpt_path=str(path)
    )
    done = len(full.trained) - len(resumed.trained)
    for a, b in zip(full.trained[done:], resumed.trained, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_capped_heads_transform_is_read_from_the_held_model():
    """Scoring a Gemma-2-style model from hidden states needs its cap; the module reads it from self.model."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    class Capped(LanguageModel):
        def __init__(self) -> None:
            super().__init__("hidden")
            config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                  final_logit_softcapping=0.5)  # fmt: skip
            self.model = Gemma2ForCausalLM(config)

    assert Capped().head_transform() == {"softcap": 0.5}
    assert LanguageModel("hidden").head_transform() == {}  # GPT-2: a plain head
