"""``sentex bench`` on tiny exports: the table, CSV and PNG it writes, and its pure helpers."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from sentex.cli import main as cli_main
from sentex.deploy.bench import add_relative_columns, markdown_table, mean_jaccard, measure, ms_per_sample
from sentex.deploy.export import export
from sentex.deploy.load import load
from tests.conftest import TWEETS, write_rows
from tests.test_inference import span_checkpoint


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    ckpt = span_checkpoint(root / "span.ckpt")
    export(ckpt, root / "fp32", "fp32")
    export(ckpt, root / "int8", "int8")
    return root / "fp32", root / "int8", ckpt


def test_relative_columns_against_the_first_model() -> None:
    rows = [
        {"size_mb": 80.0, "throughput_b16": 100.0, "jaccard": 0.70},
        {"size_mb": 20.0, "throughput_b16": 250.0, "jaccard": 0.6975},
    ]
    add_relative_columns(rows)
    assert [r["size_vs_first"] for r in rows] == [1.0, 0.25]
    assert [r["speed_vs_first"] for r in rows] == [1.0, 2.5]
    assert [r["jaccard_delta"] for r in rows] == [0.0, -0.0025]


def test_mean_jaccard_and_table_helpers() -> None:
    assert mean_jaccard(["a b", "c"], ["a b", "d"]) == 0.5
    with pytest.raises(ValueError):
        mean_jaccard(["a"], [])
    assert markdown_table([{"m": "x", "v": 1}, {"m": "y", "v": 2}]).splitlines()[-1] == "| y | 2 |"


def test_ms_per_sample_is_per_row_and_positive(exports) -> None:
    ex = load(exports[0])
    texts, sentiments = [t[1] for t in TWEETS], [t[3] for t in TWEETS]
    assert 0 < ms_per_sample(ex, texts, sentiments, batch_size=4, repeats=2) < 5000


def test_bench_writes_table_csv_and_png(exports, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fp32, int8, _ = exports
    val = write_rows(tmp_path / "val.csv", TWEETS)
    out = tmp_path / "results"
    args = [str(fp32), str(int8), "--data.val_path", str(val), "--out", str(out)]
    cli_main(["bench", *args, "--batch_sizes", "1", "4", "--latency_rows", "8", "--repeats", "1", "--threads", "1"])
    printed = capsys.readouterr().out
    assert printed.startswith("| model | family | dtype | size_mb |") and "| int8 | span | int8 |" in printed
    with open(out / "bench.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["dtype"] for r in rows] == ["fp32", "int8"]
    assert float(rows[1]["size_vs_first"]) <= 0.35 and rows[0]["size_vs_first"] == "1.0"
    want = sum(1 for t in TWEETS if t[3] == "neutral") / len(TWEETS)  # a random head: neutral rows score 1
    assert all(float(r["jaccard"]) >= want for r in rows) and all(r["val_rows"] == "8" for r in rows)
    assert all(float(r["ms_per_sample_b1"]) > 0 and float(r["peak_rss_mb"]) > 0 for r in rows)
    assert float(rows[0]["batched_speedup"]) > 0 and "throughput_b4" in rows[0]
    assert (out / "bench.md").read_text().startswith("| model |")
    if importlib.util.find_spec("matplotlib") is None:  # the plot is an extra: pip install 'sentex[bench]'
        assert "no plot: pip install matplotlib" in printed and not (out / "bench.png").exists()
    else:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reports_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    val = write_rows(tmp_path / "val.csv", TWEETS)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", str(tmp_path / "nope"), "--data.val_path", str(val), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    assert "nope: no such exported model folder or checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_measure_a_checkpoint_in_process(exports, tmp_path: Path) -> None:
    val = write_rows(tmp_path / "val.csv", TWEETS)
    steps: list[str] = []
    row = measure(str(exports[2]), str(val), [2], latency_rows=4, repeats=1, report=steps.append)
    assert steps == ["load", "batch 2", "jaccard"]
    assert row["model"] == "span.ckpt" and row["dtype"] == "fp32" and row["val_rows"] == len(TWEETS)
    assert row["throughput_b2"] == round(1000 / row["ms_per_sample_b2"], 1) and "batched_speedup" not in row
