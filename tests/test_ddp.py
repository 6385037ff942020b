"""Multi-process runs on CPU with Lightning's own DDP strategy (gloo): fit, predict, validate.

Each test starts real ``sentex`` processes (Lightning launches the second rank itself), so they
are slow-marked; together about a minute and a half on 2 cores.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests.conftest import CONFIG_DIR, TWEETS, many_tweets, sentex, write_rows

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def tiny(tiny_t5: Path) -> list[str]:
    return [
        "--config", str(CONFIG_DIR / "lora_cpu.yaml"),
        "--model.init_args.model_name_or_path", str(tiny_t5),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def read_submission(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_ddp_fit_then_predict_writes_one_complete_submission(tiny_t5: Path, tmp_path: Path) -> None:
    train = many_tweets(tmp_path / "train.csv", copies=3)
    args = ["--data.train_path", str(train), "--data.batch_size", "4"]
    fit = sentex("fit", *tiny(tiny_t5), *DDP, *args, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "Starting with 2 processes" in fit.stderr
    runs = list((tmp_path / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0"]  # rank 1 made no run folder of its own
    last = runs[0] / "checkpoints" / "last.ckpt"
    assert last.exists()

    # 5 rows over 2 processes: the DistributedSampler pads rank 1 with a repeat of row 0.
    rows = [(f"p{i}", text, sentiment) for i, (_, text, _, sentiment) in enumerate(TWEETS[:5])]
    test = write_rows(tmp_path / "test.csv", rows, header=("textID", "text", "sentiment"))
    common = [*tiny(tiny_t5), "--ckpt_path", str(last), "--data.predict_path", str(test), "--data.eval_batch_size", "2"]
    ddp = sentex("predict", *common, *DDP, "--submission.output_path", "ddp.csv", cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = sentex("predict", *common, "--submission.output_path", "single.csv", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_rows = read_submission(tmp_path / "ddp.csv")
    assert [r["textID"] for r in ddp_rows] == [r[0] for r in rows]
    assert ddp_rows == read_submission(tmp_path / "single.csv")
    assert ddp.stdout.count("wrote 5 predictions") + ddp.stderr.count("wrote 5 predictions") == 1
    assert not list(tmp_path.glob(".*.tmp"))

    # The per-row test report: rank order undone and the padding repeat dropped.
    labelled = write_rows(tmp_path / "labelled.csv", TWEETS[:5])
    tested = sentex(
        "test", *tiny(tiny_t5), *DDP, "--ckpt_path", str(last), "--data.test_path", str(labelled),
        "--data.eval_batch_size", "2", cwd=tmp_path,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stderr[-3000:]
    (report,) = (tmp_path / "lightning_logs").glob("*/test_predictions.csv")
    assert [r["textID"] for r in read_submission(report)] == [row[0] for row in TWEETS[:5]]


def validate_metrics(output: str) -> dict[str, float]:
    """The ``val/...`` numbers of Lightning's end-of-validate table."""
    return {m[0]: float(m[1]) for m in re.findall(r"(val/\w+)\s*[│|]\s*([-\d.e]+)", output)}


@pytest.mark.slow
def test_ddp_validate_metrics_equal_single_process(tmp_path: Path) -> None:
    """Jaccard states are sums, so two processes with part of the rows each must report the full-set mean."""
    val = write_rows(tmp_path / "val.csv", TWEETS[:7])  # 7 rows: 4 + 3, no row may count twice
    args = [
        "validate", "--config", str(CONFIG_DIR / "quickstart.yaml"), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--data.val_path", str(val), "--data.eval_batch_size", "3",
    ]  # fmt: skip
    single = sentex(*args, cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = sentex(*args, *DDP, cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = validate_metrics(single.stdout), validate_metrics(ddp.stdout)
    assert {"val/jaccard", "val/exact_match", "val/token_f1", "val/jaccard_neutral"} <= one.keys()
    assert 0 < one["val/jaccard"] < 1  # neither trivially 0 nor 1: the comparison means something
    assert two.keys() == one.keys()
    for name in one:
        if name != "val/loss":  # a mean of per-batch means: batches differ between 1 and 2 processes
            assert two[name] == pytest.approx(one[name], abs=1e-6), name


@pytest.mark.slow
def test_bucketing_under_ddp_fails_clearly(tiny_t5: Path, tmp_path: Path) -> None:
    train = many_tweets(tmp_path / "train.csv", copies=2)
    res = sentex(
        "fit", *tiny(tiny_t5), *DDP, "--data.train_path", str(train), "--data.bucket_by_length", "true", cwd=tmp_path
    )
    assert res.returncode != 0
    assert (
        "sentex: error: data.bucket_by_length works in a single process only; set --data.bucket_by_length false"
        " for multi-device (DDP/FSDP/DeepSpeed) training" in res.stderr
    )
