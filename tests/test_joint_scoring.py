"""Joint span scoring: a real distribution over valid spans, decoding = brute force, compound loss, export."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sentex.deploy.export import export
from sentex.deploy.load import load
from sentex.models import SpanExtractor
from sentex.models.components.span_math import (
    IGNORE,
    best_spans,
    boundary_log_probs,
    gather_spans,
    joint_span_nll,
    pair_log_probs,
    smoothed_span_nll,
    valid_pairs,
)
from tests.conftest import TWEETS, loss_before_and_after_training

ROWS = [{"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS]


def random_scores(seed: int, batch: int = 3, n: int = 7) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    start, end = torch.randn(batch, n, generator=gen), torch.randn(batch, n, generator=gen)
    pair = torch.randn(batch, n, n, generator=gen)
    allowed = torch.rand(batch, n, generator=gen) > 0.3
    allowed[:, 2] = True  # every row has at least one tweet token
    return start, end, pair, allowed


@pytest.mark.parametrize("seed", range(4))
def test_joint_log_probs_sum_to_one_over_valid_spans(seed: int) -> None:
    start, end, pair, allowed = random_scores(seed)
    for max_span in (1, 3, 7):
        lp = pair_log_probs(start, end, pair, allowed, max_span)
        valid = valid_pairs(allowed, max_span)
        torch.testing.assert_close(lp.exp().sum(dim=(1, 2)), torch.ones(3, dtype=torch.float32))
        assert torch.all(lp[~valid] == float("-inf")) and torch.isfinite(lp[valid]).all()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("joint", [True, False])
def test_decoding_equals_brute_force(seed: int, joint: bool) -> None:
    start, end, pair, allowed = random_scores(seed)
    max_span = 3
    got = best_spans(pair_log_probs(start, end, pair if joint else None, allowed, max_span)).tolist()
    for row in range(3):
        ls, le = boundary_log_probs(start, allowed)[row], boundary_log_probs(end, allowed)[row]
        best, arg = -float("inf"), None
        for i, j in itertools.product(range(7), repeat=2):
            if not (allowed[row, i] and allowed[row, j] and i <= j < i + max_span):
                continue
            score = (start[row, i] + end[row, j] + pair[row, i, j]) if joint else (ls[i] + le[j])
            if score > best:
                best, arg = score, [i, j]
        assert got[row] == arg


def test_joint_nll_hand_computed_and_skips_spans_outside_the_support() -> None:
    # 2 tokens, max_span 2: spans (0,0), (0,1), (1,1), uniform scores -> each 1/3
    lp = pair_log_probs(
        torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool), 2
    )
    torch.testing.assert_close(joint_span_nll(lp, torch.tensor([[0, 1]])), torch.log(torch.tensor(3.0)))
    # (1, 0) is no span: the row is skipped, and with no row left the loss is a graph-keeping zero
    assert joint_span_nll(lp, torch.tensor([[1, 0]])).item() == 0.0
    assert joint_span_nll(lp, torch.tensor([[IGNORE, IGNORE]])).item() == 0.0


@pytest.fixture(scope="module")
def joint_model() -> SpanExtractor:
    torch.manual_seed(0)
    return SpanExtractor(max_length=48, max_span_tokens=6, span_scoring="joint", span_label_smoothing=0.1)


def test_compound_loss_is_the_mean_of_boundary_and_joint_terms(joint_model: SpanExtractor) -> None:
    model = joint_model.eval()
    batch = model.collate(ROWS)
    with torch.no_grad():
        logits = model.logits(batch)
        allowed, span = batch["in_tweet"], batch["span"]
        start = smoothed_span_nll(boundary_log_probs(logits.start, allowed), span[:, 0], allowed, 0.1)
        end = smoothed_span_nll(boundary_log_probs(logits.end, allowed), span[:, 1], allowed, 0.1)
        joint = joint_span_nll(model.codec.span_log_probs(logits, batch), span)
        torch.testing.assert_close(model.compute_loss(batch), (start + end + joint) / 3)


def test_sequence_log_probs_are_the_joint_distribution(joint_model: SpanExtractor) -> None:
    model = joint_model.eval()
    batch = model.collate(ROWS[:1])  # " I love this sunny morning"
    tokens = batch["in_tweet"][0].nonzero().flatten().tolist()
    spans = [(i, j) for i in tokens for j in tokens if i <= j < i + 6]
    rows = model.collate(ROWS[:1] * len(spans))
    with torch.no_grad():
        lp = model.sequence_log_probs(rows, torch.tensor(spans))
        matrix = model.codec.span_log_probs(model.logits(batch), batch)
    torch.testing.assert_close(lp.exp().sum(), torch.tensor(1.0))  # every valid span once
    torch.testing.assert_close(lp, gather_spans(matrix.expand(len(spans), -1, -1), torch.tensor(spans)))


def test_joint_model_learns_and_exports_what_it_computes(tweets_csv: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SpanExtractor(max_length=48, max_span_tokens=8, span_scoring="joint", learning_rate=5e-4, warmup_steps=0)
    before, after, trainer = loss_before_and_after_training(model, ROWS, tweets_csv, tmp_path)
    assert after < before - 0.3
    ckpt = tmp_path / "joint.ckpt"
    trainer.save_checkpoint(ckpt)
    export(ckpt, tmp_path / "fp32")
    from safetensors.torch import load_file

    heads = load_file(str(tmp_path / "fp32" / "head.safetensors"))
    assert {"head.weight", "pair_start.weight", "pair_end.weight"} <= set(heads)
    texts, sentiments = [r["text"] for r in ROWS], [r["sentiment"] for r in ROWS]
    assert load(tmp_path / "fp32").extract(texts, sentiments) == load(ckpt).extract(texts, sentiments)
    assert load(ckpt).extract(texts, sentiments) == model.extract(model.collate(ROWS))


def test_checkpoint_of_the_earlier_layout_still_loads(tmp_path: Path) -> None:
    """sentex 0.1 checkpoints name the span network's parts ``encoder.*``/``head.*`` at the top."""
    torch.manual_seed(0)
    model = SpanExtractor(max_length=48)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    ckpt = torch.load(tmp_path / "new.ckpt", weights_only=True)
    ckpt["state_dict"] = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}
    ckpt["hyper_parameters"]["_class_path"] = "sentex.models.span.SpanExtractor"
    assert any(k.startswith("head.") for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "old.ckpt")
    texts, sentiments = [r["text"] for r in ROWS], [r["sentiment"] for r in ROWS]
    assert load(tmp_path / "old.ckpt").extract(texts, sentiments) == load(tmp_path / "new.ckpt").extract(
        texts, sentiments
    )
    old = SpanExtractor.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert torch.equal(old.net.head.weight, model.net.head.weight)
