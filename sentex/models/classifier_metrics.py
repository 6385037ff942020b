"""Classification metrics: the torchmetrics a classifier logs, and the same numbers from a list of rows.

The torchmetrics objects accumulate over batches and processes (Lightning syncs their states);
:func:`scores_from_rows` computes the identical definitions from a finished per-row report, where
the Markdown report needs them. Definitions (``C`` classes, ``n_c`` gold rows of class ``c``):

* ``accuracy``: share of rows whose most probable class is the gold class;
* ``precision_macro`` / ``recall_macro`` / ``f1_macro``: the per-class score averaged over classes
  (a class never predicted has precision 0, as torchmetrics and scikit-learn count it);
* ``*_weighted``: the per-class score averaged with weights ``n_c``;
* ``auroc``: one-vs-rest ROC AUC of each class's probability, averaged over classes (macro).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.functional.classification import multiclass_auroc

METRIC_NAMES = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "auroc",
)


def classification_metrics(prefix: str, num_classes: int) -> MetricCollection:
    """``<prefix>accuracy``, precision/recall/F1 macro and weighted, and macro ``auroc``; update with
    ``(probs (n, C), target (n,))``."""
    c = num_classes
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(c, average="micro"),
            "precision_macro": MulticlassPrecision(c, average="macro"),
            "recall_macro": MulticlassRecall(c, average="macro"),
            "f1_macro": MulticlassF1Score(c, average="macro"),
            "precision_weighted": MulticlassPrecision(c, average="weighted"),
            "recall_weighted": MulticlassRecall(c, average="weighted"),
            "f1_weighted": MulticlassF1Score(c, average="weighted"),
            "auroc": MulticlassAUROC(c, average="macro"),
        },
        prefix=prefix,
    )


def confusion_metric(num_classes: int) -> MulticlassConfusionMatrix:
    """Counts: ``[gold class, predicted class]``."""
    return MulticlassConfusionMatrix(num_classes)


def confusion_counts(gold: Sequence[int], pred: Sequence[int], num_classes: int) -> list[list[int]]:
    """``matrix[g][p]``: rows of gold class ``g`` predicted as ``p``.

    >>> confusion_counts([0, 0, 1, 2], [0, 1, 1, 1], 3)
    [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    """
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for g, p in zip(gold, pred):
        matrix[g][p] += 1
    return matrix


def per_class_scores(matrix: Sequence[Sequence[int]]) -> list[tuple[float, float, float, int]]:
    """``(precision, recall, f1, support)`` of each class from a confusion matrix (0 where undefined).

    >>> per_class_scores([[1, 1], [0, 2]])
    [(1.0, 0.5, 0.6666666666666666, 2), (0.6666666666666666, 1.0, 0.8, 2)]
    """
    out = []
    for c in range(len(matrix)):
        tp = matrix[c][c]
        predicted = sum(row[c] for row in matrix)
        support = sum(matrix[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append((precision, recall, f1, support))
    return out


def scores_from_rows(gold: Sequence[int], probs: Sequence[Sequence[float]], num_classes: int) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` from per-row gold classes and class probabilities.

    >>> s = scores_from_rows([0, 0, 1, 1], [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]], 2)
    >>> s["accuracy"], round(s["f1_macro"], 4), s["auroc"]
    (0.75, 0.7333, 1.0)
    """
    pred = [max(range(num_classes), key=lambda c, p=p: p[c]) for p in probs]
    matrix = confusion_counts(gold, pred, num_classes)
    per_class = per_class_scores(matrix)
    total = max(len(gold), 1)
    scores = {"accuracy": sum(matrix[c][c] for c in range(num_classes)) / total}
    for i, name in enumerate(("precision", "recall", "f1")):
        scores[f"{name}_macro"] = sum(s[i] for s in per_class) / num_classes
        scores[f"{name}_weighted"] = sum(s[i] * s[3] for s in per_class) / total
    target = torch.tensor(list(gold), dtype=torch.long)
    scores["auroc"] = float(multiclass_auroc(torch.tensor(list(probs)), target, num_classes, average="macro"))
    return scores


def confusion_markdown(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """A Markdown confusion matrix: one row per gold class, one column per predicted class.

    >>> print(confusion_markdown([[2, 1], [0, 3]], ["neg", "pos"]))
    | gold / predicted | neg | pos | recall |
    |---|---:|---:|---:|
    | neg | 2 | 1 | 0.667 |
    | pos | 0 | 3 | 1.000 |
    """
    lines = ["| gold / predicted | " + " | ".join(labels) + " | recall |", "|---|" + "---:|" * (len(labels) + 1)]
    for c, (name, row) in enumerate(zip(labels, matrix)):
        support = sum(row)
        recall = row[c] / support if support else 0.0
        lines.append(f"| {name} | " + " | ".join(str(n) for n in row) + f" | {recall:.3f} |")
    return "\n".join(lines)
