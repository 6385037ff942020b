"""Kill-and-resume and determinism of ``sentex fit``, through the real CLI in subprocesses.

Both compare *exactly* (CPU, one thread): the training order is a function of (seed, epoch),
the data module records how far into the epoch a checkpoint was taken, and the random-number
generators are stored in every checkpoint, so there is nothing left for a resumed or repeated
run to do differently.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    CONFIG_DIR,
    TWEETS,
    many_tweets,
    sentex,
    sentex_command,
    sentex_env,
    tiny_fit_args,
    write_rows,
)

# Run-wide settings of the SIGTERM test: the packaged MiniLM (quickstart), small, a progress line per step.
QUICK_FIT = [
    "--config", str(CONFIG_DIR / "quickstart.yaml"),
    "--model.init_args.max_length", "32",
    "--data.batch_size", "4",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "20",
    "--trainer.limit_val_batches", "1",
    "--last_checkpoint.every_n_train_steps", "1000",  # never on its own: only SIGTERM writes last.ckpt
]  # fmt: skip


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a TensorBoard run logged: ``tag -> [(step, value), ...]``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def final_val_metrics(run_dir: Path) -> dict[str, float]:
    return {tag: values[-1][1] for tag, values in scalars(run_dir).items() if tag.startswith("val/")}


def trained_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = trained_weights(a), trained_weights(b)
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"fit ended before {path} appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout}s"
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted_run(tiny_t5: Path, tmp_path: Path) -> None:
    train = many_tweets(tmp_path / "train.csv", copies=20)  # 144 training rows: 72 steps per epoch
    full = sentex(*tiny_fit_args(tiny_t5, train, tmp_path / "full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    root = tmp_path / "killed"
    last = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        sentex_command(*tiny_fit_args(tiny_t5, train, root)), cwd=tmp_path, env=sentex_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(last, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(last, map_location="cpu", weights_only=False)
    killed_at = state["global_step"]
    assert 0 < killed_at < 72, "the kill should land mid-way through the first epoch"
    assert state["TweetDataModule"] == {"epoch": 0, "batches_done": killed_at}

    resumed = sentex(*tiny_fit_args(tiny_t5, train, root, "--ckpt_path", "last"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    resumed_dir = root / "lightning_logs" / "version_1"
    train_steps = [step for step, _ in scalars(resumed_dir)["train/loss"]]
    assert min(train_steps) > killed_at, "the resumed run must continue after the checkpoint, not restart"

    full_dir = tmp_path / "full" / "lightning_logs" / "version_0"
    assert final_val_metrics(resumed_dir) == final_val_metrics(full_dir)
    assert torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 144
    assert_same_weights(resumed_dir / "checkpoints" / "last.ckpt", full_dir / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_same_seed_same_metrics_and_predictions(tiny_t5: Path, tmp_path: Path) -> None:
    train = many_tweets(tmp_path / "train.csv", copies=3)
    unlabelled = [(tid, text, sent) for tid, text, _, sent in TWEETS]
    test = write_rows(tmp_path / "test.csv", unlabelled, header=("textID", "text", "sentiment"))
    outputs = []
    for name in ("a", "b"):
        fit = sentex(*tiny_fit_args(tiny_t5, train, tmp_path / name), cwd=tmp_path)
        assert fit.returncode == 0, fit.stderr[-3000:]
        run_dir = tmp_path / name / "lightning_logs" / "version_0"
        pred = sentex(
            "predict", "--config", str(CONFIG_DIR / "lora_cpu.yaml"),
            "--model.init_args.model_name_or_path", str(tiny_t5),
            "--trainer.enable_progress_bar", "false", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
            "--data.predict_path", str(test), "--submission.output_path", str(tmp_path / name / "submission.csv"),
            cwd=tmp_path,
        )  # fmt: skip
        assert pred.returncode == 0, pred.stderr[-3000:]
        with open(tmp_path / name / "submission.csv", newline="", encoding="utf-8") as f:
            predictions = list(csv.DictReader(f))
        outputs.append((scalars(run_dir), predictions, trained_weights(run_dir / "checkpoints" / "last.ckpt")))
    (metrics_a, preds_a, weights_a), (metrics_b, preds_b, weights_b) = outputs
    assert metrics_a == metrics_b and "val/loss" in metrics_a and "train/loss" in metrics_a
    assert preds_a == preds_b and len(preds_a) == len(TWEETS)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def progress_steps(output: str) -> list[int]:
    """The global steps of :class:`~sentex.training.progress.PlainProgress`'s lines (one per step here)."""
    return [int(m) for m in re.findall(r"^sentex: step (\d+)/", output, flags=re.MULTILINE)]


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> int:
    """Wait until a run's progress output (a file) reports ``step`` or later; return the step it reports."""
    deadline = time.monotonic() + timeout
    while True:
        steps = progress_steps(out.read_text()) if out.exists() else []
        if steps and steps[-1] >= step:
            return steps[-1]
        assert proc.poll() is None, f"fit ended before step {step}"
        assert time.monotonic() < deadline, f"no step {step} after {timeout}s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_saves_last_exits_non_zero_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    """A pre-empted job (SIGTERM) keeps its progress: last.ckpt at the step it reached, resumed exactly."""
    env = {**sentex_env(), "SENTEX_PROGRESS_INTERVAL": "0"}
    root, out, err = tmp_path / "stopped", tmp_path / "stopped.out", tmp_path / "stopped.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            sentex_command("fit", *QUICK_FIT, "--trainer.default_root_dir", str(root)),
            cwd=tmp_path, env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
        try:
            reached = wait_for_step(out, 3, proc)
            os.kill(proc.pid, signal.SIGTERM)
            sent = time.monotonic()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stopped_in = time.monotonic() - sent
    assert proc.returncode == 128 + signal.SIGTERM, err.read_text()[-3000:]  # was 0: a stop looked like success
    assert "sentex: stopped by SIGTERM" in err.read_text() and "Traceback" not in err.read_text()
    assert stopped_in < 60, f"took {stopped_in:.0f}s to stop"

    folder = root / "lightning_logs" / "version_0" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]  # no best yet (no validation), no temp file left
    state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    stopped_at = state["global_step"]
    assert reached <= stopped_at < 20, "last.ckpt must hold the step the run reached, mid-way through the epoch"
    assert progress_steps(out.read_text())[-1] == stopped_at  # nothing trained after the save
    assert state["TweetDataModule"] == {"epoch": 0, "batches_done": stopped_at}

    resumed = subprocess.run(
        sentex_command("fit", *QUICK_FIT, "--trainer.default_root_dir", str(root), "--ckpt_path", "last"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert progress_steps(resumed.stdout)[0] == stopped_at + 1, "the resumed run must continue from last.ckpt"
    resumed_last = root / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed_last, map_location="cpu", weights_only=False)["global_step"] == 20

    full = sentex("fit", *QUICK_FIT, "--trainer.default_root_dir", str(tmp_path / "full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    assert_same_weights(resumed_last, tmp_path / "full" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
