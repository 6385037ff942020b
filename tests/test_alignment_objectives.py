"""Alignment objectives beyond plain DPO: R-DPO, DPOP, expected Jaccard, graded pairs, and their module."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sentex.alignment.losses import dpo_loss, dpop_penalty, expected_jaccard_loss, rdpo_margin
from sentex.alignment.pairs import PreferencePair, balance_lengths, graded_pairs, length_gap, normalize
from sentex.alignment.span import DPOSpanExtractor
from sentex.metrics import jaccard
from sentex.models import SpanExtractor
from sentex.models.components.span_math import normalize_spans
from tests.conftest import TWEETS, write_rows
from tests.helpers import fit_steps

T = torch.tensor


# --- pure loss terms ---------------------------------------------------------------------------
def test_rdpo_adds_alpha_times_length_gap_inside_the_sigmoid() -> None:
    # policy log-ratios +0.5 / -0.5: h = 1; chosen 2 words longer
    out = dpo_loss(T([-1.0]), T([-2.0]), T([-1.5]), T([-1.5]), beta=0.1, length_gap=T([2.0]), rdpo_alpha=0.05)
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(-(0.1 + 0.1))))
    assert rdpo_margin(T([-3.0]), 0.5).item() == -1.5
    with pytest.raises(ValueError, match="length_gap"):
        dpo_loss(T([0.0]), T([0.0]), T([0.0]), T([0.0]), rdpo_alpha=0.1)


def test_dpop_penalises_only_a_chosen_answer_that_fell_below_the_reference() -> None:
    assert dpop_penalty(T([-1.0]), T([-2.0]), 5.0).item() == 0.0
    assert dpop_penalty(T([-3.0]), T([-2.0]), 5.0).item() == 5.0
    # chosen fell by 1 nat while rejected fell by 3: h = 2 - 5·1 = -3
    out = dpo_loss(T([-3.0]), T([-5.0]), T([-2.0]), T([-2.0]), beta=0.1, dpop_lambda=5.0)
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(0.3)))
    # gradient: DPOP pushes the chosen log-probability up (negative gradient of the loss on it)
    pc = T([-3.0], requires_grad=True)
    dpo_loss(pc, T([-5.0]), T([-2.0]), T([-2.0]), beta=0.1, dpop_lambda=5.0).losses.sum().backward()
    plain = T([-3.0], requires_grad=True)
    dpo_loss(plain, T([-5.0]), T([-2.0]), T([-2.0]), beta=0.1).losses.sum().backward()
    assert pc.grad.item() < plain.grad.item() < 0


def test_expected_jaccard_loss_hand_computed_and_gradient_moves_mass_to_better_spans() -> None:
    logits = T([[0.0, 0.0, 0.0, -float("inf")]], requires_grad=True)
    lp = torch.log_softmax(logits, dim=-1)
    ref = torch.log(T([[0.5, 0.25, 0.25, 0.0]]))
    jac = T([[1.0, 0.5, 0.0, 0.0]])
    out = expected_jaccard_loss(lp, ref, jac, beta=0.2)
    expected = (1.0 + 0.5 + 0.0) / 3
    kl = sum((1 / 3) * math.log((1 / 3) / q) for q in (0.5, 0.25, 0.25))
    assert out.expected_jaccard.item() == pytest.approx(expected)
    assert out.kl.item() == pytest.approx(kl)
    assert out.losses.item() == pytest.approx(-expected + 0.2 * kl)
    out.losses.sum().backward()
    g = logits.grad[0]
    assert g[0] < 0 < g[2]  # raise the Jaccard-1 span, lower the Jaccard-0 one


# --- graded pairs --------------------------------------------------------------------------------
ROW = {"textID": "g", "text": "omg so happy today yay friends", "selected_text": "so happy", "sentiment": "positive"}


def test_graded_pairs_rank_by_jaccard_and_never_repeat_an_answer() -> None:
    candidates = ["so happy today", "happy", "yay", "So happy", "omg so happy today yay friends", "today"]
    pairs = graded_pairs(ROW, candidates, margin=0.2, per_tweet=100)
    assert pairs
    for p in pairs:
        assert normalize(p.chosen) != normalize(p.rejected)
        assert jaccard(p.chosen, ROW["selected_text"]) - jaccard(p.rejected, ROW["selected_text"]) >= 0.2
        assert p.source == "graded"
    assert len(graded_pairs(ROW, candidates, margin=0.2, per_tweet=3)) == 3


def test_balance_lengths_on_a_constructed_example() -> None:
    def mk(chosen: str, rejected: str) -> PreferencePair:
        return PreferencePair("t", "a b c d e", "positive", chosen, rejected)

    pairs = [mk("a b", "a")] * 5 + [mk("a", "a b c")] * 2 + [mk("a", "b")]
    out = balance_lengths(pairs, seed=1)
    gaps = [length_gap(p) for p in out]
    assert sum(g > 0 for g in gaps) == sum(g < 0 for g in gaps) == 2
    assert sum(g == 0 for g in gaps) == 1


# --- the modules ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def joint_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = SpanExtractor(max_length=48, max_span_tokens=8, span_scoring="joint")
    path = tmp_path_factory.mktemp("joint") / "sft.ckpt"
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=path.parent)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def test_dpo_on_a_joint_model_scores_pairs_with_joint_log_probs(joint_sft: Path) -> None:
    model = DPOSpanExtractor(sft_checkpoint=str(joint_sft), max_length=48, max_span_tokens=8, span_scoring="joint")
    rows = [{"textID": "1", "text": ROW["text"], "sentiment": "positive", "selected_text": "so happy",
             "rejected": "so happy today"}]  # fmt: skip
    batch = model.collate(rows)
    with torch.no_grad():
        chosen, rejected = model.pair_log_probs(batch, reference=False)
        matrix = model.codec.span_log_probs(model.eval().logits(batch), batch)
    s, e = batch["span"][0].tolist()
    rs, re_ = batch["rejected_span"][0].tolist()
    assert chosen.item() == pytest.approx(matrix[0, s, e].item())
    assert rejected.item() == pytest.approx(matrix[0, rs, re_].item())
    assert batch["pair_valid"].all()
    # a rejected answer longer than max_span_tokens is outside the joint support: the pair is skipped
    long_text = "so happy " + "la " * 12
    batch = model.collate([dict(rows[0], text=long_text, rejected=long_text.strip())])
    assert int(batch["in_tweet"][0].sum()) > 8 and not batch["pair_valid"].item()


def test_expected_jaccard_alignment_raises_expected_jaccard_and_keeps_the_reference(
    joint_sft: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = DPOSpanExtractor(sft_checkpoint=str(joint_sft), max_length=48, max_span_tokens=8, span_scoring="joint",
                             loss_type="expected_jaccard", beta=0.01, learning_rate=5e-4, warmup_steps=0)  # fmt: skip
    rows = [{"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS]
    batch = model.collate(rows)
    jaccards = model.span_jaccards(batch)
    assert jaccards.shape[1:] == batch["input_ids"].shape[1:] * 2

    def expected() -> float:
        with torch.no_grad():
            p = model.span_distribution(model.net.eval(), batch).exp()
        return (p * jaccards).flatten(1).sum(1).mean().item()

    ref_before = {k: v.clone() for k, v in model.reference.state_dict().items()}
    start = expected()
    fit_steps(model, write_rows(tmp_path / "tweets.csv", TWEETS * 2), tmp_path, steps=8, batch_size=8)
    assert expected() > start + 0.05
    assert all(torch.equal(v, ref_before[k]) for k, v in model.reference.state_dict().items())


def test_expected_jaccard_needs_a_span_model(tiny_t5: Path, tmp_path: Path) -> None:
    from sentex.alignment.seq2seq import DPOSeq2SeqExtractor

    with pytest.raises(ValueError, match="needs a span model"):
        DPOSeq2SeqExtractor(sft_checkpoint=str(tmp_path / "x.ckpt"), model_name_or_path=str(tiny_t5), lora_r=4,
                            loss_type="expected_jaccard")  # fmt: skip


def test_independent_scores_normalise_to_a_distribution_for_expected_jaccard(joint_sft: Path) -> None:
    model = SpanExtractor(max_length=48, max_span_tokens=8)
    batch = model.collate([{k: v for k, v in ROW.items()}])
    with torch.no_grad():
        lp = normalize_spans(model.codec.span_log_probs(model.eval().logits(batch), batch))
    torch.testing.assert_close(lp.exp().sum(), torch.tensor(1.0))


@pytest.mark.slow
def test_align_with_the_recipe_config_writes_a_plain_joint_span_checkpoint(tmp_path: Path) -> None:
    """``sentex align --config configs/dpo_span.yaml`` from a joint SFT, then ``sentex predict`` on the result."""
    import subprocess
    import sys

    torch.manual_seed(0)
    sft = SpanExtractor(max_span_tokens=16, span_scoring="joint", span_label_smoothing=0.1)  # the recipe's settings
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.strategy.connect(sft)
    trainer.save_checkpoint(tmp_path / "sft.ckpt")
    config = Path(__file__).resolve().parents[1] / "configs" / "dpo_span.yaml"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "sentex", "align", "--config", str(config), "--data.train_path", "sentex:sample.csv",
         "--model.sft_checkpoint", str(tmp_path / "sft.ckpt"), "--trainer.max_steps", "2",
         "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    (ckpt,) = (tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints").glob("last*.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["span_scoring"] == "joint" and "loss_type" not in saved["hyper_parameters"]
    assert saved["sentex"]["dpo"]["loss_type"] == "expected_jaccard"
    predict = subprocess.run(
        [sys.executable, "-m", "sentex", "predict", "--config", str(config.parent / "span_joint.yaml"),
         "--ckpt_path", str(ckpt), "--data.predict_path", "sentex:sample_test.csv",
         "--submission.output_path", str(tmp_path / "submission.csv")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert (tmp_path / "submission.csv").read_text().startswith("textID,selected_text")


def test_sft_checkpoint_with_other_span_scoring_is_refused(joint_sft: Path) -> None:
    from sentex.errors import CheckpointError

    with pytest.raises(CheckpointError, match="weights this model lacks.*pair_"):
        DPOSpanExtractor(sft_checkpoint=str(joint_sft), max_length=48, max_span_tokens=8)  # independent


def test_expected_jaccard_loss_stays_finite_with_a_row_without_tweet_tokens(joint_sft: Path) -> None:
    model = DPOSpanExtractor(sft_checkpoint=str(joint_sft), max_length=48, max_span_tokens=8, span_scoring="joint",
                             loss_type="expected_jaccard", beta=0.05)  # fmt: skip
    rows = [{"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS[:3]]
    batch = model.collate(rows)
    batch["in_tweet"][1] = False  # as a tweet of characters the tokenizer drops (e.g. a zero-width space)
    model.log = model.log_dict = lambda *a, **k: None  # no trainer attached
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.net.parameters() if p.grad is not None)


def test_align_will_not_resume_from_a_supervised_checkpoint(joint_sft: Path, tmp_path: Path) -> None:
    from tests.conftest import CONFIG_DIR, sentex

    run = sentex("align", "--config", str(CONFIG_DIR / "dpo_span.yaml"), "--model.sft_checkpoint", str(joint_sft),
                 "--data.train_path", "sentex:sample.csv", "--ckpt_path", str(joint_sft), cwd=tmp_path)  # fmt: skip
    assert run.returncode == 1 and "not a sentex align checkpoint" in run.stderr


def test_pair_options_are_refused_with_the_expected_jaccard_objective(joint_sft: Path) -> None:
    with pytest.raises(ValueError, match="rdpo_alpha apply to loss_type sigmoid/ipo"):
        DPOSpanExtractor(sft_checkpoint=str(joint_sft), max_length=48, max_span_tokens=8, span_scoring="joint",
                         loss_type="expected_jaccard", rdpo_alpha=0.1)  # fmt: skip
