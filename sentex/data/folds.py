"""Seeded K-fold assignment stratified by sentiment, for out-of-fold predictions and fold ensembles."""

from __future__ import annotations

import random
from collections.abc import Sequence


def stratified_folds(labels: Sequence[str], num_folds: int, seed: int) -> list[int]:
    """The fold (``0 .. num_folds - 1``) of every row: each label's rows are shuffled and dealt round-robin.

    Every row gets exactly one fold, folds differ in size by at most one row per label, and the
    assignment depends only on the labels, ``num_folds`` and ``seed``.

    >>> folds = stratified_folds(["pos", "neg", "pos", "neg", "pos", "neg"], 3, seed=0)
    >>> sorted(folds), [sorted(folds[i] for i in (0, 2, 4))]
    ([0, 0, 1, 1, 2, 2], [[0, 1, 2]])
    """
    if num_folds < 2:
        raise ValueError(f"need at least 2 folds, got {num_folds}")
    rng = random.Random(seed)
    folds = [0] * len(labels)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    offset = 0
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        for k, i in enumerate(rows):
            # Continue the deal where the previous label stopped, so small labels do not all land in fold 0.
            folds[i] = (offset + k) % num_folds
        offset = (offset + len(rows)) % num_folds
    return folds
