"""``last.ckpt`` is the final state of every ``sentex fit`` and ``sentex align`` run.

Lightning's own ``save_last`` writes ``last`` when its step trigger fires and, at the end, only if
it never fired; so a run whose length is not a multiple of ``every_n_train_steps`` used to end with a
``last.ckpt`` older than its best checkpoint. Both commands run in-process here (a few steps of the
packaged MiniLM, CPU), with a trigger that fires once before the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sentex.cli import main
from tests.conftest import CONFIG_DIR, TWEETS, save_untrained, write_rows


def saved_step(path: Path) -> int:
    """The global step a checkpoint was written at."""
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def run(args: list[str]) -> None:
    """Run ``sentex ARGS`` in this process; it must succeed (``main`` returns instead of exiting)."""
    main(args)


COMMON = [
    "--model.init_args.max_length", "32",
    "--data.batch_size", "4",
    "--trainer.max_epochs", "1",
    "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.logger", "false",
    "--last_checkpoint.every_n_train_steps", "2",  # fires at step 2 only: the runs end at step 3
]  # fmt: skip


@pytest.mark.slow
def test_fit_ends_with_last_at_the_final_step(tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.csv", TWEETS * 2)  # 16 rows: no split of the packaged sample needed
    run([
        "fit", "--config", str(CONFIG_DIR / "quickstart.yaml"), *COMMON,
        "--data.train_path", str(train), "--data.val_path", str(train),
        "--trainer.limit_train_batches", "3", "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    folder = tmp_path / "checkpoints"
    (best,) = folder.glob("best-*.ckpt")
    assert saved_step(best) == 3, best  # validation at the end of the one epoch
    assert saved_step(folder / "last.ckpt") == 3  # was 2: the step trigger's save, not the final state
    assert sorted(p.name for p in folder.iterdir()) == sorted([best.name, "last.ckpt"])  # no temp file, no last-v1


@pytest.mark.slow
def test_align_ends_with_last_at_the_final_step(tmp_path: Path) -> None:
    from sentex.models import SpanExtractor

    torch.manual_seed(0)
    sft = save_untrained(SpanExtractor(max_length=32), tmp_path / "sft" / "sft.ckpt")
    train = write_rows(tmp_path / "train.csv", TWEETS * 3)
    run([
        "align", "--config", str(CONFIG_DIR / "dpo_span.yaml"), *COMMON,
        "--data.train_path", str(train), "--model.sft_checkpoint", str(sft), "--model.num_pairs", "12",
        # pairs DPO on an independent-scoring SFT model, as tests/test_dpo.py's end-to-end run
        "--model.loss_type", "sigmoid", "--model.span_scoring", "independent",
        "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    folder = tmp_path / "checkpoints"
    assert saved_step(folder / "last.ckpt") == 3  # was 2
    state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert "dpo" in state["sentex"]  # an align checkpoint: `sentex align --ckpt_path last` resumes it
