"""What the demo page does when its model is a classifier (``sentex app --model <classifier folder or .ckpt>``).

Text in, label and per-class probabilities out (``Classifier.predict_proba``): one text, or a CSV with
a ``text`` column, read by the classifier's own reader (:func:`sentex.data.classification.read_labelled_texts`).
A CSV with a ``label`` column (or, for a Kaggle tweet file, ``sentiment``) is scored by accuracy; its
labels must be the model's. Row ids come from a ``textID`` or ``id`` column, else the line number. The
results CSV has ``id``, ``label`` and ``prediction`` columns, the per-row format ``sentex compare`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sentex.app.csvfiles import csv_bytes, read_uploaded
from sentex.data.classification import LabelledTexts, read_labelled_texts
from sentex.data.tweets import parse_csv
from sentex.errors import DataError

# Where a CSV's gold label and row id may be, in order of preference.
GOLD_COLUMNS = ("label", "sentiment")
ID_COLUMNS = ("textID", "id")


class Classifier(Protocol):
    """The part of :class:`sentex.deploy.sentiment.Classifier` the page uses."""

    family: str
    info: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        """Class names, in the order of :meth:`predict_proba`'s columns."""
        ...

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        """``(len(texts), classes)`` probabilities (a tensor)."""
        ...


def probability_column(label: str) -> str:
    """The results column holding the probability of ``label``.

    >>> probability_column("negative")
    'p_negative'
    """
    return f"p_{label}"


@dataclass(frozen=True)
class Classification:
    """One text's label, every class's probability (in the model's label order) and the latency in ms."""

    label: str
    probabilities: dict[str, float]
    ms: float

    def table(self) -> list[dict[str, Any]]:
        """The probabilities as rows for the page's table.

        >>> Classification("b", {"a": 0.25, "b": 0.75}, 1.0).table()
        [{'label': 'a', 'probability': 0.25}, {'label': 'b', 'probability': 0.75}]
        """
        return [{"label": name, "probability": p} for name, p in self.probabilities.items()]


def best_labels(labels: Sequence[str], probs: Any) -> list[str]:
    """The most probable label of each row of ``probs`` (what ``Classifier.classify`` answers)."""
    return [labels[i] for i in probs.argmax(dim=-1).tolist()]


def classify_one(classifier: Classifier, text: str) -> Classification:
    """The label and class probabilities of one text, timed.

    Raises:
        DataError: an empty text.
    """
    if not text.strip():
        raise DataError("the text is empty; type one first")
    start = time.perf_counter()
    probs = classifier.predict_proba([text], batch_size=1)
    ms = 1000 * (time.perf_counter() - start)
    labels = classifier.labels
    return Classification(best_labels(labels, probs)[0], dict(zip(labels, probs[0].tolist())), ms)


@dataclass
class ClassifyBatchResult:
    """Labels and probabilities for an uploaded file; accuracy over the rows that have a gold label.

    Each row has ``id``, ``text``, ``prediction`` and one ``p_<label>`` per class; with ``has_gold`` (some
    row of the file has a gold label) also ``label`` and ``correct`` (``None`` where the label is empty).
    """

    rows: list[dict[str, Any]]
    labels: list[str]
    has_gold: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float | None:
        """Share of the labelled rows whose prediction is their label, or ``None`` without labels."""
        scored = [r["correct"] for r in self.rows if r.get("label")]
        return sum(scored) / len(scored) if scored else None

    def notes(self) -> list[str]:
        """Warnings worth showing next to the results: rows skipped, empty texts kept, rows not scored."""
        out = [f"{n} row(s) skipped: {why}" for why, n in sorted(self.skipped.items())]
        empty = sum(not r["text"].strip() for r in self.rows)
        if empty:
            out.append(f"{empty} row(s) with empty text kept; they are classified all the same")
        unscored = sum(not r.get("label") for r in self.rows)
        if self.has_gold and unscored:
            out.append(f"{unscored} row(s) without a label are not in the accuracy")
        return out

    def columns(self) -> list[str]:
        """The results' columns, in the order the table and the CSV show them."""
        gold = ["label"] if self.has_gold else []
        return ["id", "text", *gold, "prediction", *map(probability_column, self.labels)] + (
            ["correct"] if self.has_gold else []
        )


def read_text_upload(name: str, data: bytes, labels: Sequence[str]) -> LabelledTexts:
    """Check an uploaded CSV of texts: a ``text`` column, optional gold labels (which must be among ``labels``).

    Every row is kept (an empty text too: every id gets an answer), as for a ``sentex predict`` file.

    Raises:
        DataError: a missing ``text`` column, bad encoding, an empty file, unknown labels (one line, naming the upload).
    """

    def read(path: Path) -> LabelledTexts:
        header, _ = parse_csv(path, str(path))
        gold = next((c for c in GOLD_COLUMNS if c in header), GOLD_COLUMNS[0])
        ids = next((c for c in ID_COLUMNS if c in header), None)
        return read_labelled_texts(str(path), "text", gold, ids, labels, require_labels=False)

    table = read_uploaded(name, data, read)
    table.path = name
    return table


def run_classify_batch(
    classifier: Classifier,
    table: LabelledTexts,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> ClassifyBatchResult:
    """Classify every row, reporting ``progress(done, total)`` after each chunk."""
    cols, labels = table.columns, classifier.labels
    total, has_gold = len(cols["text"]), any(cols["label"])
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for lo in range(0, total, batch_size):
        hi = min(lo + batch_size, total)
        probs = classifier.predict_proba(cols["text"][lo:hi], batch_size)
        for i, pred, row_probs in zip(range(lo, hi), best_labels(labels, probs), probs.tolist()):
            row = {"id": cols["id"][i], "text": cols["text"][i], "prediction": pred}
            row.update({probability_column(name): p for name, p in zip(labels, row_probs)})
            if has_gold:
                gold = cols["label"][i]
                row.update(label=gold, correct=pred == gold if gold else None)
            rows.append(row)
        if progress is not None:
            progress(hi, total)
    return ClassifyBatchResult(rows, list(labels), has_gold, dict(table.skipped), time.perf_counter() - start)


def classify_results_csv(result: ClassifyBatchResult) -> bytes:
    """Every column of the results (see :meth:`ClassifyBatchResult.columns`) as CSV bytes."""
    return csv_bytes(result.columns(), result.rows)
