"""McNemar's exact test and ``sentex compare`` on classifier and extraction reports."""

from __future__ import annotations

from math import comb
from pathlib import Path

import pytest

from sentex.cli import main
from sentex.errors import SentexError
from sentex.evaluation.compare import compare_files
from sentex.evaluation.mcnemar import Contingency, contingency, mcnemar_exact
from tests.conftest import write_rows


def test_mcnemar_matches_a_hand_worked_table() -> None:
    # Two classifiers on 50 rows: both right 30, only A right 2, only B right 8, both wrong 10.
    # Discordant n = 10; under H0 b ~ Bin(10, 1/2): P(b <= 2) = (C(10,0) + C(10,1) + C(10,2)) / 2^10
    # = (1 + 10 + 45) / 1024 = 56 / 1024, two-sided p = 112 / 1024 = 0.109375.
    a = [True] * 30 + [True] * 2 + [False] * 8 + [False] * 10
    b = [True] * 30 + [False] * 2 + [True] * 8 + [False] * 10
    table = contingency(a, b)
    assert table == Contingency(both=30, only_a=2, only_b=8, neither=10)
    assert mcnemar_exact(table.only_a, table.only_b) == pytest.approx(0.109375, abs=1e-12)
    assert (table.accuracy_a, table.accuracy_b) == (0.64, 0.76)
    # 0 vs 5: 2 / 32; a tie is p = 1; symmetric in its arguments; capped at 1 when b = c.
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625) == mcnemar_exact(5, 0)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_mcnemar_is_exact_for_large_tables() -> None:
    # 2,000 discordant rows: 2^2000 overflows a float, the integer arithmetic does not.
    b, c = 950, 1050
    expected = 2 * sum(comb(2000, k) for k in range(b + 1)) / 2**2000
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12) and 0.02 < expected < 0.04
    assert 0.0 <= mcnemar_exact(100, 1900) < 1e-300  # underflows to 0 instead of raising OverflowError


def classifier_report(path: Path, rows) -> Path:
    return write_rows(path, rows, header=("id", "text", "label", "prediction"))


def extraction_report(path: Path, rows) -> Path:
    return write_rows(path, rows, header=("textID", "text", "sentiment", "selected_text", "prediction"))


def test_compare_matches_rows_by_id_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gold = ["pos", "neg", "pos", "neg", "pos"]
    a = classifier_report(tmp_path / "a.csv", [(f"r{i}", "t", g, g if i < 4 else "neg") for i, g in enumerate(gold)])
    # B is right on r4 and wrong on r0 and r1; its rows are in another order.
    b_rows = [(f"r{i}", "t", g, "neg" if i == 0 else ("pos" if i == 1 else g)) for i, g in enumerate(gold)]
    b = classifier_report(tmp_path / "b.csv", list(reversed(b_rows)))
    main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp.md")])
    out = capsys.readouterr().out
    # both right r2, r3; only A r0, r1; only B r4: p = 2 * (C(3,0) + C(3,1)) / 8 = 1.0
    assert "| **A right** | 2 | 2 | 4 |" in out and "| **A wrong** | 1 | 0 | 1 |" in out
    assert "accuracy: A 0.8000, B 0.6000" in out and "two-sided exact p = 1.0000" in out
    assert (tmp_path / "cmp.md").read_text(encoding="utf-8").strip() == out.strip()


def test_compare_extraction_reports_by_jaccard_threshold(tmp_path: Path) -> None:
    t1, t2 = ("t1", "so happy today", "positive", "so happy"), ("t2", "sad day", "negative", "sad")
    a = extraction_report(tmp_path / "a.csv", [(*t1, "so happy"), (*t2, "sad day")])  # right, J 0.5
    b = extraction_report(tmp_path / "b.csv", [(*t1, "happy"), (*t2, "Sad")])  # J 0.5, right (case-blind)
    exact = compare_files(str(a), str(b))
    assert "| **A right** | 0 | 1 | 1 |" in exact and "| **A wrong** | 1 | 0 | 1 |" in exact
    half = compare_files(str(a), str(b), threshold=0.5)  # Jaccard 0.5 now counts: everyone right
    assert "| **A right** | 2 | 0 | 2 |" in half and "Jaccard(prediction, selected_text) >= 0.5" in half


@pytest.mark.parametrize(
    ("b_rows", "message"),
    [
        ([("r0", "t", "pos", "pos")], "are not on the same rows: 1 id(s) only in the first, 0 only in the second"),
        ([("r0", "t", "pos", "pos"), ("r1", "t", "pos", "neg")], "disagree on the gold answer of 1 row(s)"),
        ([("r0", "t", "pos", "pos"), ("r0", "t", "pos", "pos")], "line 3: field 'id': duplicate id 'r0'"),
    ],
)
def test_compare_refuses_rows_that_do_not_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture, b_rows, message: str
) -> None:
    a = classifier_report(tmp_path / "a.csv", [("r0", "t", "pos", "pos"), ("r1", "t", "neg", "neg")])
    b = classifier_report(tmp_path / "b.csv", b_rows)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(a), str(b)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_compare_refuses_files_that_are_not_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = classifier_report(tmp_path / "a.csv", [("r0", "t", "pos", "pos")])
    submission = write_rows(tmp_path / "submission.csv", [("r0", "x")], header=("textID", "selected_text"))
    extraction = extraction_report(tmp_path / "e.csv", [("r0", "t", "positive", "t", "t")])
    for other, message in [
        (submission, "not a per-row prediction file: needs columns label,prediction"),
        (extraction, "holds classifier predictions but"),
    ]:
        with pytest.raises(SystemExit):
            main(["compare", str(a), str(other)])
        assert message in capsys.readouterr().err


def test_compare_refuses_a_missing_id_column_and_a_bad_threshold(tmp_path: Path) -> None:
    a = classifier_report(tmp_path / "a.csv", [("r0", "t", "pos", "pos")])
    no_id = write_rows(tmp_path / "n.csv", [("t", "pos", "pos")], header=("text", "label", "prediction"))
    with pytest.raises(SentexError, match=r"n.csv: missing id column textID or id \(found: text, label, prediction\)"):
        compare_files(str(a), str(no_id))
    with pytest.raises(SentexError, match=r"--threshold must be in \(0, 1\], got 1.5"):
        compare_files(str(a), str(a), threshold=1.5)
    renamed = write_rows(tmp_path / "k.csv", [("r0", "t", "pos", "pos")], header=("key", "text", "label", "prediction"))
    assert "1 rows" in compare_files(str(renamed), str(renamed), id_column="key")
