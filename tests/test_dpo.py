"""DPO: the loss arithmetic, the frozen reference, a few real steps, and ``sentex align`` end to end."""

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sentex.alignment.losses import dpo_loss
from sentex.alignment.pairs import PreferencePair
from sentex.alignment.seq2seq import DPOSeq2SeqExtractor
from sentex.alignment.sft import load_sft_state
from sentex.alignment.span import DPOSpanExtractor
from sentex.data import TweetDataModule
from sentex.errors import CheckpointError
from sentex.models import Seq2SeqExtractor, SpanExtractor
from tests.conftest import CONFIGS, TWEETS, sentex, write_rows
from tests.helpers import fit_steps

T = torch.tensor


def save_sft(model: pl.LightningModule, path: Path) -> Path:
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=path.parent)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def span_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_sft(SpanExtractor(max_length=48), tmp_path_factory.mktemp("span") / "sft.ckpt")


@pytest.fixture(scope="module")
def seq_sft(tiny_t5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Seq2SeqExtractor(str(tiny_t5), lora_r=4, lora_target_modules=["q", "v"])
    with torch.no_grad():  # a trained adapter is not zero: make merging it observable
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return save_sft(model, tmp_path_factory.mktemp("seq") / "sft.ckpt")


# --- the loss --------------------------------------------------------------------------------
# Pair with policy log-ratios +0.5 (chosen) and -0.5 (rejected): h = 1.
PC, PR, RC, RR = T([-1.0]), T([-2.0]), T([-1.5]), T([-1.5])


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"beta": 0.1}, math.log(1 + math.exp(-0.1))),  # -log σ(βh)
        ({"beta": 1.0}, math.log(1 + math.exp(-1.0))),
        ({"beta": 0.1, "label_smoothing": 0.2}, 0.8 * math.log(1 + math.exp(-0.1)) + 0.2 * math.log(1 + math.exp(0.1))),
        ({"beta": 0.1, "loss_type": "ipo"}, (1 - 1 / 0.2) ** 2),  # (h - 1/(2β))²
        ({"beta": 0.5, "loss_type": "ipo"}, 0.0),
    ],
)
def test_dpo_loss_hand_computed(kwargs: dict, expected: float) -> None:
    out = dpo_loss(PC, PR, RC, RR, **kwargs)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    beta = kwargs["beta"]
    assert out.chosen_rewards.item() == pytest.approx(0.5 * beta) and out.rejected_rewards.item() == pytest.approx(
        -0.5 * beta
    )


def test_dpo_gradient_raises_chosen_and_lowers_rejected() -> None:
    pc, pr = T([-1.0], requires_grad=True), T([-2.0], requires_grad=True)
    dpo_loss(pc, pr, RC, RR, beta=0.1).losses.sum().backward()
    # d/dpc of -log σ(β h) = -β σ(-β h)
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.1)), abs=1e-6)
    assert pr.grad.item() == pytest.approx(-pc.grad.item())


@pytest.mark.parametrize("kwargs", [{"beta": 0}, {"label_smoothing": 0.5}, {"loss_type": "hinge2"}])
def test_dpo_loss_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, **kwargs)


# --- the span module ------------------------------------------------------------------------
def assert_policy_learns_reference_stays(
    model: pl.LightningModule, csv: Path, tmp_path: Path, frozen: dict, batch: dict, reference: torch.Tensor
) -> None:
    """Five more DPO steps widen the pair margin, leave every non-LoRA weight as in ``frozen`` (without
    gradients), and leave the reference's chosen log-probabilities at ``reference``."""
    start = pair_margin(model, model.pairs)
    fit_steps(model, csv, tmp_path, steps=5)
    assert pair_margin(model, model.pairs) > start
    for name, p in model.net.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, frozen[name]) and p.grad is None, name
    with torch.no_grad():
        assert torch.allclose(model.pair_log_probs(batch, reference=True)[0], reference, atol=1e-4)


