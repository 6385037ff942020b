"""The span network's LSTM head (``head_lstm``): its shape, that it learns, and what its exports compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sentex.deploy.export import export
from sentex.deploy.load import load
from sentex.errors import SentexError
from sentex.models import SpanExtractor
from tests.conftest import TWEETS, loss_before_and_after_training, require_module, span_checkpoint

ROWS = [{"textID": t[0], "text": t[1], "selected_text": t[2], "sentiment": t[3]} for t in TWEETS]
TEXTS, SENTIMENTS = [r["text"] for r in ROWS], [r["sentiment"] for r in ROWS]


def test_the_lstm_reads_the_encoder_states_and_learns_at_the_heads_rate() -> None:
    model = SpanExtractor(max_length=32, head_lstm=True, learning_rate=1e-4, head_learning_rate=1e-3)
    hidden = model.net.encoder.config.hidden_size
    lstm = model.net.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.bidirectional, lstm.num_layers) == (hidden, hidden // 2, True, 1)
    assert model.net.head.in_features == 2 * (hidden // 2) + hidden  # encoder states and LSTM output side by side
    assert model.lr_overrides()["net.lstm."] == 1e-3
    assert SpanExtractor(max_length=32).net.lstm is None  # off by default


def test_the_lstm_head_model_learns(tweets_csv: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SpanExtractor(max_length=48, head_lstm=True, learning_rate=5e-4, warmup_steps=0)
    lstm_before = model.net.lstm.weight_hh_l0.detach().clone()
    before, after, _ = loss_before_and_after_training(model, ROWS, tweets_csv, tmp_path)
    assert after < before - 0.3
    assert not torch.equal(model.net.lstm.weight_hh_l0, lstm_before)


@pytest.fixture(scope="module")
def lstm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return span_checkpoint(tmp_path_factory.mktemp("lstm") / "lstm.ckpt", head_lstm=True)


def test_the_fp32_export_computes_what_the_checkpoint_computes(lstm_ckpt: Path, tmp_path: Path) -> None:
    export(lstm_ckpt, tmp_path / "fp32")
    heads = load_file(str(tmp_path / "fp32" / "head.safetensors"))
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0_reverse", "head.weight"} <= set(heads)
    model, exported = load(lstm_ckpt), load(tmp_path / "fp32")
    batch = model.pipeline.codec.collate(ROWS)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        want, got = model.pipeline.net(**inputs), exported.pipeline.net(**inputs)
    torch.testing.assert_close(got.start, want.start, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.end, want.end, rtol=1e-4, atol=1e-4)
    assert exported.extract(TEXTS, SENTIMENTS) == model.extract(TEXTS, SENTIMENTS)


# Lower-precision LSTM exports against the fp32 export on the sample's start/end logits over real tokens:
# (largest absolute error, smallest cosine), for logits up to ~0.65. Measured on an AMD EPYC (AVX2 only): bf16
# 0.009 / 0.9999, int8 0.023 / 0.9995 (weights rounded, computed in float32). On VNNI/AMX CPUs int8 also rounds
# each token's activations to 8 bits (hidden-state cosine 0.996 on MiniLM), hence int8's looser bound.
LSTM_EXPORT_BOUNDS = {"bf16": (0.05, 0.999), "int8": (0.15, 0.99)}


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_lower_precision_lstm_exports_follow_the_fp32_logits(dtype: str, lstm_ckpt: Path, tmp_path: Path) -> None:
    export(lstm_ckpt, tmp_path / "fp32")
    export(lstm_ckpt, tmp_path / dtype, dtype)
    reference, exported = load(tmp_path / "fp32"), load(tmp_path / dtype)
    assert exported.pipeline.net.lstm.hidden_size == exported.pipeline.net.encoder.config.hidden_size // 2
    batch = reference.pipeline.codec.collate(ROWS)
    real = batch["attention_mask"].bool()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        want, got = reference.pipeline.net(**inputs), exported.pipeline.net(**inputs)
    max_error, min_cosine = LSTM_EXPORT_BOUNDS[dtype]
    for g, w in ((got.start, want.start), (got.end, want.end)):
        g, w = g.float()[real], w.float()[real]
        assert (g - w).abs().max() > 1e-4  # really lower precision ...
        assert (g - w).abs().max() < max_error, f"{dtype}: largest logit error {(g - w).abs().max():.3f}"
        assert torch.cosine_similarity(g, w, dim=0) > min_cosine  # ... and the same network
    answers = exported.extract(TEXTS, SENTIMENTS)
    assert all(a in t for a, t in zip(answers, TEXTS))


def test_onnx_refuses_the_lstm_head_before_writing(lstm_ckpt: Path, tmp_path: Path) -> None:
    """torch's exporter specialises the LSTM to the traced length (not reliably symbolic): nothing is written."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        require_module(name, "the onnx extra: pip install 'sentex[onnx]'")
    with pytest.raises(SentexError, match=r"lstm\.ckpt: --format onnx cannot export the LSTM head"):
        export(lstm_ckpt, tmp_path / "onnx", "fp32", runtime="onnx")
    assert not any(tmp_path.iterdir())
