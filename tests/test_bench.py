"""``sentex bench`` on tiny exports: its numbers against independently computed ones, the files it
writes, its pure helpers, and a parent that never hangs on a measuring process that dies or stalls."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import sentex
from sentex.cli import main as cli_main
from sentex.deploy.bench import add_relative_columns, child_death, markdown_table, run_isolated
from sentex.deploy.bench_measure import mean_jaccard, measure, ms_per_sample
from sentex.deploy.export import export
from sentex.deploy.load import load
from sentex.errors import SentexError
from sentex.metrics import jaccard
from tests.conftest import TWEETS, span_checkpoint, write_rows

# A row the labelled-file policy skips (its phrase is not in the tweet): bench must not score it.
BAD_ROW = ("bad", "nothing to see here", "missing phrase", "negative")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    ckpt = span_checkpoint(root / "span.ckpt")
    export(ckpt, root / "fp32", "fp32")
    export(ckpt, root / "int8", "int8")
    return root / "fp32", root / "int8", ckpt


def files_bytes(path: Path) -> int:
    """Bytes of a file, or of every file below a folder, counted here rather than by ``sentex``."""
    if path.is_file():
        return path.stat().st_size
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)


def expected_jaccard(model: Path, batch_size: int) -> float:
    """Mean Jaccard of ``sentex.load(model).extract`` on TWEETS, computed without the bench code.

    The batch size is bench's largest: int8 activations are quantized per batch, so another
    batching may change a prediction.
    """
    texts, golds, sentiments = [t[1] for t in TWEETS], [t[2] for t in TWEETS], [t[3] for t in TWEETS]
    preds = sentex.load(model).extract(texts, sentiments, batch_size=batch_size)
    return sum(jaccard(p, g) for p, g in zip(preds, golds)) / len(TWEETS)


# --- pure helpers --------------------------------------------------------------------------
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


def test_child_death_names_the_signal() -> None:
    assert child_death(-signal.SIGSEGV) == "the measuring process was killed by signal SIGSEGV"
    assert child_death(-signal.SIGKILL).endswith("SIGKILL (out of memory?)")
    assert child_death(1) == "the measuring process exited with status 1"


def test_ms_per_sample_is_per_row_and_positive(exports) -> None:
    ex = load(exports[0])
    texts, sentiments = [t[1] for t in TWEETS], [t[3] for t in TWEETS]
    calls: list[tuple[int, int]] = []

    def run(rows: int, batch_size: int) -> list[str]:
        calls.append((rows, batch_size))
        return ex.extract(texts[:rows], sentiments[:rows], batch_size=batch_size)

    assert 0 < ms_per_sample(run, len(texts), batch_size=4, repeats=2) < 5000
    assert calls == [(4, 4), (len(texts), 4), (len(texts), 4)]  # a warm-up batch, then every row per repeat


# --- the numbers, checked against independent computations ----------------------------------
def test_bench_numbers_match_independent_computations(exports, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fp32, int8, _ = exports
    val = write_rows(tmp_path / "val.csv", [*TWEETS, BAD_ROW])
    out = tmp_path / "results"
    args = [str(fp32), str(int8), "--data.val_path", str(val), "--out", str(out)]
    cli_main(["bench", *args, "--batch_sizes", "1", "4", "--latency_rows", "8", "--repeats", "1", "--threads", "1"])
    printed = capsys.readouterr().out
    assert printed.startswith("| model | family | dtype | runtime | size_mb |")
    assert "| int8 | span | int8 | torch |" in printed
    with open(out / "bench.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["family"], r["dtype"], r["runtime"]) for r in rows] == [
        ("fp32", "span", "fp32", "torch"),
        ("int8", "span", "int8", "torch"),
    ]
    ref = rows[0]
    for row, folder in zip(rows, (fp32, int8)):
        # Only the 8 usable rows are scored, as by `sentex test` (the phrase-not-in-tweet row is skipped).
        assert row["val_rows"] == str(len(TWEETS))
        assert float(row["jaccard"]) == round(expected_jaccard(folder, batch_size=4), 4)
        assert float(row["size_mb"]) == round(files_bytes(folder) / 2**20, 2)
        ms1, ms4 = float(row["ms_per_sample_b1"]), float(row["ms_per_sample_b4"])
        assert ms1 > 0 and ms4 > 0 and float(row["load_s"]) >= 0 and float(row["peak_rss_mb"]) > 0
        # Derived columns are exactly the ratios of the raw columns written next to them.
        assert float(row["throughput_b4"]) == round(1000 / ms4, 1)
        assert float(row["batched_speedup"]) == round(ms1 / ms4, 2)
        assert float(row["size_vs_first"]) == round(float(row["size_mb"]) / float(ref["size_mb"]), 3)
        assert float(row["speed_vs_first"]) == round(float(row["throughput_b4"]) / float(ref["throughput_b4"]), 2)
        assert float(row["jaccard_delta"]) == round(float(row["jaccard"]) - float(ref["jaccard"]), 4)
    assert ref["size_vs_first"] == "1.0" and ref["speed_vs_first"] == "1.0" and ref["jaccard_delta"] == "0.0"
    assert float(rows[1]["size_vs_first"]) <= 0.35  # int8 weights are a quarter of fp32 ones, plus the tokenizer
    md = (out / "bench.md").read_text().splitlines()
    assert printed.startswith("\n".join(md)) and md[0] == "| " + " | ".join(ref) + " |"
    assert [[c.strip() for c in line.strip("| ").split(" | ")] for line in md[2:]] == [list(r.values()) for r in rows]
    if importlib.util.find_spec("matplotlib") is None:  # the plot is an extra: pip install 'sentex[bench]'
        assert "no plot: pip install matplotlib" in printed and not (out / "bench.png").exists()
    else:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measure_a_checkpoint_in_process(exports, tmp_path: Path) -> None:
    val = write_rows(tmp_path / "val.csv", [*TWEETS, BAD_ROW])
    steps: list[str] = []
    row = measure(str(exports[2]), str(val), [2], latency_rows=4, repeats=1, report=steps.append)
    assert steps == ["load", "batch 2", "quality"]
    assert row["model"] == "span.ckpt" and row["dtype"] == "fp32" and row["val_rows"] == len(TWEETS)
    assert row["size_mb"] == round(files_bytes(exports[2]) / 2**20, 2)
    assert row["jaccard"] == round(expected_jaccard(exports[2], batch_size=2), 4)
    assert row["throughput_b2"] == round(1000 / row["ms_per_sample_b2"], 1) and "batched_speedup" not in row


def test_bench_reports_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    val = write_rows(tmp_path / "val.csv", TWEETS)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", str(tmp_path / "nope"), "--data.val_path", str(val), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    assert "nope: no such exported model folder or checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_rejects_a_non_positive_timeout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "m", "--data.val_path", "v.csv", "--timeout", "0"])
    assert exit_info.value.code == 2 and "--timeout must be more than 0 seconds" in capsys.readouterr().err


# --- a measuring process that dies or stalls -------------------------------------------------
# Child targets for run_isolated: module-level so that a spawned process can import them.
def _exit_without_result(queue, path, args) -> None:
    queue.put(("step", "load"))
    queue.close()
    queue.join_thread()  # os._exit skips the queue's flush; the parent must still get the step
    os._exit(3)


def _segfault(queue, path, args) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _stall(queue, path, args) -> None:
    queue.put(("step", "load"))
    time.sleep(600)


@pytest.mark.parametrize(
    "target, message",
    [
        (_exit_without_result, "m1: the measuring process exited with status 3 before sending its result"),
        (_segfault, "m1: the measuring process was killed by signal SIGSEGV before sending its result"),
    ],
    ids=["exit", "signal"],
)
def test_a_child_that_dies_is_an_error_not_a_hang(target, message: str) -> None:
    steps: list[str] = []
    start = time.monotonic()
    with pytest.raises(SentexError) as err:
        run_isolated("m1", argparse.Namespace(timeout=300.0), steps.append, target=target)
    assert str(err.value) == message
    assert time.monotonic() - start < 120  # the child's imports, then about a second of polling
    if target is _exit_without_result:
        assert steps == ["load"]


def measuring_children(pid: int) -> list[psutil.Process]:
    """Live processes started by ``pid`` through multiprocessing's spawn (not its resource tracker)."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited meanwhile
            pass
    return found


