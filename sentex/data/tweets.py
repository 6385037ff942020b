"""Reading and checking Kaggle-format tweet CSVs (``textID,text,selected_text,sentiment``).

Reading is strict about the *file* (it must exist, decode as UTF-8, and have the columns) and
forgiving about *rows*: in a labelled file, a row whose text is empty or whose ``selected_text``
is not inside its ``text`` cannot be learned from, so it is skipped and counted, unless ``strict``
is set. An unlabelled file (what ``sentex predict`` reads) never loses a row, because a
submission needs every ``textID``; empty texts are kept and counted. Every fatal problem in a
file is collected and reported together, so one run shows them all.

:func:`skip_reason` is that row policy, and :func:`read_for_scoring` applies it to a file whose
labels are optional (the demo app's upload), so that a labelled file is scored on exactly the
rows ``sentex test`` scores.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sentex.errors import DataError

log = logging.getLogger(__name__)

SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
REQUIRED_COLUMNS = ("textID", "text", "sentiment")
LABEL_COLUMN = "selected_text"
SAMPLE_PREFIX = "sentex:"
MAX_REPORTED = 10  # problems listed per file before "... and N more"

# A 100 KB tweet is absurd but must not crash the reader (csv's default limit is 128 KiB).
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class TweetTable:
    """Checked rows of one file, as columns, plus what was skipped and why."""

    path: str
    columns: dict[str, list[str]]
    skipped: dict[str, int] = field(default_factory=dict)
    duplicate_ids: int = 0
    empty_texts_kept: int = 0

    def __len__(self) -> int:
        return len(self.columns["textID"])

    @property
    def has_labels(self) -> bool:
        return LABEL_COLUMN in self.columns


def resolve_data_path(path: str | Path) -> Path:
    """Map ``sentex:<name>`` to a CSV shipped inside the package; other paths pass through."""
    text = str(path)
    if text.startswith(SAMPLE_PREFIX):
        return Path(str(resources.files("sentex") / "sample_data" / text[len(SAMPLE_PREFIX) :]))
    return Path(text).expanduser()


def read_tweets(
    path: str | Path, require_labels: bool, strict: bool = False, sentiment_optional: bool = False
) -> TweetTable:
    """Read and check a Kaggle-format CSV.

    Args:
        path: CSV file, or ``sentex:<file>`` for a sample shipped with the package.
        require_labels: whether ``selected_text`` must be present (train/val/test files).
        strict: turn skippable row problems into errors.
        sentiment_optional: the ``sentiment`` column may be missing, and a value empty or ``auto``
            (read as ``""``): a sentiment classifier will fill them in (``sentex predict --data.sentiment_model``).

    Returns:
        The usable rows as columns; leading/trailing spaces are kept as in the file.

    Raises:
        DataError: listing every fatal problem in the file.
    """
    name = str(path)
    header, records = parse_csv(resolve_data_path(path), name)
    return _check_rows(name, header, records, require_labels, strict, sentiment_optional)


def read_for_scoring(path: str | Path, strict: bool = False) -> TweetTable:
    """Read a CSV whose ``selected_text`` column is optional: scored if present, predicted if not.

    A file with ``selected_text`` is read exactly as ``sentex test`` reads its test file
    (``read_tweets(path, require_labels=True)``): rows :func:`skip_reason` names are skipped and
    counted, so a score over the returned rows is over the rows ``sentex test`` scores. A file
    without it is read as ``sentex predict`` reads one: every row kept.

    Args:
        path: CSV file, or ``sentex:<file>`` for a sample shipped with the package.
        strict: turn skippable row problems into errors.

    Raises:
        DataError: listing every fatal problem in the file.
    """
    name = str(path)
    header, records = parse_csv(resolve_data_path(path), name)
    return _check_rows(name, header, records, LABEL_COLUMN in header, strict)


def _check_rows(
    name: str,
    header: list[str],
    records: list[tuple[int, list[str]]],
    require_labels: bool,
    strict: bool,
    sentiment_optional: bool = False,
) -> TweetTable:
    """Check parsed rows against the columns and the row policy; see :func:`read_tweets`."""
    required = [c for c in REQUIRED_COLUMNS if not (sentiment_optional and c == "sentiment")]
    missing = [c for c in required + ([LABEL_COLUMN] if require_labels else []) if c not in header]
    if missing:
        found = ", ".join(header) if header else "nothing"
        hint = " (or pass --data.sentiment_model to predict the sentiment)" if "sentiment" in missing else ""
        raise DataError(f"{name}: missing column(s) {', '.join(missing)} (found: {found}){hint}")
    keep = [c for c in REQUIRED_COLUMNS + (LABEL_COLUMN,) if c in header]
    index = {c: header.index(c) for c in keep}
    keep = list(dict.fromkeys([*keep, "sentiment"]))  # a missing (optional) sentiment column reads as ""

    errors: list[str] = []
    skipped: dict[str, int] = {}
    columns: dict[str, list[str]] = {c: [] for c in keep}
    for line, record in records:
        if len(record) != len(header):
            errors.append(f"{name}: line {line}: expected {len(header)} fields, found {len(record)}")
            continue
        row = {c: record[i] for c, i in index.items()}
        row.setdefault("sentiment", "")
        if sentiment_optional and row["sentiment"].strip().lower() in ("", "auto"):
            row["sentiment"] = ""
        elif row["sentiment"] not in SENTIMENTS:
            errors.append(
                f"{name}: line {line}: field 'sentiment': unknown value {row['sentiment']!r}"
                f" (expected one of {', '.join(SENTIMENTS)})"
            )
            continue
        reason = skip_reason(row) if require_labels else None
        if reason is not None:
            if strict:
                errors.append(f"{name}: line {line}: {reason}")
            else:
                skipped[reason] = skipped.get(reason, 0) + 1
            continue
        for c in keep:
            columns[c].append(row[c])
    raise_problems(name, errors, len(columns["textID"]), len(records), skipped)

    table = TweetTable(name, columns, skipped, len(columns["textID"]) - len(set(columns["textID"])))
    table.empty_texts_kept = sum(not t.strip() for t in columns["text"])
    _warn_about(table)
    return table


def raise_problems(name: str, errors: list[str], usable: int, rows: int, skipped: dict[str, int]) -> None:
    """Raise one :class:`DataError` listing a file's fatal problems (the first few), or that no row was usable.

    >>> raise_problems("t.csv", [], 0, 2, {"empty text": 2})
    Traceback (most recent call last):
    ...
    sentex.errors.DataError: t.csv: no usable rows (2 data row(s), 2 empty text)
    """
    if not errors and not usable:
        why = "".join(f", {n} {reason}" for reason, n in sorted(skipped.items()))
        errors = [f"{name}: no usable rows ({rows} data row(s){why})"]
    if errors:
        more = f" ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise DataError("; ".join(errors[:MAX_REPORTED]) + more)


def parse_csv(path: Path, name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Decode (BOM-tolerant UTF-8) and split a CSV; returns the header and ``(line, fields)`` rows."""
    if not path.exists():
        raise DataError(f"{name}: file not found")
    if path.is_dir():
        raise DataError(f"{name}: is a directory, expected a CSV file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{name}: line {line}: not valid UTF-8 (byte {raw[err.start]:#04x}); re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{name}: file is empty")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
        records = []
        start = reader.line_num + 1
        for rec in reader:
            if rec:  # report the line a record starts on (a quoted newline makes records span lines)
                records.append((start, rec))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{name}: line {reader.line_num}: malformed CSV ({err})") from None
    return header, records


