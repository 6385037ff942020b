"""Helpers several test files share: a free local port and a few training steps without checkpoints or logs.

Kept out of ``conftest.py`` so that they are plain imports (``from tests.helpers import fit_steps``)
rather than fixtures, and so that one definition serves every file that needs them.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it; another process may take it later).

    Returns:
        The port number.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_steps(
    model: pl.LightningModule,
    data: Path | str | pl.LightningDataModule,
    root: Path | None,
    steps: int,
    *,
    batch_size: int = 4,
    **trainer_options: Any,
) -> pl.Trainer:
    """Train ``model`` ``steps`` optimizer steps on the CPU on ``data``, without validating.

    No logger, checkpoint, progress bar or model summary: the tests look at the model and the
    trainer, and nothing should land on disk or in the output.

    Args:
        model: the LightningModule to train.
        data: labelled CSV (a path, or ``sentex:sample.csv``), which is also the validation file, so no
            rows are split off and every row can be trained on; or a data module, used as it is.
        root: the trainer's ``default_root_dir`` (``None``: the working directory, where nothing is written).
        steps: optimizer steps.
        batch_size: training batch size (of a CSV; a data module has its own).
        **trainer_options: further ``Trainer`` arguments (``precision``, ``gradient_clip_val``, ``callbacks``).

    Returns:
        The trainer after the fit (its ``global_step``, ``callback_metrics``, or to save a checkpoint).
    """
    import lightning.pytorch as pl

    from sentex.data import TweetDataModule

    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
        **trainer_options,
    )  # fmt: skip
    if not isinstance(data, pl.LightningDataModule):
        data = TweetDataModule(train_path=str(data), val_path=str(data), batch_size=batch_size)
    trainer.fit(model, data)
    return trainer