def pair_margin(model, pairs) -> float:
    """Mean of (policy - reference) log-ratio of chosen minus that of rejected, on fixed pairs."""
    rows = [{"textID": p.textID, "text": p.text, "sentiment": p.sentiment, "selected_text": p.chosen,
             "rejected": p.rejected} for p in pairs]  # fmt: skip
    batch = model.collate(rows)
    with torch.no_grad():
        pc, pr = model.pair_log_probs(batch, reference=False)
        rc, rr = model.pair_log_probs(batch, reference=True)
    return ((pc - rc) - (pr - rr))[batch["pair_valid"]].mean().item()


def test_span_dpo_raises_margin_and_never_touches_reference(span_sft: Path, tweets_csv: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DPOSpanExtractor(sft_checkpoint=str(span_sft), max_length=48, learning_rate=1e-4, warmup_steps=0,
                             num_pairs=16, pair_mix={"grow": 1, "cut": 1, "other_span": 1, "on_policy": 1})  # fmt: skip
    sft = torch.load(span_sft, weights_only=True)["state_dict"]
    for name, value in model.reference.state_dict().items():  # reference == SFT weights
        assert torch.equal(value, sft[name]), name
    ref_before = {k: v.clone() for k, v in model.reference.state_dict().items()}
    fit_steps(model, tweets_csv, tmp_path, steps=1)
    pairs = model.pairs
    assert pairs and all(p.chosen != p.rejected and p.rejected in p.text for p in pairs)
    start = pair_margin(model, pairs)
    fit_steps(model, tweets_csv, tmp_path, steps=6)
    assert pair_margin(model, pairs) > start + 0.1
    assert all(torch.equal(v, ref_before[k]) for k, v in model.reference.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in model.reference.parameters())
    assert not model.reference.training
    assert not torch.equal(model.net.head.weight, model.reference.net.head.weight)  # while the policy moved


def test_span_dpo_checkpoint_is_a_plain_span_checkpoint(span_sft: Path, tmp_path: Path) -> None:
    model = DPOSpanExtractor(sft_checkpoint=str(span_sft), max_length=48)
    path = save_sft(model, tmp_path / "dpo.ckpt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["sentex"]["family"] == "span" and ckpt["sentex"]["dpo"]["beta"] == 0.1
    assert not any(k.startswith("reference.") for k in ckpt["state_dict"])
    assert "sft_checkpoint" not in ckpt["hyper_parameters"]
    plain = SpanExtractor.load_from_checkpoint(path, weights_only=True)
    assert torch.equal(plain.net.head.weight, model.net.head.weight)
    # a span model can only score answers that are spans of the tweet
    assert model.accepts_pair(PreferencePair("1", "so happy now", "positive", "happy", "so happy"))
    assert not model.accepts_pair(PreferencePair("1", "so happy now", "positive", "happy", ""))
    assert not model.accepts_pair(PreferencePair("1", "so happy now", "positive", "happy", "sad"))


def test_sft_checkpoint_of_wrong_family_is_refused(seq_sft: Path) -> None:
    with pytest.raises(CheckpointError, match="'seq2seq' model; this DPO module needs a 'span' model"):
        load_sft_state(str(seq_sft), "span", {})
    with pytest.raises(CheckpointError, match="not found"):
        DPOSpanExtractor(sft_checkpoint="no/such.ckpt", max_length=48)


# --- the seq2seq module ----------------------------------------------------------------------
def test_seq2seq_reference_is_the_merged_sft_model(
    tiny_t5: Path, seq_sft: Path, tweets_csv: Path, tmp_path: Path
) -> None:
    sft = Seq2SeqExtractor(str(tiny_t5), lora_r=4, lora_target_modules=["q", "v"]).eval()
    sft.load_state_dict(torch.load(seq_sft, weights_only=True)["state_dict"], strict=False)
    torch.manual_seed(0)
    model = DPOSeq2SeqExtractor(sft_checkpoint=str(seq_sft), model_name_or_path=str(tiny_t5), lora_r=4,
                                lora_target_modules=["q", "v"], learning_rate=3e-3, warmup_steps=0, num_pairs=16,
                                pair_mix={"grow": 1, "cut": 1, "empty": 1, "whole_tweet": 1})  # fmt: skip
    rows = [{"textID": "x", "text": t[1], "sentiment": t[3], "selected_text": t[2], "rejected": t[1]} for t in TWEETS]
    batch = model.collate(rows)
    with torch.no_grad():
        expected = sft.sequence_log_probs(batch, batch["labels"])
        ref, _ = model.pair_log_probs(batch, reference=True)
        policy, _ = model.pair_log_probs(batch, reference=False)
    assert torch.allclose(ref, expected, atol=1e-4) and torch.allclose(policy, ref, atol=1e-4)
    frozen = {k: v.clone() for k, v in model.net.named_parameters() if "lora_" not in k}
    fit_steps(model, tweets_csv, tmp_path, steps=1)
    assert_policy_learns_reference_stays(model, tweets_csv, tmp_path, frozen, batch, expected)


def test_seq2seq_dpo_checkpoint_is_a_plain_seq2seq_checkpoint(
    tiny_t5: Path, seq_sft: Path, tweets_csv: Path, tmp_path: Path
) -> None:
    """SFT + policy adapters are stacked into one adapter of the base: same scores, loads anywhere, resumes."""
    from sentex.deploy.export import export
    from sentex.deploy.load import load

    torch.manual_seed(0)
    settings = dict(model_name_or_path=str(tiny_t5), lora_r=4, lora_target_modules=["q", "v"])
    model = DPOSeq2SeqExtractor(sft_checkpoint=str(seq_sft), learning_rate=3e-3, warmup_steps=0, num_pairs=8,
                                pair_mix={"grow": 1, "cut": 1}, **settings)  # fmt: skip
    fit_steps(model, tweets_csv, tmp_path, steps=3)  # the policy adapter is no longer zero
    path = save_sft(model.eval(), tmp_path / "dpo.ckpt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["sentex"]["family"] == "seq2seq" and ckpt["hyper_parameters"]["lora_r"] == 8
    assert "sft_checkpoint" not in ckpt["hyper_parameters"]
    plain = Seq2SeqExtractor.load_from_checkpoint(path, weights_only=True).eval()
    rows = [{"textID": "x", "text": t[1], "sentiment": t[3], "selected_text": t[2], "rejected": t[1]} for t in TWEETS]
    batch = model.collate(rows)
    with torch.no_grad():
        expected, _ = model.pair_log_probs(batch, reference=False)
        sft_scores, _ = model.pair_log_probs(batch, reference=True)
        got = plain.sequence_log_probs(batch, batch["labels"])
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(expected, sft_scores, atol=1e-3)  # DPO moved it: the check can fail
    # export merges the stacked adapter like any LoRA model; the result predicts as the DPO policy did
    export(path, tmp_path / "exported", "fp32")
    exported = load(tmp_path / "exported")
    assert exported.info["lora"]["r"] == 8
    texts, sentiments = [t[1] for t in TWEETS], [t[3] for t in TWEETS]
    assert exported.extract(texts, sentiments) == load(path).extract(texts, sentiments)
    # resuming align gets back the policy adapter it trained (the SFT half is merged into the base)
    again = DPOSeq2SeqExtractor(sft_checkpoint=str(seq_sft), **settings)
    again.on_load_checkpoint(ckpt)
    again.load_state_dict(ckpt["state_dict"], strict=False)
    for name, value in model.state_dict().items():
        if "lora_" in name:
            assert torch.allclose(again.state_dict()[name], value, atol=1e-6), name
    # a stacked (rank 8) checkpoint as the SFT start of a rank-4 DPO module: a one-line error, not a traceback
    with pytest.raises(CheckpointError, match=r"has shape \(8, 64\), this model's is \(4, 64\)"):
        DPOSeq2SeqExtractor(sft_checkpoint=str(path), **settings)


def test_dpo_settings_never_shadow_model_settings() -> None:
    """A DPO module takes its family's arguments too: one name must not mean two things."""
    import inspect

    from sentex.alignment.module import DPO_ARGS

    for family in (SpanExtractor, Seq2SeqExtractor):
        assert not set(DPO_ARGS) & set(inspect.signature(family.__init__).parameters), family.__name__


# --- the CLI ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_align_end_to_end(span_sft: Path, tmp_path: Path) -> None:
    """``sentex align`` in a subprocess: pairs file, DPO logs, and a checkpoint sentex.deploy.load loads."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sentex.deploy.load import load

    train = write_rows(tmp_path / "train.csv", TWEETS * 3)
    args = (
        "align", "--config", str(CONFIGS[0].parent / "dpo_span.yaml"), "--data.train_path", str(train),
        "--model.sft_checkpoint", str(span_sft), "--model.max_length", "48", "--model.num_pairs", "12",
        # the recipe's default is expected Jaccard on a joint model; this test drives DPO on pairs
        "--model.loss_type", "sigmoid", "--model.span_scoring", "independent",
        "--data.batch_size", "4", "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "1",
    )  # fmt: skip
    res = sentex(*args, "--trainer.max_steps", "3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "lightning_logs" / "version_0"
    assert 0 < len((run / "pairs.jsonl").read_text().splitlines()) <= 12
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"dpo/loss", "dpo/reward_accuracy", "dpo/margin", "val/jaccard", "val/over_extraction"} <= tags
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    extractor = load(best)
    assert extractor.family == "span"
    (pred,) = extractor.extract(["so happy for you both!"], ["positive"])
    assert pred and pred in "so happy for you both!"
    # resuming keeps the DPO module although the checkpoint carries plain span hyper-parameters
    again = sentex(*args, "--trainer.max_epochs", "2", "--ckpt_path", str(best), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = EventAccumulator(str(tmp_path / "lightning_logs" / "version_1"))
    resumed.Reload()
    assert [e.step for e in resumed.Scalars("dpo/loss")] == [3, 4, 5]  # steps 0-2 were done; still DPO


def test_align_refuses_a_non_dpo_model(tmp_path: Path) -> None:
    res = sentex("align", "--config", str(CONFIGS[0].parent / "quickstart.yaml"), cwd=tmp_path, timeout=300)
    assert res.returncode == 1 and "sentex align trains DPO modules" in res.stderr
    assert "Traceback" not in res.stderr


def test_validate_before_fit_then_length_rates(span_sft: Path, tweets_csv: Path, tmp_path: Path) -> None:
    """The bench's order (validate, fit, validate) works, and the over/under rates are the word-count ones."""
    model = DPOSpanExtractor(sft_checkpoint=str(span_sft), max_length=48, num_pairs=8, pair_mix={"grow": 1})
    dm = TweetDataModule(train_path=str(tweets_csv), val_path=str(tweets_csv), batch_size=4)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.validate(model, dm, verbose=False)
    trainer.fit(model, dm)
    metrics = trainer.validate(model, dm, verbose=False)[0]
    rows = [{"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS]
    with torch.no_grad():
        preds = model.eval().extract(model.collate(rows))
    over = sum(len(p.split()) > len(t[2].split()) for p, t in zip(preds, TWEETS)) / len(TWEETS)
    under = sum(len(p.split()) < len(t[2].split()) for p, t in zip(preds, TWEETS)) / len(TWEETS)
    assert metrics["val/over_extraction"] == pytest.approx(over) and metrics["val/under_extraction"] == pytest.approx(
        under
    )
