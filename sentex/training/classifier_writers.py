"""What ``sentex test`` writes for a sentiment classifier, beside its TensorBoard logs.

* ``test_predictions.csv``: one row per text: ``id``, ``text``, ``label`` (gold), ``prediction``,
  ``correct``, ``confidence`` (the predicted class's probability), ``prob_<label>`` for every class,
  and ``cues`` (the text's cues of :mod:`sentex.training.error_cues`, ``;``-joined). ``sentex compare``
  reads two such files.
* ``test_confusion_matrix.png``: the confusion matrix (needs matplotlib, the ``bench`` extra).
* ``test_report.md``: the metrics, per-class precision/recall/F1, the confusion matrix, the error
  rate per cue, and the most confident mistakes.

Every number is computed from the rows themselves (the same definitions as the logged torchmetrics),
and every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from sentex.io.atomic import atomic_path
from sentex.models.classifier_metrics import (
    METRIC_NAMES,
    confusion_counts,
    confusion_markdown,
    per_class_scores,
    scores_from_rows,
)
from sentex.training.error_cues import CUES, cue_table, text_cues
from sentex.training.writers import TEST_REPORT, _dataset_size, gather_per_process, undo_distributed_split, write_csv

log = logging.getLogger(__name__)

TEST_CONFUSION = "test_confusion_matrix.png"
TEST_MARKDOWN = "test_report.md"
SHOWN_MISTAKES = 20


def report_rows(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """The CSV rows of ``test_predictions.csv`` from the classifier's test rows (``probs`` expanded).

    >>> report_rows([{"id": "1", "text": "not bad", "label": "pos", "prediction": "neg", "probs": [0.6, 0.4]}],
    ...             ["neg", "pos"])[0]  # doctest: +NORMALIZE_WHITESPACE
    {'id': '1', 'text': 'not bad', 'label': 'pos', 'prediction': 'neg', 'correct': False, 'confidence': 0.6,
     'prob_neg': 0.6, 'prob_pos': 0.4, 'cues': 'negation'}
    """
    out = []
    for row in rows:
        probs = row["probs"]
        item = {k: row[k] for k in ("id", "text", "label", "prediction")}
        item["correct"] = row["prediction"] == row["label"]
        item["confidence"] = max(probs)
        item.update({f"prob_{name}": p for name, p in zip(labels, probs)})
        item["cues"] = ";".join(text_cues(row["text"]))
        out.append(item)
    return out


def markdown_report(rows: list[dict[str, Any]], labels: list[str]) -> str:
    """``test_report.md``: metrics, per-class scores, confusion matrix, error rate per cue, confident mistakes."""
    gold = [labels.index(r["label"]) for r in rows]
    probs = [[r[f"prob_{name}"] for name in labels] for r in rows]
    scores = scores_from_rows(gold, probs, len(labels))
    matrix = confusion_counts(gold, [labels.index(r["prediction"]) for r in rows], len(labels))
    lines = [f"# Classifier test report: {len(rows)} rows", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {name} | {scores[name]:.4f} |" for name in METRIC_NAMES]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name, (p, r, f1, n) in zip(labels, per_class_scores(matrix)):
        lines.append(f"| {name} | {p:.4f} | {r:.4f} | {f1:.4f} | {n} |")
    lines += ["", "## Confusion matrix", "", confusion_markdown(matrix, labels), ""]
    lines += [
        "## Errors by cue",
        "",
        "Cues (documented in `sentex/training/error_cues.py`): " + ", ".join(CUES) + ". A row can have several;",
        "`none` is a row with none. `vs all rows` is the cue's error rate over the overall error rate.",
        "",
        cue_table(rows),
        "",
    ]
    mistakes = sorted((r for r in rows if not r["correct"]), key=lambda r: -r["confidence"])[:SHOWN_MISTAKES]
    lines += [f"## The {len(mistakes)} most confident mistakes", ""]
    if mistakes:
        lines += ["| id | gold | predicted | confidence | cues | text |", "|---|---|---|---:|---|---|"]
        for r in mistakes:
            text = " ".join(r["text"].split()).replace("|", "\\|")
            text = text if len(text) <= 200 else text[:197] + "..."
            lines.append(
                f"| {r['id']} | {r['label']} | {r['prediction']} | {r['confidence']:.3f} | {r['cues']} | {text} |"
            )
    return "\n".join(lines) + "\n"


class ClassifierReportWriter(Callback):
    """After ``sentex test`` of a classifier: the per-row CSV, the confusion-matrix PNG and the Markdown report.

    Acts on modules with ``classified_rows`` (``SentimentClassifier``); extraction models are
    :class:`~sentex.training.writers.TestReportWriter`'s.
    """

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "classified_rows"):
            return
        parts = gather_per_process(list(pl_module.classified_rows))
        rows = undo_distributed_split(parts, _dataset_size(trainer.test_dataloaders, sum(map(len, parts))))
        log_dir = Path(trainer.log_dir or ".")  # a broadcast under DDP: every process must ask
        if not trainer.is_global_zero or not rows:
            return
        labels = list(pl_module.label_names)
        table = report_rows(rows, labels)
        write_csv(log_dir / TEST_REPORT, list(table[0]), table)
        report = markdown_report(table, labels)
        with atomic_path(log_dir / TEST_MARKDOWN) as tmp:
            Path(tmp).write_text(report, encoding="utf-8")
        rank_zero_info(f"sentex: wrote {log_dir / TEST_REPORT} and {log_dir / TEST_MARKDOWN}")
        gold = [labels.index(r["label"]) for r in table]
        matrix = confusion_counts(gold, [labels.index(r["prediction"]) for r in table], len(labels))
        try:
            from sentex.models.confusion_image import write_confusion_png

            write_confusion_png(matrix, labels, log_dir / TEST_CONFUSION, f"test: {len(table)} rows")
            rank_zero_info(f"sentex: wrote {log_dir / TEST_CONFUSION}")
        except ImportError:
            log.warning("matplotlib is not installed: no %s (pip install matplotlib)", TEST_CONFUSION)
