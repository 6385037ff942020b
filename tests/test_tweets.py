"""Input checking of Kaggle-format CSVs: every problem is named, fatal ones exit non-zero."""

import logging
from pathlib import Path

import pytest

from sentex.data import TweetDataModule
from sentex.data.tweets import read_tweets
from sentex.errors import DataError
from tests.conftest import TWEETS, write_rows


def test_reads_rows_and_keeps_surrounding_spaces(tweets_csv: Path) -> None:
    table = read_tweets(tweets_csv, require_labels=True)
    assert len(table) == len(TWEETS)
    assert table.columns["text"][0] == " I love this sunny morning"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_tweets(tmp_path / "nope.csv", require_labels=True)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        read_tweets(tmp_path / "e.csv", require_labels=True)


def test_header_only(tmp_path: Path) -> None:
    p = write_rows(tmp_path / "h.csv", [])
    with pytest.raises(DataError, match="no usable rows"):
        read_tweets(p, require_labels=True)


def test_missing_column_is_named(tmp_path: Path) -> None:
    p = write_rows(tmp_path / "m.csv", [("1", "hi", "positive")], header=("textID", "text", "sentiment"))
    with pytest.raises(DataError, match="missing column.*selected_text"):
        read_tweets(p, require_labels=True)
    assert len(read_tweets(p, require_labels=False)) == 1  # fine for predict


def test_unknown_sentiments_all_reported_with_line_and_value(tmp_path: Path) -> None:
    rows = [("1", "good", "good", "happy"), ("2", "ok", "ok", "neutral"), ("3", "bad", "bad", "Negative")]
    p = write_rows(tmp_path / "s.csv", rows)
    with pytest.raises(DataError) as err:
        read_tweets(p, require_labels=True)
    msg = str(err.value)
    assert "line 2: field 'sentiment': unknown value 'happy'" in msg
    assert "line 4: field 'sentiment': unknown value 'Negative'" in msg


def test_bad_rows_are_skipped_and_counted_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [*TWEETS, ("b1", "", "", "neutral"), ("b2", "nice day", "lovely", "positive")]
    p = write_rows(tmp_path / "b.csv", rows)
    with caplog.at_level(logging.WARNING):
        table = read_tweets(p, require_labels=True)
    assert len(table) == len(TWEETS)
    assert table.skipped == {"empty text": 1, "selected_text not found in text": 1}
    warnings = [r for r in caplog.records if "skipped 2 row(s)" in r.getMessage()]
    assert len(warnings) == 1


def test_strict_turns_skips_into_errors(tmp_path: Path) -> None:
    p = write_rows(tmp_path / "b.csv", [*TWEETS, ("b2", "nice day", "lovely", "positive")])
    with pytest.raises(DataError, match="line 10: selected_text not found in text"):
        read_tweets(p, require_labels=True, strict=True)


def test_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    rows = [(f"id{i}", f"tweet number {i}", "number", "neutral") for i in range(100)]
    p = write_rows(tmp_path / "t.csv", rows)

    def split(seed: int) -> tuple[list[str], list[str]]:
        dm = TweetDataModule(train_path=str(p), split_seed=seed)
        dm.setup("fit")
        return dm.datasets["train"]["textID"], dm.datasets["val"]["textID"]

    train, val = split(42)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert split(42) == (train, val)
    assert split(7)[1] != val


def test_train_sentiments_filter_training_rows_only(tmp_path: Path) -> None:
    sentiments = ["negative", "neutral", "positive"]
    rows = [(f"id{i}", f"tweet number {i}", "number", sentiments[i % 3]) for i in range(90)]
    p = write_rows(tmp_path / "t.csv", rows)
    every = TweetDataModule(train_path=str(p))
    every.setup("fit")
    polar = TweetDataModule(train_path=str(p), train_sentiments=["positive", "negative"])
    polar.setup("fit")
    assert polar.datasets["val"]["textID"] == every.datasets["val"]["textID"]  # same held-out rows, all kinds
    assert "neutral" in polar.datasets["val"]["sentiment"]
    kept = [
        t for t, s in zip(every.datasets["train"]["textID"], every.datasets["train"]["sentiment"]) if s != "neutral"
    ]
    assert polar.datasets["train"]["textID"] == kept
    with pytest.raises(DataError, match="data.train_sentiments must name some of"):
        TweetDataModule(train_path=str(p), train_sentiments=["happy"])


def test_explicit_val_path_and_missing_predict_path(tweets_csv: Path) -> None:
    dm = TweetDataModule(train_path=str(tweets_csv), val_path=str(tweets_csv))
    dm.setup("fit")
    assert len(dm.datasets["train"]) == len(dm.datasets["val"]) == len(TWEETS)
    with pytest.raises(DataError, match="--data.predict_path is required"):
        dm.setup("predict")


def test_length_buckets_cover_every_row_once_and_group_lengths() -> None:
    from sentex.data.sampling import LengthBucketBatchSampler

    lengths = [(i * 37) % 101 for i in range(1000)]
    sampler = LengthBucketBatchSampler(lengths, batch_size=8, seed=1, window_batches=10)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 125
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 20  # random batches of 8 from 0..100 spread ~78
    sampler.set_epoch(1)
    assert list(sampler) != batches
