"""Plain progress lines for output that is not a terminal (``sentex.training.progress``).

The pure formatting against hand-computed strings, the interval setting, and a real ``sentex fit``
whose stdout is a pipe (as under nohup, SLURM or CI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentex.cli import main as cli_main
from sentex.errors import SentexError
from sentex.training.progress import (
    DEFAULT_INTERVAL_S,
    INTERVAL_ENV,
    PlainProgress,
    format_duration,
    interval_from_env,
    progress_line,
)

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0:00"),
        (9.4, "0:09"),
        (59.6, "1:00"),  # rounded to whole seconds before splitting
        (61, "1:01"),
        (3599, "59:59"),
        (3600, "1:00:00"),
        (36061, "10:01:01"),
        (90000, "25:00:00"),  # hours are not wrapped into days
        (-1, "?"),
        (float("inf"), "?"),
        (float("nan"), "?"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_progress_line_with_everything_known() -> None:
    # 1 of 3 steps, 48 samples in 4 s: 12.0 samples/s; ETA 4 s * (3 - 1) / 1 = 8 s.
    assert progress_line(1, 3, 2, 3, 0.5, 48, 4.0) == (
        "sentex: step 1/3 (33%) | epoch 3/3 | train/loss 0.5000 | 12.0 samples/s | elapsed 0:04 | ETA 0:08"
    )
    # 150 of 600 steps after 1 h 15 min (4500 s): 25%, ETA 4500 * 450 / 150 = 13500 s = 3:45:00.
    assert progress_line(150, 600, 0, 1, 0.123449, 9000, 4500.0) == (
        "sentex: step 150/600 (25%) | epoch 1/1 | train/loss 0.1234 | 2.0 samples/s | elapsed 1:15:00 | ETA 3:45:00"
    )


def test_progress_line_leaves_out_what_is_unknown() -> None:
    # No total: no percentage, no ETA; no loss yet; no time elapsed: no rate.
    assert progress_line(0, None, 0, None, None, 0, 0.0) == "sentex: step 0 | epoch 1 | - samples/s | elapsed 0:00"
    # max_epochs -1 means "no limit": the epoch has no total. Step 0 of a known total has no ETA yet.
    assert progress_line(0, 10, 4, -1, 2.0, 0, 1.0) == (
        "sentex: step 0/10 (0%) | epoch 5 | train/loss 2.0000 | 0.0 samples/s | elapsed 0:01"
    )


def test_interval_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert PlainProgress().interval_s == DEFAULT_INTERVAL_S == 30.0
    monkeypatch.setenv(INTERVAL_ENV, " 0 ")
    assert PlainProgress().interval_s == 0.0 and PlainProgress(interval_s=5).interval_s == 5
    assert interval_from_env({INTERVAL_ENV: ""}) == DEFAULT_INTERVAL_S
    for bad in ["soon", "-1", "nan", "inf"]:
        with pytest.raises(SentexError, match=f"{INTERVAL_ENV} must be a number of seconds \\(0 or more\\), got"):
            interval_from_env({INTERVAL_ENV: bad})


def test_a_bad_interval_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(SystemExit) as exit_info:  # captured stdout is not a terminal: plain progress is chosen
        cli_main(["fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"sentex: error: {INTERVAL_ENV} must be a number of seconds (0 or more), got 'soon'"
    )


@pytest.mark.slow
def test_fit_with_piped_stdout_prints_plain_progress(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", INTERVAL_ENV: "0"}
    cmd = [
        sys.executable, "-m", "sentex", "fit", "--config", str(QUICKSTART), "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    steps = [line for line in lines if line.startswith("sentex: step ")]
    # Interval 0: one line per training step, then the closing line.
    number = r"\d+\.\d+"
    for i, line in enumerate(steps[:3], start=1):
        assert re.fullmatch(
            rf"sentex: step {i}/3 \({100 * i / 3:.0f}%\) \| epoch 1/1 \| train/loss {number} \| {number} samples/s"
            rf" \| elapsed \d+:\d\d \| ETA \d+:\d\d",
            line,
        ), line
    assert len(steps) == 4 and steps[3].startswith("sentex: step 3/3 (100%) | epoch 1/1 |")
    assert steps[3].endswith(" | done")
    validation = [line for line in lines if line.startswith("sentex: validation at step")]
    assert len(validation) == 1  # the sanity check before training is not reported
    metric = rf"val/\S+ {number}"
    assert re.fullmatch(
        rf"sentex: validation at step 3: ({metric} \| )*val/jaccard {number}( \| {metric})*", validation[0]
    ), validation[0]
    assert lines.index(validation[0]) < lines.index(steps[3])
    assert "\r" not in proc.stdout and "\x1b[" not in "\n".join(steps + validation)  # no bar redraws, no colours
