"""``sentex compare A.csv B.csv``: are two models' per-row results different beyond chance (McNemar's exact test)?

Both files are per-row prediction files of the same rows, as ``sentex test`` writes them
(``test_predictions.csv``):

* classifier reports (``label``, ``prediction``): a row is right when the prediction is the label;
* extraction reports (``selected_text``, ``prediction``): a row is right when the word-level
  Jaccard of prediction and gold is at least ``--threshold`` (default 1.0: the same word set).

Rows are matched on their id (``--id_column``; default ``textID``, else ``id``), so the order of
the files does not matter; the files must hold the same ids, each once, with the same gold answer.
The 2x2 table and the test are printed as Markdown (``--out`` also writes them to a file).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sentex.data.tweets import parse_csv, resolve_data_path
from sentex.errors import SentexError
from sentex.evaluation.mcnemar import Contingency, contingency, mcnemar_exact
from sentex.io.atomic import atomic_path
from sentex.metrics import jaccard

ID_COLUMNS = ("textID", "id")
KINDS = {"classifier": "label", "extraction": "selected_text"}  # kind -> gold column


@dataclass
class PredictionFile:
    """One file's rows: id -> (gold, prediction), and which kind of report it is."""

    path: str
    kind: str
    rows: dict[str, tuple[str, str]]


def read_predictions(path: str, id_column: str | None = None) -> PredictionFile:
    """Read a per-row prediction file; every problem is a one-line :class:`SentexError` naming the file.

    Args:
        path: the CSV.
        id_column: the id column; default the first of ``textID``, ``id`` that the file has.
    """
    header, records = parse_csv(resolve_data_path(path), path)
    kind = next((k for k, gold in KINDS.items() if gold in header and "prediction" in header), None)
    if kind is None:
        raise SentexError(
            f"{path}: not a per-row prediction file: needs columns label,prediction (classifier) or"
            f" selected_text,prediction (extraction), as sentex test writes them (found: {', '.join(header)})"
        )
    ids = [id_column] if id_column else [c for c in ID_COLUMNS if c in header][:1]
    if not ids or ids[0] not in header:
        wanted = id_column or " or ".join(ID_COLUMNS)
        raise SentexError(f"{path}: missing id column {wanted} (found: {', '.join(header)}); set --id_column")
    id_i, gold_i, pred_i = header.index(ids[0]), header.index(KINDS[kind]), header.index("prediction")
    rows: dict[str, tuple[str, str]] = {}
    errors = []
    for line, record in records:
        if len(record) != len(header):
            errors.append(f"{path}: line {line}: expected {len(header)} fields, found {len(record)}")
            continue
        key = record[id_i]
        if key in rows:
            errors.append(f"{path}: line {line}: field {ids[0]!r}: duplicate id {key!r}")
            continue
        rows[key] = (record[gold_i], record[pred_i])
    if errors:
        more = f" ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise SentexError("; ".join(errors[:10]) + more)
    if not rows:
        raise SentexError(f"{path}: no rows")
    return PredictionFile(path, kind, rows)


def is_correct(kind: str, gold: str, prediction: str, threshold: float) -> bool:
    """Whether one row's prediction counts as right (see the module docstring).

    >>> is_correct("classifier", "positive", "positive", 1.0), is_correct("extraction", "so happy", "happy", 0.5)
    (True, True)
    >>> is_correct("extraction", "so happy", "happy", 1.0)
    False
    """
    if kind == "classifier":
        return prediction == gold
    return jaccard(prediction, gold) >= threshold


def paired_correctness(a: PredictionFile, b: PredictionFile, threshold: float) -> tuple[list[bool], list[bool]]:
    """Per-row correctness of both files on their common ids (sorted); fails unless the rows are the same."""
    if a.kind != b.kind:
        raise SentexError(f"{a.path} holds {a.kind} predictions but {b.path} {b.kind} ones; compare like with like")
    only_a, only_b = sorted(set(a.rows) - set(b.rows)), sorted(set(b.rows) - set(a.rows))
    if only_a or only_b:
        example = f"e.g. {only_a[0]!r} only in {a.path}" if only_a else f"e.g. {only_b[0]!r} only in {b.path}"
        raise SentexError(
            f"{a.path} and {b.path} are not on the same rows: {len(only_a)} id(s) only in the first,"
            f" {len(only_b)} only in the second ({example})"
        )
    ids = sorted(a.rows)
    differ = [i for i in ids if a.rows[i][0] != b.rows[i][0]]
    if differ:
        i = differ[0]
        raise SentexError(
            f"{a.path} and {b.path} disagree on the gold answer of {len(differ)} row(s)"
            f" (e.g. id {i!r}: {a.rows[i][0]!r} vs {b.rows[i][0]!r}); were they tested on the same data?"
        )
    correct_a = [is_correct(a.kind, *a.rows[i], threshold) for i in ids]
    correct_b = [is_correct(b.kind, *b.rows[i], threshold) for i in ids]
    return correct_a, correct_b


