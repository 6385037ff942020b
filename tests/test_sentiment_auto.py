"""Classifier exports and automatic sentiment: ``sentex export``/``sentex.load`` for the sentiment
classifier, extraction from tweets given without a sentiment (``load(..., sentiment_model=)``,
``sentex predict --data.sentiment_model``) and ``sentex bench`` with classifiers."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch

from sentex.cli import main as cli_main
from sentex.deploy.export import export
from sentex.deploy.load import Extractor, load
from sentex.deploy.sentiment import Classifier
from sentex.errors import SentexError
from tests.conftest import TEXTS, TWEETS, classifier_checkpoint, write_rows

TWEET_TEXTS = [t for t in TEXTS if t.strip()]


@pytest.fixture(scope="module")
def folders(sentiment_ckpt: Path, untrained_span_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Exports of the sentiment classifier (fp32, int8) and of the span model (fp32)."""
    root = tmp_path_factory.mktemp("auto")
    export(sentiment_ckpt, root / "clf-fp32", "fp32")
    export(sentiment_ckpt, root / "clf-int8", "int8")
    export(untrained_span_ckpt, root / "span", "fp32")
    return {"fp32": root / "clf-fp32", "int8": root / "clf-int8", "span": root / "span"}


# --- the classifier's export ----------------------------------------------------------------
def test_classifier_export_computes_what_the_checkpoint_computes(sentiment_ckpt: Path, folders: dict) -> None:
    from_ckpt = load(sentiment_ckpt)
    assert isinstance(from_ckpt, Classifier) and from_ckpt.labels == ["negative", "neutral", "positive"]
    want = from_ckpt.predict_proba(TWEET_TEXTS)
    # The adapters are random, so answers differ by row and merging them changes the weights.
    assert len(set(from_ckpt.classify(TWEET_TEXTS))) > 1
    merged = load(folders["fp32"])
    assert isinstance(merged, Classifier) and merged.labels == from_ckpt.labels
    assert torch.allclose(merged.predict_proba(TWEET_TEXTS), want, atol=1e-4)
    int8 = load(folders["int8"])
    assert (int8.predict_proba(TWEET_TEXTS) - want).abs().max() < 0.05
    manifest = json.loads((folders["int8"] / "sentex.json").read_text())
    assert manifest["family"] == "classifier" and manifest["settings"]["labels"] == from_ckpt.labels
    assert manifest["quantization"]["kept_fp32"] == ["classifier", "score"]
    card = (folders["fp32"] / "README.md").read_text()
    assert card.startswith("# sentex sentiment classifier (fp32)")
    assert "clf.classify(" in card and "negative, neutral, positive" in card


def test_probabilities_come_back_in_input_order_whatever_the_batching(folders: dict) -> None:
    clf = load(folders["fp32"])
    one_by_one = torch.cat([clf.predict_proba([t]) for t in TWEET_TEXTS])
    assert torch.allclose(clf.predict_proba(TWEET_TEXTS, batch_size=3), one_by_one, atol=1e-5)
    assert torch.allclose(one_by_one.sum(dim=-1), torch.ones(len(TWEET_TEXTS)), atol=1e-5)
    with pytest.raises(SentexError, match="row 1: text must be a string"):
        clf.classify(["fine", 3])


# --- extraction with automatic sentiment ----------------------------------------------------
def test_rows_without_sentiment_get_the_classifiers(folders: dict) -> None:
    plain = load(folders["span"])
    auto = load(folders["span"], sentiment_model=folders["fp32"])
    predicted = load(folders["fp32"]).classify(TWEET_TEXTS)
    assert isinstance(auto, Extractor) and auto.sentiment_model is not None
    assert auto.sentiments_for(TWEET_TEXTS, None) == predicted
    assert auto.extract(TWEET_TEXTS) == plain.extract(TWEET_TEXTS, predicted)
    # Given sentiments stay; only missing ones (None, "", "auto") are predicted.
    given = ["negative", None, "auto", "", "positive", " Auto "] + [None] * (len(TWEET_TEXTS) - 6)
    filled = auto.sentiments_for(TWEET_TEXTS, given)
    assert filled == [g if g in ("negative", "positive") else p for g, p in zip(given, predicted)]
    assert auto.extract(TWEET_TEXTS, given) == plain.extract(TWEET_TEXTS, filled)


