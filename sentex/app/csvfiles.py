"""CSV files in and out of the demo page: uploads checked by sentex's readers (errors name the upload, not
a temporary file), and result tables as CSV bytes for the download buttons."""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sentex.data.tweets import LABEL_COLUMN, TweetTable, parse_csv, read_for_scoring, read_tweets
from sentex.errors import DataError

T = TypeVar("T")
SENTIMENT_HINT = "start the app with --sentiment_model to predict missing sentiments"


def read_upload(name: str, data: bytes, sentiment_optional: bool = False) -> TweetTable:
    """Check an uploaded Kaggle-format CSV with the same rules as ``sentex test`` or ``sentex predict``.

    One row policy for every labelled file (:func:`sentex.data.tweets.read_for_scoring`): with a
    ``selected_text`` column, rows ``sentex test`` skips (empty text, empty phrase, phrase not in the tweet) are
    skipped and counted here too, so the page's Jaccard is over the same rows as ``sentex test``'s;
    without it, every row is kept, as by ``sentex predict``.

    Args:
        name: the upload's file name, used in messages.
        data: the file's bytes.
        sentiment_optional: the ``sentiment`` column may be missing and its values empty or ``auto``
            (read as ``""``, for the sentiment model to fill in); only with a sentiment model.

    Raises:
        DataError: wrong columns, bad encoding, empty file, bad rows (one message, all problems).
    """

    def read(path: Path) -> TweetTable:
        if not sentiment_optional:
            return read_for_scoring(path)
        # read_for_scoring's policy (labels iff the file has them), with sentiments optional.
        header, _ = parse_csv(path, str(path))
        return read_tweets(path, require_labels=LABEL_COLUMN in header, sentiment_optional=True)

    try:
        table = read_uploaded(name, data, read)
    except DataError as err:
        raise DataError(str(err) if sentiment_optional else with_sentiment_hint(str(err))) from None
    table.path = name
    return table


def read_uploaded(name: str, data: bytes, reader: Callable[[Path], T]) -> T:
    """``reader`` run on the upload's bytes; its errors name the upload instead of the temporary file.

    The readers work on paths, so the bytes go to a temporary file first.
    """
    with tempfile.TemporaryDirectory(prefix="sentex-upload-") as folder:
        path = Path(folder) / "upload.csv"
        path.write_bytes(data)
        try:
            return reader(path)
        except DataError as err:
            raise DataError(str(err).replace(str(path), name)) from None


def with_sentiment_hint(message: str) -> str:
    """A reader's message about missing sentiments, pointing at the app's option instead of ``sentex predict``'s.

    >>> with_sentiment_hint("a.csv: missing column(s) sentiment (found: text) (or pass --data.sentiment_model to x)")
    'a.csv: missing column(s) sentiment (found: text) (or start the app with --sentiment_model to x)'
    >>> with_sentiment_hint("a.csv: line 2: field 'sentiment': unknown value ' Auto' (expected a, b)")
    "a.csv: line 2: field 'sentiment': unknown value ' Auto' (expected a, b); start the app with --sentiment_model \
to predict missing sentiments"
    """
    message = message.replace("pass --data.sentiment_model", "start the app with --sentiment_model")
    message = message.replace("--data.sentiment_model", "--sentiment_model")
    empty = re.search(r"field 'sentiment': unknown value '\s*(auto)?\s*'", message, re.IGNORECASE)
    if empty and "--sentiment_model" not in message:
        message += f"; {SENTIMENT_HINT}"
    return message


def csv_bytes(fieldnames: Sequence[str], rows: list[dict[str, Any]]) -> bytes:
    """``rows`` as UTF-8 CSV with the columns ``fieldnames`` (other keys left out)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
