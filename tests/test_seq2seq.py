"""Seq2SeqExtractor on a tiny T5 built in the test: it learns, only LoRA moves, checkpoints are lean."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sentex.data import TweetDataModule
from sentex.errors import NonFiniteLossError
from sentex.models import Seq2SeqExtractor
from sentex.models.components.seq2seq_codec import restore_source_case
from tests.conftest import TWEETS, write_rows

ALL_T5_LINEAR = ["q", "k", "v", "o", "wi", "wo"]


def tiny_module(path: Path, **kw) -> Seq2SeqExtractor:
    args = dict(
        prompt_template="{sentiment}: {text}",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_target_modules=ALL_T5_LINEAR,
        learning_rate=3e-3,
        warmup_steps=10,
        weight_decay=0.0,
    )
    return Seq2SeqExtractor(str(path), **{**args, **kw})


def trainer(tmp: Path, steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp,
        **kw,
    )


@pytest.fixture(scope="module")
def overfit(tiny_t5: Path, tmp_path_factory: pytest.TempPathFactory):
    """Train the tiny T5 + LoRA on 8 tweets for 400 steps, validating on the same tweets."""
    tmp = tmp_path_factory.mktemp("overfit")
    csv = write_rows(tmp / "tweets.csv", TWEETS)
    pl.seed_everything(0)
    model = tiny_module(tiny_t5)
    dm = TweetDataModule(train_path=str(csv), val_path=str(csv), batch_size=8)
    before = trainer(tmp, 1).validate(model, dm, verbose=False)[0]
    t = trainer(tmp, 400, check_val_every_n_epoch=400, enable_checkpointing=False)
    t.fit(model, dm)
    after = t.validate(model, dm, verbose=False)[0]
    t.save_checkpoint(tmp / "adapter.ckpt")
    return model, dm, before, after, tmp / "adapter.ckpt"


def test_tiny_t5_lora_overfits_eight_tweets(overfit) -> None:
    _, _, before, after, _ = overfit
    print(f"overfit: val/jaccard {before['val/jaccard']:.3f} -> {after['val/jaccard']:.3f}")
    assert after["val/loss"] < before["val/loss"] / 4
    assert after["val/jaccard"] >= 0.9
    assert before["val/jaccard"] < 0.5


def test_predictions_are_clean_text(overfit) -> None:
    model, dm, *_ = overfit
    batch = model.collate([dm.datasets["val"][i] for i in range(len(TWEETS))])
    for pred in model.extract(batch):
        assert pred == pred.strip() and "<" not in pred


def test_only_lora_weights_change(tiny_t5: Path, tweets_csv: Path, tmp_path: Path) -> None:
    model = tiny_module(tiny_t5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer(tmp_path, 5, enable_checkpointing=False, limit_val_batches=0).fit(
        model, TweetDataModule(train_path=str(tweets_csv), val_path=str(tweets_csv), batch_size=4)
    )
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "training changed nothing"
    assert all("lora_" in k for k in changed), sorted(k for k in changed if "lora_" not in k)
    assert any("lora_B" in k for k in changed)


def test_checkpoint_holds_only_adapter_and_restores_predictions(overfit, tiny_t5: Path) -> None:
    model, dm, _, _, ckpt = overfit
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state and all("lora_" in k for k in state)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == set(trainable)
    # The file is the adapter plus its two Adam moments and bookkeeping: no frozen base weights.
    adapter_bytes = sum(p.numel() * p.element_size() for p in trainable.values())
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    assert ckpt.stat().st_size < 3 * adapter_bytes + 100_000 < 3 * adapter_bytes + base_bytes
    restored = Seq2SeqExtractor.load_from_checkpoint(ckpt)
    restored.eval(), model.eval()
    batch = model.collate([dm.datasets["val"][i] for i in range(len(TWEETS))])
    assert restored.extract(batch) == model.extract(batch)


def test_gradient_checkpointing_still_trains_lora(tiny_t5: Path, tweets_csv: Path) -> None:
    model = tiny_module(tiny_t5, gradient_checkpointing=True)
    model.net.train()
    rows = [{"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS]
    model.compute_loss(model.collate(rows)).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_non_finite_loss_stops_training_with_advice(
    tiny_t5: Path, tweets_csv: Path, tmp_path: Path, monkeypatch
) -> None:
    model = tiny_module(tiny_t5)
    monkeypatch.setattr(model, "compute_loss", lambda batch: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(NonFiniteLossError, match=r"at global step 0.*bf16-mixed"):
        trainer(tmp_path, 3, enable_checkpointing=False, limit_val_batches=0).fit(
            model, TweetDataModule(train_path=str(tweets_csv), val_path=str(tweets_csv))
        )


def test_restore_source_case() -> None:
    assert restore_source_case("LOVE this", " I love this sunny morning") == "love this"
    assert restore_source_case("", "anything") == ""
