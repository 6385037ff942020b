"""Failure modes of a run: a non-finite loss, a kill during a save, resumable training order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sentex.data.sampling import LengthBucketBatchSampler, ResumableRandomSampler
from sentex.io.atomic import atomic_path
from sentex.training.callbacks import RandomStateCheckpoint
from tests.conftest import many_tweets, sentex, tiny_fit_args


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tiny_t5: Path, tmp_path: Path) -> None:
    """A learning rate of 1e30 blows the LoRA weights up after one step; the next loss is NaN."""
    train = many_tweets(tmp_path / "train.csv", copies=2)
    args = tiny_fit_args(tiny_t5, train, tmp_path)
    args += ["--model.init_args.learning_rate", "1e30", "--model.init_args.warmup_steps", "0"]
    args += ["--last_checkpoint.every_n_train_steps", "1"]
    res = sentex(*args, cwd=tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("sentex: error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    match = re.match(r"sentex: error: training loss became (nan|inf|-inf) at global step (\d+) ", errors[0])
    assert match, errors[0]
    assert "--trainer.precision bf16-mixed" in errors[0] and "Checkpoints written so far are kept" in errors[0]
    failed_at = int(match.group(2))
    assert failed_at >= 1
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    kept = torch.load(last, map_location="cpu", weights_only=True)
    assert kept["global_step"] == failed_at  # written after the last finite step, before the NaN one
    assert all(torch.isfinite(w).all() for w in kept["state_dict"].values())
    assert not list(last.parent.glob(".*.tmp"))


def test_interrupted_atomic_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # stands in for the process dying mid-save
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "out.csv") as tmp:
        tmp.write_text("x")
    plain = tmp_path / "plain.csv"
    plain.write_text("x")
    assert (tmp_path / "out.csv").stat().st_mode == plain.stat().st_mode


def test_resumable_sampler_skips_exactly_the_trained_rows() -> None:
    sampler = ResumableRandomSampler(20, seed=3, epoch=1)
    full = list(sampler)
    assert sorted(full) == list(range(20)) and len(sampler) == 20
    assert list(ResumableRandomSampler(20, seed=3, epoch=1, skip=6)) == full[6:]
    resumed = ResumableRandomSampler(20, seed=3, epoch=1, skip=6)
    list(resumed)
    assert list(resumed) == full  # the skip applies to the first pass only
    sampler.set_epoch(2)
    assert list(sampler) != full


def test_bucket_sampler_skips_whole_batches() -> None:
    lengths = [(i * 7) % 23 for i in range(50)]
    full = list(LengthBucketBatchSampler(lengths, 4, seed=1, epoch=2))
    assert list(LengthBucketBatchSampler(lengths, 4, seed=1, epoch=2, skip_batches=3)) == full[3:]


def test_random_state_round_trips_through_a_checkpoint() -> None:
    import random

    import numpy as np

    callback = RandomStateCheckpoint()
    state = callback.state_dict()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()  # move every generator on
    callback.load_state_dict(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
