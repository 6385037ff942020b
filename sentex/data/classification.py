"""Labelled texts for the sentiment classifier: ``text,label`` CSVs, or the Kaggle tweets' ``sentiment`` column.

Two readers, one row shape (``id``, ``text``, ``label``):

* ``file_format: csv`` reads any UTF-8 CSV with a text and a label column (names set by
  ``text_column`` / ``label_column``; an optional ``id_column``, else the row's line number is its
  id). A missing column, an empty or unknown label, or a row with the wrong number of fields is
  fatal, every problem of a file in one line; a row with an empty text is skipped and counted
  (fatal under ``strict``), except in a predict file, which keeps every row, as in the tweet files.
* ``file_format: tweets`` reads Kaggle tweet files through :func:`sentex.data.tweets.read_for_scoring`,
  so a file with ``selected_text`` keeps exactly the rows the extraction data module keeps, and the
  seeded validation split (or fold) is the very one extraction runs validate on.

The label names are, in order of precedence: ``class_names`` as configured, the model's (a checkpoint
records them), the three tweet sentiments, or the sorted distinct labels of the training file.
Every evaluation file is checked against them before anything runs.

Batching, the seeded training order, mid-epoch resume and DDP sharding are the tweet data
module's (this class extends :class:`~sentex.data.datamodule.TweetDataModule`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from datasets import Dataset

from sentex.data.datamodule import TweetDataModule
from sentex.data.tweets import SENTIMENTS, parse_csv, raise_problems, read_for_scoring, resolve_data_path
from sentex.errors import DataError

log = logging.getLogger(__name__)

FILE_FORMATS = ("csv", "tweets")


@dataclass
class LabelledTexts:
    """Checked rows of one file as columns (``id``, ``text``, ``label``; label ``""`` when unlabelled)."""

    path: str
    columns: dict[str, list[str]]
    skipped: dict[str, int] = field(default_factory=dict)


def read_labelled_texts(
    path: str,
    text_column: str = "text",
    label_column: str = "label",
    id_column: str | None = None,
    labels: Sequence[str] | None = None,
    require_labels: bool = True,
    strict: bool = False,
) -> LabelledTexts:
    """Read and check a ``text,label`` CSV.

    Args:
        path: the CSV (``sentex:<file>`` names a file shipped with sentex).
        text_column: the column holding the text.
        label_column: the column holding the class name.
        id_column: a column of row ids; ``None`` uses each row's line number.
        labels: allowed class names; ``None`` allows any non-empty label.
        require_labels: whether the label column must be there (train/validation/test files).
        strict: make rows with an empty text fatal instead of skipped.

    Raises:
        DataError: listing every fatal problem of the file in one line.
    """
    name = str(path)
    header, records = parse_csv(resolve_data_path(path), name)
    wanted = [text_column] + ([label_column] if require_labels else []) + ([id_column] if id_column else [])
    missing = [c for c in wanted if c not in header]
    if missing:
        found = ", ".join(header) if header else "nothing"
        raise DataError(f"{name}: missing column(s) {', '.join(missing)} (found: {found})")
    text_i = header.index(text_column)
    label_i = header.index(label_column) if label_column in header else None
    id_i = header.index(id_column) if id_column else None
    allowed = set(labels) if labels is not None else None
    errors: list[str] = []
    skipped: dict[str, int] = {}
    columns: dict[str, list[str]] = {"id": [], "text": [], "label": []}
    for line, record in records:
        if len(record) != len(header):
            errors.append(f"{name}: line {line}: expected {len(header)} fields, found {len(record)}")
            continue
        label = record[label_i].strip() if label_i is not None else ""
        if label_i is not None and (require_labels or label):
            if not label:
                errors.append(f"{name}: line {line}: field {label_column!r}: empty label")
                continue
            if allowed is not None and label not in allowed:
                expected = ", ".join(labels or ())
                errors.append(
                    f"{name}: line {line}: field {label_column!r}: unknown value {label!r} (expected one of {expected})"
                )
                continue
        if not record[text_i].strip() and require_labels:  # a predict file keeps it: every id gets an answer
            if strict:
                errors.append(f"{name}: line {line}: field {text_column!r}: empty text")
            else:
                skipped["empty text"] = skipped.get("empty text", 0) + 1
            continue
        columns["id"].append(record[id_i] if id_i is not None else str(line))
        columns["text"].append(record[text_i])
        columns["label"].append(label)
    raise_problems(name, errors, len(columns["id"]), len(records), skipped)
    if skipped:
        detail = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        log.warning("%s: skipped %d row(s): %s (pass strict=True to fail instead)", name, sum(skipped.values()), detail)
    empty_kept = sum(not t.strip() for t in columns["text"])
    if empty_kept:
        log.warning("%s: %d row(s) with empty text are kept so every id gets a prediction", name, empty_kept)
    return LabelledTexts(name, columns, skipped)


class ClassificationDataModule(TweetDataModule):
    """Texts and class labels for ``SentimentClassifier``, for every Lightning stage.

    Args:
        train_path: labelled CSV to train on.
        val_path: labelled CSV to validate on; if unset, ``val_fraction`` of ``train_path`` is held out.
        test_path: labelled CSV for ``sentex test``; defaults to the validation rows.
        predict_path: CSV (labels optional) for ``sentex predict``.
        file_format: ``csv`` (``text_column`` / ``label_column`` / ``id_column``) or ``tweets``
            (Kaggle tweet files: ``textID``, ``text``, ``sentiment``; see the module docstring).
        text_column: the text column of a ``csv`` file.
        label_column: the label column of a ``csv`` file.
        id_column: the id column of a ``csv`` file (``None``: the line number).
        class_names: the class names in output order (default: see the module docstring; named apart
            from the model's ``labels`` because Lightning logs both modules' settings in one table).
        val_fraction: share of ``train_path`` held out when there is no ``val_path``.
        split_seed: seed of that split (the tweet data module's split for the same file and seed).
        num_folds: validate on fold ``fold`` of this many label-stratified folds instead.
        fold: the validation fold when ``num_folds`` is set.
        batch_size: training batch size.
        eval_batch_size: batch size for validation/test/predict (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        strict: fail on rows that are otherwise skipped and counted (empty text).
        max_train_rows: use only the first N training rows (after the split).
        bucket_by_length: batch training rows of similar length together (single process only).
    """

    stratify_column = "label"

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        file_format: str = "csv",
        text_column: str = "text",
        label_column: str = "label",
        id_column: str | None = None,
        class_names: list[str] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        num_folds: int | None = None,
        fold: int = 0,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        strict: bool = False,
        max_train_rows: int | None = None,
        bucket_by_length: bool = False,
    ) -> None:
        if file_format not in FILE_FORMATS:
            raise DataError(f"data.file_format must be one of {', '.join(FILE_FORMATS)}, got {file_format!r}")
        if class_names is not None and (len(set(class_names)) != len(class_names) or len(class_names) < 2):
            raise DataError(f"data.class_names must name at least 2 distinct classes, got {class_names}")
        super().__init__(
            train_path=train_path, val_path=val_path, test_path=test_path, predict_path=predict_path,
            val_fraction=val_fraction, split_seed=split_seed, num_folds=num_folds, fold=fold, batch_size=batch_size,
            eval_batch_size=eval_batch_size, num_workers=num_workers, strict=strict, max_train_rows=max_train_rows,
            bucket_by_length=bucket_by_length,
        )  # fmt: skip
        self.save_hyperparameters()
        self.label_names: list[str] | None = list(class_names) if class_names else None

    # --- which labels ---------------------------------------------------------------------
    def _known_labels(self) -> list[str] | None:
        """Labels fixed before any file is read: configured, the model's (from its checkpoint), or the tweets'."""
        if self.label_names:
            return self.label_names
        module = self.trainer.lightning_module if self.trainer is not None else None
        model_labels = getattr(module, "label_names", None)
        if model_labels:
            return list(model_labels)
        return list(SENTIMENTS) if self.hparams.file_format == "tweets" else None

    def setup(self, stage: str) -> None:
        self.label_names = self._known_labels()
        super().setup(stage)
        if self.label_names is None:  # only a predict file was read: no label set to learn from
            raise DataError("data.class_names: no labelled file to take the class names from; set --data.class_names")

    # --- reading ----------------------------------------------------------------------------
    def _load(self, path: str | None, option: str, labels: bool) -> Dataset:
        if not path:
            raise DataError(f"--{option} is required for this command")
        hp = self.hparams
        if hp.file_format == "tweets":
            columns = self._read_tweets(path, labels)
        else:
            columns = read_labelled_texts(
                path, hp.text_column, hp.label_column, hp.id_column, self.label_names, labels, hp.strict
            ).columns
        if labels and self.label_names is None:
            # The first labelled file read (the training file, or the one split into train and validation).
            self.label_names = sorted(set(columns["label"]))
            if len(self.label_names) < 2:
                raise DataError(f"{path}: found only the label(s) {self.label_names}; a classifier needs at least 2")
        return Dataset.from_dict(columns)

    def _read_tweets(self, path: str, labels: bool) -> dict[str, list[str]]:
        """A Kaggle tweet file as classifier rows; unknown sentiments are the tweet reader's errors."""
        hp = self.hparams
        if not labels:  # a predict file needs no sentiment column
            return read_labelled_texts(path, "text", "sentiment", "textID", None, False, hp.strict).columns
        table = read_for_scoring(path, hp.strict)
        unknown = sorted(set(table.columns["sentiment"]) - set(self.label_names or SENTIMENTS))
        if unknown:
            raise DataError(
                f"{path}: field 'sentiment': value(s) {', '.join(map(repr, unknown))} are not among the labels"
                f" {', '.join(self.label_names or SENTIMENTS)}"
            )
        # Without selected_text the tweet reader keeps empty texts (a submission needs every id); a
        # classifier cannot learn from or be scored on them.
        keep = [i for i, t in enumerate(table.columns["text"]) if t.strip()]
        if len(keep) < len(table):
            log.warning("%s: skipped %d row(s) with empty text", path, len(table) - len(keep))
        return {
            "id": [table.columns["textID"][i] for i in keep],
            "text": [table.columns["text"][i] for i in keep],
            "label": [table.columns["sentiment"][i] for i in keep],
        }

    def _training_rows(self, train: Dataset) -> Dataset:
        n = self.hparams.max_train_rows
        return train.select(range(min(len(train), n))) if n else train
