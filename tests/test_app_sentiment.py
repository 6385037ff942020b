"""The demo app with a sentiment classifier: automatic sentiment for an extractor (``sentex app --sentiment_model``),
and a classifier served as the model (``sentex app --model <classifier>``).

The models are untrained (``sentiment_ckpt`` has random adapters, so its answers differ from row to row);
the tests assert that what the app returns is what ``sentex.load``'s models return for the same rows.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest

from sentex.app import classify, csvfiles, logic
from sentex.app.launcher import build_parser, check_launch, streamlit_command
from sentex.cli import main as cli_main
from sentex.deploy.sentiment import missing_sentiment
from sentex.errors import DataError, SentexError
from sentex.metrics import jaccard
from tests.conftest import TWEETS, classifier_checkpoint
from tests.test_app import page_test

KAGGLE = ("textID", "text", "selected_text", "sentiment")
# Labelled rows whose sentiment is given, empty or "auto" (any case and spacing): the last three are predicted.
MIXED = [*TWEETS[:5], (*TWEETS[5][:3], ""), (*TWEETS[6][:3], "auto"), (*TWEETS[7][:3], " AUTO ")]


def to_csv(rows, header=KAGGLE) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


@pytest.fixture(scope="module")
def classifier(sentiment_ckpt: Path):
    """The reference classifier: ``sentex.load`` of the sentiment checkpoint on its own."""
    from sentex.deploy.load import load

    return load(sentiment_ckpt)


@pytest.fixture(scope="module")
def auto_extractor(untrained_span_ckpt: Path, sentiment_ckpt: Path):
    """What ``sentex app --model <span> --sentiment_model <classifier>`` serves."""
    from sentex.deploy.load import load

    return load(untrained_span_ckpt, sentiment_model=sentiment_ckpt)


# --- automatic sentiment: logic ---------------------------------------------------------------
def test_single_tweet_auto_uses_the_classifier_sentiment(auto_extractor, untrained_extractor, classifier) -> None:
    assert logic.sentiment_options(auto_extractor) == ("auto", "negative", "neutral", "positive")
    text = "  my flight got cancelled and I am so angry right now"
    phrase, ms, choice = logic.extract_one(auto_extractor, text, "auto")
    expected = classifier.classify([text])[0]
    probs = classifier.predict_proba([text])[0]
    assert choice.auto and choice.sentiment == expected
    assert choice.probability == pytest.approx(float(probs[classifier.labels.index(expected)]), abs=1e-5)
    assert choice.caption() == f"sentiment: {expected} (auto, p={choice.probability:.2f})"
    assert phrase == untrained_extractor.extract([text], [expected])[0] and ms > 0
    # A sentiment the user picks is used as given, even with a sentiment model.
    phrase, _, choice = logic.extract_one(auto_extractor, text, "positive")
    assert (
        choice == logic.SentimentChoice("positive") and phrase == untrained_extractor.extract([text], ["positive"])[0]
    )


def test_batch_rows_without_sentiment_get_the_classifier_sentiment_and_are_scored(
    auto_extractor, untrained_extractor, classifier
) -> None:
    table = csvfiles.read_upload("mixed.csv", to_csv(MIXED), sentiment_optional=True)
    result = logic.run_batch(auto_extractor, table, batch_size=3)
    todo = [i for i, row in enumerate(MIXED) if missing_sentiment(row[3])]
    assert todo == [5, 6, 7]
    sentiments = [row[3] for row in MIXED]
    for i, label in zip(todo, classifier.classify([MIXED[i][1] for i in todo])):
        sentiments[i] = label
    texts = [row[1] for row in MIXED]
    preds = untrained_extractor.extract(texts, sentiments)
    assert [r["sentiment"] for r in result.rows] == sentiments
    assert [r["sentiment_predicted"] for r in result.rows] == [i in todo for i in range(len(MIXED))]
    assert [r["prediction"] for r in result.rows] == preds
    scores = [jaccard(p, row[2]) for p, row in zip(preds, MIXED)]
    assert result.mean_jaccard == pytest.approx(sum(scores) / len(scores))
    assert result.predicted_sentiments == 3 and result.auto_sentiment
    download = read_csv(logic.results_csv(result))
    assert list(download[0]) == ["textID", "text", "sentiment", "sentiment_predicted", "prediction"] + [
        "selected_text",
        "jaccard",
    ]
    assert [r["sentiment"] for r in download] == sentiments
    assert [r["sentiment_predicted"] for r in download] == [str(i in todo) for i in range(len(MIXED))]


def test_csv_without_a_sentiment_column_needs_a_sentiment_model(auto_extractor, classifier) -> None:
    rows = [(t[0], t[1]) for t in TWEETS]
    data = to_csv(rows, header=("textID", "text"))
    result = logic.run_batch(auto_extractor, csvfiles.read_upload("bare.csv", data, sentiment_optional=True))
    assert [r["sentiment"] for r in result.rows] == classifier.classify([t[1] for t in TWEETS])
    assert all(r["sentiment_predicted"] for r in result.rows) and result.mean_jaccard is None

    # Without a sentiment model: the reader's one line, pointing at the app's option.
    with pytest.raises(DataError) as err:
        csvfiles.read_upload("bare.csv", data)
    message = str(err.value)
    assert message == (
        "bare.csv: missing column(s) sentiment (found: textID, text)"
        " (or start the app with --sentiment_model to predict the sentiment)"
    )
    # Empty or "auto" values without a sentiment model: the reader's line plus the same hint.
    with pytest.raises(DataError) as err:
        csvfiles.read_upload("auto.csv", to_csv(MIXED))
    message = str(err.value)
    assert "\n" not in message and message.startswith("auto.csv: line 7: field 'sentiment': unknown value ''")
    assert message.endswith("; start the app with --sentiment_model to predict missing sentiments")


# --- a classifier as the model: logic -----------------------------------------------------------
def test_classifier_single_text_gives_label_and_probabilities(classifier) -> None:
    text = "best. day. ever 😀😀 thanks"
    result = classify.classify_one(classifier, text)
    probs = classifier.predict_proba([text])[0].tolist()
    assert result.label == classifier.classify([text])[0]
    assert list(result.probabilities) == classifier.labels
    assert list(result.probabilities.values()) == pytest.approx(probs, abs=1e-5)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)  # probabilities, not logits
    assert [r["label"] for r in result.table()] == classifier.labels and result.ms > 0
    with pytest.raises(DataError, match="the text is empty"):
        classify.classify_one(classifier, "  ")


def test_classifier_batch_labels_probabilities_and_accuracy(classifier) -> None:
    texts = [t[1] for t in TWEETS] + ["  Sooo SAD I will miss you!!!"]
    gold = [t[3] for t in TWEETS] + [""]  # the last row has no label: classified, not scored
    data = to_csv([(f"r{i}", t, g) for i, (t, g) in enumerate(zip(texts, gold))], header=("id", "text", "label"))
    table = classify.read_text_upload("texts.csv", data, classifier.labels)
    result = classify.run_classify_batch(classifier, table, batch_size=4)
    expected = classifier.classify(texts)
    probs = classifier.predict_proba(texts)
    assert [r["prediction"] for r in result.rows] == expected
    for name, column in zip(classifier.labels, probs.T.tolist()):
        assert [r[f"p_{name}"] for r in result.rows] == pytest.approx(column, abs=1e-5)
    hits = [p == g for p, g in zip(expected, gold) if g]
    assert result.accuracy == pytest.approx(sum(hits) / len(hits))
    assert result.notes() == ["1 row(s) without a label are not in the accuracy"]
    download = read_csv(classify.classify_results_csv(result))
    assert list(download[0]) == [
        "id",
        "text",
        "label",
        "prediction",
        "p_negative",
        "p_neutral",
        "p_positive",
        "correct",
    ]
    assert [r["id"] for r in download] == [f"r{i}" for i in range(len(texts))]

    # A Kaggle tweet file: ids from textID, gold labels from the sentiment column.
    kaggle = classify.read_text_upload("tweets.csv", to_csv(TWEETS), classifier.labels)
    result = classify.run_classify_batch(classifier, kaggle)
    assert [r["id"] for r in result.rows] == [t[0] for t in TWEETS]
    assert [r["label"] for r in result.rows] == [t[3] for t in TWEETS] and result.accuracy is not None
    # Only texts: no accuracy, ids are line numbers.
    bare = classify.run_classify_batch(classifier, classify.read_text_upload("t.csv", b"text\nhi\nyo\n", ["a", "b"]))
    assert [r["id"] for r in bare.rows] == ["2", "3"] and bare.accuracy is None and "label" not in bare.columns()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"id,tweet\n1,hi\n", "up.csv: missing column(s) text (found: id, tweet)"),
        (b"text,label\nhi,happy\n", "up.csv: line 2: field 'label': unknown value 'happy' (expected one of "),
        (b"", "up.csv: file is empty"),
    ],
)
def test_bad_classifier_uploads_are_one_line_naming_the_upload(data: bytes, message: str) -> None:
    with pytest.raises(DataError) as err:
        classify.read_text_upload("up.csv", data, ["negative", "neutral", "positive"])
    assert str(err.value).startswith(message) and "\n" not in str(err.value) and "sentex-upload-" not in str(err.value)


# --- launcher ---------------------------------------------------------------------------------
def test_launcher_passes_and_checks_a_good_sentiment_model(sentiment_ckpt: Path, monkeypatch) -> None:
    monkeypatch.delenv(logic.SENTIMENT_MODEL_ENV, raising=False)
    args = build_parser().parse_args(["--model", "m", "--sentiment_model", str(sentiment_ckpt)])
    assert streamlit_command(args)[-5:] == ["--", "--model", "m", "--sentiment_model", str(sentiment_ckpt)]
    check_launch(build_parser().parse_args(["--sentiment_model", str(sentiment_ckpt)]))  # no error


def test_launcher_stops_on_a_bad_sentiment_model(
    untrained_span_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv(logic.SENTIMENT_MODEL_ENV, raising=False)
    two_labels = classifier_checkpoint(tmp_path / "two.ckpt", labels=("neg", "pos"))
    cases = [
        (untrained_span_ckpt, "a sentiment model must be a classifier export or checkpoint, not a span model"),
        (
            two_labels,
            "a sentiment model must classify into negative, neutral, positive; this one has the labels neg, pos",
        ),
        (tmp_path / "nope", "no such file or folder"),
    ]
    for path, why in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["app", "--model", str(untrained_span_ckpt), "--sentiment_model", str(path)])
        assert exit_info.value.code == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sentex: error:")]
        assert errors == [f"sentex: error: --sentiment_model {path}: {why}"], errors  # one line (loading may log)
    # The environment variable is checked the same way, and named in the message.
    monkeypatch.setenv(logic.SENTIMENT_MODEL_ENV, str(untrained_span_ckpt))
    with pytest.raises(SentexError, match=r"^\$SENTEX_SENTIMENT_MODEL .*: a sentiment model must be a classifier"):
        check_launch(build_parser().parse_args(["--model", str(untrained_span_ckpt)]))


# --- the pages, through AppTest -----------------------------------------------------------------
def test_page_with_a_sentiment_model_offers_auto(
    untrained_span_ckpt: Path, sentiment_ckpt: Path, untrained_extractor, classifier, monkeypatch
) -> None:
    # The arguments `sentex app` passes after `--` (streamlit_command), read by the page from sys.argv.
    monkeypatch.delenv(logic.MODEL_ENV, raising=False)
    monkeypatch.delenv(logic.SENTIMENT_MODEL_ENV, raising=False)
    argv = ["streamlit_app.py", "--model", str(untrained_span_ckpt), "--sentiment_model", str(sentiment_ckpt)]
    monkeypatch.setattr(sys, "argv", argv)
    at = page_test(180).run()
    assert not at.exception, at.exception
    radio = at.radio(key="sentiment")
    assert list(radio.options) == ["auto", "negative", "neutral", "positive"] and radio.value == "auto"
    assert any(h.value == "Sentiment model" for h in at.sidebar.header)
    text = "waited all day for the delivery and nothing came"
    at.text_area(key="tweet").set_value(text)
    at.button[[b.label for b in at.button].index("Extract")].click()
    at.run()
    assert not at.exception, at.exception
    label = classifier.classify([text])[0]
    assert at.code[0].value == untrained_extractor.extract([text], [label])[0]
    shown = [c.value for c in at.caption if c.value.startswith("sentiment: ")]
    assert len(shown) == 1 and shown[0].startswith(f"sentiment: {label} (auto, p=0.")

    at.file_uploader[0].set_value(("bare.csv", to_csv([t[:2] for t in TWEETS], ("textID", "text")), "text/csv"))
    at.run()
    assert not at.exception and not at.error, at.error
    table = at.dataframe[0].value
    assert list(table["sentiment"]) == classifier.classify([t[1] for t in TWEETS])
    assert list(table["sentiment_predicted"]) == [True] * len(TWEETS)


def test_page_with_a_classifier_classifies(sentiment_ckpt: Path, classifier, monkeypatch) -> None:
    monkeypatch.setenv(logic.MODEL_ENV, str(sentiment_ckpt))
    monkeypatch.delenv(logic.SENTIMENT_MODEL_ENV, raising=False)
    at = page_test(180).run()
    assert not at.exception, at.exception
    assert not at.radio and "- **Labels:** negative, neutral, positive" in at.sidebar.markdown[0].value
    text = "so proud of my little sister today"
    at.text_area(key="clf_text").set_value(text)
    at.button[[b.label for b in at.button].index("Classify")].click()
    at.run()
    assert not at.exception, at.exception
    assert at.code[0].value == classifier.classify([text])[0]
    probs = at.dataframe[0].value
    assert list(probs["label"]) == classifier.labels
    assert list(probs["probability"]) == pytest.approx(classifier.predict_proba([text])[0].tolist(), abs=1e-5)

    at.file_uploader[0].set_value(("tweets.csv", to_csv(TWEETS), "text/csv"))
    at.run()
    assert not at.exception and not at.error, at.error
    expected = classifier.classify([t[1] for t in TWEETS])
    assert list(at.dataframe[1].value["prediction"]) == expected
    accuracy = sum(p == t[3] for p, t in zip(expected, TWEETS)) / len(TWEETS)
    assert {m.label: m.value for m in at.metric}["Accuracy"] == f"{accuracy:.4f}"
    assert [b.label for b in at.get("download_button")] == ["Download results CSV"]