def skip_reason(row: Mapping[str, str]) -> str | None:
    """Why a labelled row can be neither learned from nor scored, or ``None`` when it is usable.

    The one row policy of every labelled file (``sentex fit``/``validate``/``test``, ``sentex
    bench`` and the app's labelled uploads): a tweet with no text, an empty ``selected_text`` or a
    ``selected_text`` that is not a substring of the text.

    >>> skip_reason({"text": "so happy", "selected_text": "happy"}) is None
    True
    >>> skip_reason({"text": "  ", "selected_text": "x"}), skip_reason({"text": "so happy", "selected_text": "sad"})
    ('empty text', 'selected_text not found in text')
    """
    if not row["text"].strip():
        return "empty text"
    label = row.get(LABEL_COLUMN)
    if label is not None:
        if not label.strip():
            return "empty selected_text"
        if label not in row["text"]:
            return "selected_text not found in text"
    return None


def _warn_about(table: TweetTable) -> None:
    if table.skipped:
        detail = ", ".join(f"{n} {why}" for why, n in sorted(table.skipped.items()))
        log.warning(
            "%s: skipped %d row(s): %s (pass strict=True to fail instead)",
            table.path,
            sum(table.skipped.values()),
            detail,
        )
    if table.duplicate_ids:
        log.warning("%s: %d duplicate textID(s); rows are kept", table.path, table.duplicate_ids)
    if table.empty_texts_kept:
        log.warning(
            "%s: %d row(s) with empty text are kept so every textID gets a prediction",
            table.path,
            table.empty_texts_kept,
        )
