"""A tweet gets the same answer whatever it is batched with (issue #24).

The BiLSTM head once ran over the padded batch, so its backward direction started at the last
*padded* position and a tweet's scores depended on the longest tweet beside it; int8 exports once
quantized activations with one scale per batch. Each model here scores one short tweet alone and
inside a batch of much longer tweets: fp32 scores must agree within 1e-5, answers must be equal, for
the span network with and without the LSTM, independent and joint scoring, and for every export
(torch fp32/bf16/int8, ONNX fp32/int8, an ensemble).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sentex.deploy.export import export
from sentex.deploy.load import Extractor, load
from sentex.deploy.quant.int8 import RowScaledDynamicLinear, cpu_has_vnni
from sentex.models import SpanExtractor
from tests.conftest import require_module, save_untrained

TWEET = {"text": "so happy for you both!", "sentiment": "positive"}
LONG = [
    {
        "text": "my phone died again and the bus never came, then it rained all the way to work and the coffee "
        "machine was broken too, what a terrible terrible morning this has been for everyone in the office",
        "sentiment": "negative",
    },
    {
        "text": "going to the store later to pick up some bread and milk and maybe a few apples if they have any "
        "left, then back home to watch the game with the kids and the neighbours",
        "sentiment": "neutral",
    },
    {
        "text": "best concert of my life last night!! the band played every song we wanted and the crowd sang "
        "along to all of them, still cannot believe we got tickets so close to the stage",
        "sentiment": "positive",
    },
]
SCORE_ATOL = 1e-5


def scores_alone_and_batched(pipeline) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tweet's logits (start, end, pair where joint) alone and as row 1 of a batch of longer tweets,
    over the tweet's own tokens."""
    alone_batch = pipeline.collate([TWEET])
    mixed_batch = pipeline.collate([LONG[0], TWEET, *LONG[1:]])
    length = int(alone_batch["attention_mask"][0].sum())
    assert mixed_batch["attention_mask"].shape[1] > 2 * length  # the batch really pads this tweet
    with torch.no_grad():
        alone = pipeline.codec.logits(pipeline.net, alone_batch)
        mixed = pipeline.codec.logits(pipeline.net, mixed_batch)
    got_alone = [alone.start[0, :length], alone.end[0, :length]]
    got_mixed = [mixed.start[1, :length], mixed.end[1, :length]]
    if alone.pair is not None:
        got_alone.append(alone.pair[0, :length, :length])
        got_mixed.append(mixed.pair[1, :length, :length])
    return [t.float() for t in got_alone], [t.float() for t in got_mixed]


def answers_alone_and_batched(extractor: Extractor) -> tuple[str, str]:
    texts = [row["text"] for row in (LONG[0], TWEET, *LONG[1:])]
    sentiments = [row["sentiment"] for row in (LONG[0], TWEET, *LONG[1:])]
    alone = extractor.extract([TWEET["text"]], [TWEET["sentiment"]], batch_size=1)[0]
    batched = extractor.extract(texts, sentiments, batch_size=16)[1]
    return alone, batched


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained span checkpoints (seeded heads): every head x scoring combination."""
    root = tmp_path_factory.mktemp("invariance")
    out = {}
    for lstm in (False, True):
        for scoring in ("independent", "joint"):
            torch.manual_seed(0)
            model = SpanExtractor(max_length=64, head_lstm=lstm, span_scoring=scoring)
            name = f"{'lstm' if lstm else 'linear'}-{scoring}"
            out[name] = save_untrained(model, root / f"{name}.ckpt")
    return out


@pytest.mark.parametrize("name", ["linear-independent", "linear-joint", "lstm-independent", "lstm-joint"])
def test_a_checkpoint_scores_a_tweet_alike_alone_and_among_longer_tweets(
    name: str, checkpoints: dict[str, Path]
) -> None:
    extractor = load(checkpoints[name])
    alone, mixed = scores_alone_and_batched(extractor.pipeline)
    for a, m in zip(alone, mixed):
        torch.testing.assert_close(m, a, atol=SCORE_ATOL, rtol=0)
    assert answers_alone_and_batched(extractor)[0] == answers_alone_and_batched(extractor)[1]


def test_the_lstm_reads_no_padding_in_training_mode_either() -> None:
    """What the model trains on is what it answers with: the LSTM output at a row's tokens ignores padding."""
    torch.manual_seed(0)
    model = SpanExtractor(max_length=64, head_lstm=True, head_dropout=0.0)
    net = model.net.eval()
    hidden = torch.randn(2, 9, net.encoder.config.hidden_size)
    mask = torch.tensor([[1] * 4 + [0] * 5, [1] * 9])
    with torch.no_grad():
        together = net.read_tokens(hidden, mask)
        alone = net.read_tokens(hidden[:1, :4], mask[:1, :4])
    torch.testing.assert_close(together[0, :4], alone[0], atol=1e-6, rtol=0)
    assert torch.equal(together[0, 4:], torch.zeros_like(together[0, 4:]))  # nothing read at padding
    garbage = hidden.clone()
    garbage[0, 4:] = 1e3  # what the encoder leaves at pad tokens must not matter
    with torch.no_grad():
        torch.testing.assert_close(net.read_tokens(garbage, mask)[0, :4], alone[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int8-kernels"])
@pytest.mark.parametrize("name", ["linear-joint", "lstm-independent"])
def test_every_torch_export_answers_a_tweet_alike_alone_and_among_longer_tweets(
    dtype: str, name: str, checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if dtype == "int8-kernels":  # the per-token int8 kernels VNNI CPUs use, forced on any CPU (7-bit without VNNI)
        monkeypatch.setenv("SENTEX_INT8_COMPUTE", "int8")
        dtype = "int8"
    export(checkpoints[name], tmp_path / dtype, dtype)
    extractor = load(tmp_path / dtype)
    kernels = any(isinstance(m, RowScaledDynamicLinear) for m in extractor.pipeline.net.modules())
    assert kernels == (os.environ.get("SENTEX_INT8_COMPUTE") == "int8" or (dtype == "int8" and cpu_has_vnni()))
    alone, mixed = scores_alone_and_batched(extractor.pipeline)
    atol = SCORE_ATOL if dtype == "fp32" else 1e-2  # bf16 rounds differently per shape; int8 is per row
    for a, m in zip(alone, mixed):
        torch.testing.assert_close(m, a, atol=atol, rtol=0)
    alone_answer, batched_answer = answers_alone_and_batched(extractor)
    assert alone_answer == batched_answer and alone_answer in TWEET["text"]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_onnx_exports_answer_a_tweet_alike_alone_and_among_longer_tweets(
    dtype: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require_module(module, "the onnx extra: pip install 'sentex[onnx]'")
    export(checkpoints["linear-joint"], tmp_path / dtype, dtype, runtime="onnx")
    extractor = load(tmp_path / dtype)
    alone, mixed = scores_alone_and_batched(extractor.pipeline)
    for a, m in zip(alone, mixed):
        torch.testing.assert_close(m, a, atol=SCORE_ATOL, rtol=0)
    assert answers_alone_and_batched(extractor)[0] == answers_alone_and_batched(extractor)[1]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_an_ensemble_answers_a_tweet_alike_alone_and_among_longer_tweets(
    dtype: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    export([checkpoints["lstm-joint"], checkpoints["linear-independent"]], tmp_path / dtype, dtype)
    extractor = load(tmp_path / dtype)
    alone, batched = answers_alone_and_batched(extractor)
    assert alone == batched and alone in TWEET["text"]
