"""One row policy for a labelled CSV: the demo app's upload scores exactly the rows ``sentex test`` scores.

Both read through ``sentex.data.tweets`` (the app with ``read_for_scoring``, ``sentex test`` with
``read_tweets(require_labels=True)``), and rows that cannot be scored (empty tweet, empty phrase,
phrase not in the tweet) are skipped and counted by both.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sentex.app import csvfiles, logic
from sentex.cli import main as cli_main
from sentex.data import TweetDataModule
from sentex.data.tweets import read_for_scoring, read_tweets, skip_reason
from sentex.metrics import jaccard
from tests.conftest import TWEETS, write_rows

# Rows both paths must skip, with the reason each is counted under.
UNSCORABLE = [
    (("e1", "", "x", "positive"), "empty text"),
    (("e2", "   ", "x", "negative"), "empty text"),
    (("e3", "the phrase is missing", "not here", "negative"), "selected_text not found in text"),
    (("e4", "a tweet with no phrase", "", "neutral"), "empty selected_text"),
    (("e5", "Case Differs here", "case differs", "positive"), "selected_text not found in text"),
]
ROWS = [*TWEETS[:3], *(row for row, _ in UNSCORABLE[:3]), *TWEETS[3:], *(row for row, _ in UNSCORABLE[3:])]
SCORED_IDS = [t[0] for t in TWEETS]  # in file order: the unscorable rows are interleaved with them
SKIPPED = {"empty text": 2, "selected_text not found in text": 2, "empty selected_text": 1}


def first_word(texts: list[str]) -> list[str]:
    """Deterministic stand-in predictions, the same whichever path asks."""
    return [t.split()[0] if t.split() else "" for t in texts]


class FirstWord:
    """The app's model interface around :func:`first_word`."""

    family = "span"
    info = {"family": "span"}

    def extract(self, texts, sentiments, batch_size=16, **generation):
        return first_word(texts)


def labelled_csv(path: Path) -> Path:
    return write_rows(path, ROWS)


def test_policy_names_each_unscorable_row() -> None:
    for row, reason in UNSCORABLE:
        assert skip_reason({"text": row[1], "selected_text": row[2]}) == reason
    assert all(skip_reason({"text": t[1], "selected_text": t[2]}) is None for t in TWEETS)


def test_app_upload_and_sentex_test_data_score_the_same_rows(tmp_path: Path) -> None:
    path = labelled_csv(tmp_path / "labelled.csv")
    # `sentex test --data.test_path`: the data module's test rows.
    dm = TweetDataModule(test_path=str(path))
    dm.setup("test")
    test_rows = dm.datasets["test"]
    # The app: the upload's bytes, then a batch over them.
    table = csvfiles.read_upload("labelled.csv", path.read_bytes())
    result = logic.run_batch(FirstWord(), table, batch_size=4)

    assert list(test_rows["textID"]) == [r["textID"] for r in result.rows] == SCORED_IDS
    assert list(test_rows["selected_text"]) == [r["selected_text"] for r in result.rows]
    assert result.skipped == SKIPPED == read_tweets(path, require_labels=True).skipped
    assert result.notes() == [f"{n} row(s) skipped: {why}" for why, n in sorted(SKIPPED.items())]
    test_preds = first_word(list(test_rows["text"]))
    test_mean = sum(jaccard(p, g) for p, g in zip(test_preds, test_rows["selected_text"])) / len(test_rows)
    assert result.mean_jaccard == test_mean
    # Hand-computed over the 8 scored rows (see tests/test_app.py): 0, 0, 1/5, 1/2, 1, 1/5, 1/2, 0.
    assert result.mean_jaccard == pytest.approx(2.4 / 8)


def test_unlabelled_upload_keeps_every_row_as_predict_does(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "test.csv", [(r[0], r[1], r[3]) for r in ROWS], header=("textID", "text", "sentiment"))
    table = read_for_scoring(path)
    assert table.columns["textID"] == [r[0] for r in ROWS] and table.skipped == {} and not table.has_labels
    assert table.columns == read_tweets(path, require_labels=False).columns
    result = logic.run_batch(FirstWord(), csvfiles.read_upload("test.csv", path.read_bytes()))
    assert [r["textID"] for r in result.rows] == [r[0] for r in ROWS] and result.mean_jaccard is None
    assert result.notes() == ["2 row(s) with empty text kept; their prediction is empty"]


@pytest.mark.slow
def test_real_sentex_test_and_the_app_agree_row_by_row(tmp_path: Path) -> None:
    """A real model through `sentex test` and through the app's batch: same rows, predictions, mean Jaccard."""
    from sentex.deploy.export import export
    from sentex.deploy.load import load
    from tests.conftest import span_checkpoint

    folder = tmp_path / "model"
    export(span_checkpoint(tmp_path / "span.ckpt"), folder, "fp32")
    path = labelled_csv(tmp_path / "labelled.csv")
    cli_main(
        ["test", "--ckpt_path", str(folder), "--data.test_path", str(path), "--data.batch_size", "4",
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path)]
    )  # fmt: skip
    with open(tmp_path / "test_predictions.csv", encoding="utf-8", newline="") as f:
        report = list(csv.DictReader(f))
    result = logic.run_batch(load(folder), csvfiles.read_upload("labelled.csv", path.read_bytes()), batch_size=4)

    assert [r["textID"] for r in report] == [r["textID"] for r in result.rows] == SCORED_IDS
    assert [r["prediction"] for r in report] == [r["prediction"] for r in result.rows]
    report_mean = sum(jaccard(r["prediction"], r["selected_text"]) for r in report) / len(report)
    assert result.mean_jaccard == report_mean
    assert result.skipped == SKIPPED