def report(table: Contingency, name_a: str, name_b: str, rule: str) -> str:
    """The Markdown table, the two accuracies and McNemar's exact p-value.

    >>> print(report(Contingency(both=5, only_a=1, only_b=6, neither=3), "a.csv", "b.csv", "label match"))
    McNemar's exact test: A = a.csv, B = b.csv, 15 rows, a row is right when label match
    <BLANKLINE>
    |  | B right | B wrong | total |
    |---|---:|---:|---:|
    | **A right** | 5 | 1 | 6 |
    | **A wrong** | 6 | 3 | 9 |
    | **total** | 11 | 4 | 15 |
    <BLANKLINE>
    accuracy: A 0.4000, B 0.7333 (B - A = +0.3333)
    discordant rows: only A right b = 1, only B right c = 6; two-sided exact p = 0.1250
    """
    p = mcnemar_exact(table.only_a, table.only_b)
    p_text = f"{p:.3e}" if p < 1e-4 else f"{p:.4f}"
    a_right, a_wrong = table.both + table.only_a, table.only_b + table.neither
    b_right, b_wrong = table.both + table.only_b, table.only_a + table.neither
    return "\n".join(
        [
            f"McNemar's exact test: A = {name_a}, B = {name_b}, {table.rows} rows, a row is right when {rule}",
            "",
            "|  | B right | B wrong | total |",
            "|---|---:|---:|---:|",
            f"| **A right** | {table.both} | {table.only_a} | {a_right} |",
            f"| **A wrong** | {table.only_b} | {table.neither} | {a_wrong} |",
            f"| **total** | {b_right} | {b_wrong} | {table.rows} |",
            "",
            f"accuracy: A {table.accuracy_a:.4f}, B {table.accuracy_b:.4f}"
            f" (B - A = {table.accuracy_b - table.accuracy_a:+.4f})",
            f"discordant rows: only A right b = {table.only_a}, only B right c = {table.only_b};"
            f" two-sided exact p = {p_text}",
        ]
    )


def compare_files(path_a: str, path_b: str, threshold: float = 1.0, id_column: str | None = None) -> str:
    """Read two prediction files, pair their rows and return :func:`report`'s text."""
    if not 0.0 < threshold <= 1.0:
        raise SentexError(f"--threshold must be in (0, 1], got {threshold}")
    a, b = read_predictions(path_a, id_column), read_predictions(path_b, id_column)
    correct_a, correct_b = paired_correctness(a, b, threshold)
    rule = "prediction == label" if a.kind == "classifier" else f"Jaccard(prediction, selected_text) >= {threshold:g}"
    return report(contingency(correct_a, correct_b), path_a, path_b, rule)


def main(argv: Sequence[str]) -> None:
    """``sentex compare A.csv B.csv [--threshold T] [--id_column NAME] [--out FILE]``."""
    parser = argparse.ArgumentParser(
        prog="sentex compare",
        description="McNemar's exact test between two per-row prediction files of the same rows "
        "(test_predictions.csv of sentex test): classifier reports compare labels, extraction "
        "reports count a row right when its Jaccard reaches --threshold.",
    )
    parser.add_argument("a", help="first per-row prediction file (A)")
    parser.add_argument("b", help="second per-row prediction file (B)")
    parser.add_argument("--threshold", type=float, default=1.0, help="extraction: Jaccard that counts as right (1.0)")
    parser.add_argument("--id_column", default=None, help="column matching the rows (default: textID, else id)")
    parser.add_argument("--out", default=None, help="also write the report to this Markdown file")
    args = parser.parse_args(list(argv))
    text = compare_files(args.a, args.b, args.threshold, args.id_column)
    print(text)
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            Path(tmp).write_text(text + "\n", encoding="utf-8")