def test_a_stalled_child_is_stopped_at_the_timeout() -> None:
    steps: list[str] = []
    start = time.monotonic()
    with pytest.raises(SentexError) as err:
        run_isolated("m2", argparse.Namespace(timeout=10.0), steps.append, target=_stall)
    assert str(err.value) == "m2: no result after 10 s (--timeout); the measuring process was stopped"
    assert 10 <= time.monotonic() - start < 60
    assert not measuring_children(os.getpid())  # killed and reaped, not left sleeping


def bench_process(models: list[Path], val: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``sentex bench`` as a user runs it, in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sentex", "bench", *map(str, models), "--data.val_path", str(val), "--out", str(out)]
    cmd += ["--batch_sizes", "1", "2", "--latency_rows", "4", "--repeats", "1", "--threads", "1", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_bench_exits_with_one_line_when_the_measuring_process_is_killed(exports, tmp_path: Path) -> None:
    """What the OOM killer does: SIGKILL the measuring process; the command must fail at once, naming the model."""
    val = write_rows(tmp_path / "val.csv", TWEETS)
    bench = bench_process([exports[0]], val, tmp_path / "out")
    try:
        parent = psutil.Process(bench.pid)
        child = None
        for _ in range(1200):
            kids = measuring_children(parent.pid)
            if kids:
                child = kids[0]
                break
            assert bench.poll() is None, bench.communicate()
            time.sleep(0.1)
        assert child is not None, "no measuring process appeared"
        time.sleep(1.0)
        child.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert time.monotonic() - killed < 60
    assert bench.returncode == 1
    assert err.strip().splitlines()[-1] == (
        f"sentex: error: {exports[0]}: the measuring process was killed by signal SIGKILL (out of memory?)"
        " before sending its result"
    )
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_bench_timeout_stops_the_command(exports, tmp_path: Path) -> None:
    val = write_rows(tmp_path / "val.csv", TWEETS)
    start = time.monotonic()
    bench = bench_process([exports[0]], val, tmp_path / "out", "--timeout", "0.5")
    _, err = bench.communicate(timeout=120)
    assert bench.returncode == 1
    assert err.strip().splitlines()[-1] == (
        f"sentex: error: {exports[0]}: no result after 0.5 s (--timeout); the measuring process was stopped"
    )
    assert time.monotonic() - start < 90 and not (tmp_path / "out").exists()
