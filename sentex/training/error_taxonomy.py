"""Where the remaining error is: each wrongly answered row of ``sentex test`` put in one class.

Classes (word sets lower-cased as in :func:`sentex.metrics.jaccard`; first match wins):

* ``neutral_rule``: a neutral row answered with the whole tweet (the neutral rule) whose label is shorter;
* ``disjoint``: no word in common with the label;
* ``over_extraction``: the answer holds every label word and more;
* ``under_extraction``: every answer word is a label word, but some label words are missing;
* ``shifted_boundary``: the answer overlaps the label with extra words on one side and missing
  ones on the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sentex.metrics import jaccard

CLASSES = ("neutral_rule", "disjoint", "over_extraction", "under_extraction", "shifted_boundary")


def error_class(text: str, sentiment: str, prediction: str, gold: str) -> str | None:
    """The error class of one answer; ``None`` when it is right (Jaccard 1).

    >>> error_class("so happy today", "positive", "so happy today", "happy")
    'over_extraction'
    >>> error_class("so happy today", "positive", "happy", "so happy")
    'under_extraction'
    >>> error_class("so happy today", "positive", "happy today", "so happy")
    'shifted_boundary'
    >>> error_class("so happy today", "positive", "today", "happy")
    'disjoint'
    >>> error_class(" fine day ", "neutral", "fine day", "fine")
    'neutral_rule'
    >>> error_class("so happy", "positive", "So Happy", "so happy") is None
    True
    """
    if jaccard(prediction, gold) == 1.0:
        return None
    pred, label = set(prediction.lower().split()), set(gold.lower().split())
    if sentiment == "neutral" and prediction.split() == text.split():
        return "neutral_rule"
    if not pred & label:
        return "disjoint"
    if pred > label:
        return "over_extraction"
    if pred < label:
        return "under_extraction"
    return "shifted_boundary"


def taxonomy_table(rows: Iterable[dict[str, Any]]) -> str:
    """A Markdown table of test-report rows (with ``jaccard`` and ``error_class``) by error class.

    Per class: rows, share of all rows, Jaccard lost (sum of ``1 - J``) and that loss as a share of
    the mean Jaccard, i.e. how much the score would rise if that class were answered perfectly.

    >>> print(taxonomy_table([{"jaccard": 0.5, "error_class": "over_extraction"}, {"jaccard": 1.0, "error_class": ""}]))
    | class | rows | share of rows | Jaccard lost | score if fixed |
    |---|---:|---:|---:|---:|
    | over_extraction | 1 | 0.500 | 0.5000 | +0.2500 |
    | all errors | 1 | 0.500 | 0.5000 | +0.2500 |
    """
    rows = list(rows)
    total = max(len(rows), 1)
    lines = ["| class | rows | share of rows | Jaccard lost | score if fixed |", "|---|---:|---:|---:|---:|"]
    all_n, all_lost = 0, 0.0
    for name in CLASSES:
        hit = [r for r in rows if r["error_class"] == name]
        if not hit:
            continue
        lost = sum(1.0 - float(r["jaccard"]) for r in hit)
        all_n, all_lost = all_n + len(hit), all_lost + lost
        lines.append(f"| {name} | {len(hit)} | {len(hit) / total:.3f} | {lost:.4f} | +{lost / total:.4f} |")
    lines.append(f"| all errors | {all_n} | {all_n / total:.3f} | {all_lost:.4f} | +{all_lost / total:.4f} |")
    return "\n".join(lines)