def test_a_missing_sentiment_without_a_sentiment_model_is_one_line(folders: dict) -> None:
    plain = load(folders["span"])
    with pytest.raises(SentexError, match=r"row 0: sentiment None is not one of .*load the extractor with a sentiment"):
        plain.extract(["so happy"])
    with pytest.raises(SentexError, match="row 1: sentiment 'glad' is not one of"):
        plain.extract(["so happy", "glad"], ["positive", "glad"])


def test_bad_sentiment_models_are_refused(folders: dict, untrained_span_ckpt: Path, tmp_path: Path) -> None:
    two_class = classifier_checkpoint(tmp_path / "two.ckpt", labels=("bad", "good"))
    with pytest.raises(SentexError, match="must classify into negative, neutral, positive; this one has .*bad, good"):
        load(folders["span"], sentiment_model=two_class)
    with pytest.raises(SentexError, match="must be a classifier export or checkpoint, not a span model"):
        load(folders["span"], sentiment_model=untrained_span_ckpt)
    with pytest.raises(SentexError, match="a sentiment model goes with an extractor"):
        load(folders["fp32"], sentiment_model=folders["fp32"])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_predict_fills_missing_sentiments(
    folders: dict, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [(t[0], t[1]) for t in TWEETS]
    no_column = write_rows(tmp_path / "tweets.csv", rows, header=("textID", "text"))
    out = tmp_path / "submission.csv"
    args = ["predict", "--ckpt_path", str(folders["span"]), "--data.predict_path", str(no_column)]
    with caplog.at_level(logging.INFO):
        cli_main([*args, "--data.sentiment_model", str(folders["fp32"]), "--submission.output_path", str(out)])
    texts = [t[1] for t in TWEETS]
    expected = load(folders["span"], sentiment_model=folders["fp32"]).extract(texts)
    assert [r["selected_text"] for r in read_csv(out)] == expected
    assert f"predicted the sentiment of {len(rows)} of {len(rows)} row(s) with {folders['fp32']}" in caplog.text
    # Without a sentiment model the missing column is the usual one-line error, which names the option.
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--submission.output_path", str(tmp_path / "no.csv")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "missing column(s) sentiment" in err and "--data.sentiment_model" in err
    assert not (tmp_path / "no.csv").exists()


# --- bench ------------------------------------------------------------------------------------
def test_bench_scores_classifiers_and_extraction_with_automatic_sentiment(
    folders: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from sentex.deploy.bench_measure import accuracy, mean_jaccard

    val = write_rows(tmp_path / "val.csv", TWEETS)
    out = tmp_path / "results"
    cli_main(["bench", str(folders["span"]), str(folders["int8"]), "--sentiment_model", str(folders["fp32"]),
              "--data.val_path", str(val), "--out", str(out), "--batch_sizes", "1", "4", "--latency_rows", "4",
              "--repeats", "1", "--threads", "1"])  # fmt: skip
    rows = read_csv(out / "bench.csv")
    assert [r["model"] for r in rows] == ["span", "span + auto sentiment (clf-fp32)", "clf-int8"]
    texts, sentiments, golds = [t[1] for t in TWEETS], [t[3] for t in TWEETS], [t[2] for t in TWEETS]
    predicted = load(folders["fp32"]).classify(texts)
    auto = load(folders["span"]).extract(texts, predicted, batch_size=4)
    assert float(rows[1]["jaccard"]) == round(mean_jaccard(auto, golds), 4)
    assert float(rows[1]["sentiment_accuracy"]) == round(accuracy(predicted, sentiments), 4)
    assert float(rows[2]["accuracy"]) == round(accuracy(load(folders["int8"]).classify(texts), sentiments), 4)
    assert rows[2]["family"] == "classifier" and rows[2]["jaccard"] == ""
    assert "| span + auto sentiment (clf-fp32) | span |" in capsys.readouterr().out


def test_predict_on_a_classifier_export_says_what_runs_it(
    folders: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = write_rows(tmp_path / "t.csv", [(t[0], t[1], t[3]) for t in TWEETS], header=("textID", "text", "sentiment"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", "--ckpt_path", str(folders["fp32"]), "--data.predict_path", str(data)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"sentex: error: {folders['fp32']}: a classifier export; run it with sentex.load(...).classify, sentex serve,"
        " sentex app or sentex bench, or run sentex predict on its checkpoint with its config"
    )
