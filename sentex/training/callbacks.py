"""Callbacks every sentex run gets: terminal output at the end of a run, RNG state in checkpoints,
crash-safe checkpoint writes, and a ``last.ckpt`` that is the run's final state."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.table import Table

from sentex.io.checkpoints import AtomicCheckpointIO


def metrics_table(title: str, metrics: dict[str, torch.Tensor | float]) -> Table:
    """A two-column rich table of scalar metrics, sorted by name."""
    table = Table(title=title)
    table.add_column("metric", style="cyan")
    table.add_column("value", justify="right", style="magenta")
    for name in sorted(metrics):
        value = metrics[name]
        table.add_row(name, f"{float(value):.4f}")
    return table


class FitSummary(Callback):
    """Print the last validation metrics and where the best checkpoint is when ``fit`` ends."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every process must ask, or rank 0 hangs
        if not trainer.is_global_zero:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
        console = Console()
        if shown:
            console.print(metrics_table("sentex fit: final metrics", shown))
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            console.print(f"best checkpoint: {best}")
        if log_dir:
            console.print(f"TensorBoard: tensorboard --logdir {log_dir}")


class RandomStateCheckpoint(Callback):
    """Save the random-number generators in every checkpoint and restore them on resume.

    Dropout draws from the global generators; without this a run resumed from ``last.ckpt``
    would continue with the generators as ``seed_everything`` left them, and so diverge from
    the uninterrupted run. Stored as tensors and plain numbers so ``weights_only`` loading works.
    """

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": {"version": version, "internal": torch.tensor(internal), "gauss": gauss},
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss)},
        }
        state["numpy"]["cached"] = float(cached)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        torch.set_rng_state(state_dict["torch"])
        py = state_dict["python"]
        random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
        npy = state_dict["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class AtomicCheckpoints(Callback):
    """Make the trainer write checkpoints through :class:`~sentex.io.checkpoints.AtomicCheckpointIO`.

    Set in ``setup``, which Lightning runs before it restores or saves any checkpoint. A checkpoint
    IO the user configured (a plugin, or a strategy's own, e.g. DeepSpeed's) is left alone.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class LastCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` whose ``last.ckpt`` holds the run's final state, also after a SIGTERM.

    Lightning writes ``last`` only when its step or epoch trigger fires, and at the end of training
    only if it never fired: a 300-step run saving every 200 steps ends with ``last.ckpt`` at step 200.
    And a run stopped by SIGTERM (a pre-empted cluster job) writes nothing. This callback also writes
    ``last`` when training ends, and when Lightning stops a fit on SIGTERM: its loops raise
    :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException` only between batches, so the
    state saved there resumes exactly with ``--ckpt_path last``. A step already written is not
    written twice. Every option is :class:`ModelCheckpoint`'s; only public Lightning API is used.
    """

    # Global step of the last checkpoint this callback wrote; with ``save_last`` every save it makes
    # writes ``last`` too (Lightning saves ``last`` right after a top-k save), so this is last's step.
    _written_step: int | None = None
    _in_own_hook: bool = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._written_step = None

    @contextmanager
    def _own_saves(self) -> Iterator[None]:
        """Mark checkpoints dumped inside this block as written by this callback (see :meth:`on_save_checkpoint`)."""
        self._in_own_hook = True
        try:
            yield
        finally:
            self._in_own_hook = False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning dumps every checkpoint through this hook on every rank, but does not say for which file;
        # one dumped while a hook of this callback runs is this callback's. (Not called for weights-only
        # saves: a weights-only last.ckpt is then written once more at the end, harmlessly.)
        if self._in_own_hook:
            self._written_step = trainer.global_step
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        with self._own_saves():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with self._own_saves():
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with self._own_saves():
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Replaces ModelCheckpoint's, which writes ``last`` at the end only when it never wrote it before.
        if self._last_is_stale(trainer):
            self._write_last(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        with self._own_saves():
            super().on_exception(trainer, pl_module, exception)  # its save_on_exception, if configured
        # Only SIGTERM: other exceptions (a NaN loss, Ctrl+C) can come mid-step, with a state not worth resuming.
        if isinstance(exception, SIGTERMException) and self._last_is_stale(trainer):
            path = self._write_last(trainer)
            rank_zero_info(f"SIGTERM: saved {path} at global step {trainer.global_step}; resume with --ckpt_path last")

    def _last_is_stale(self, trainer: pl.Trainer) -> bool:
        """Whether ``last`` is wanted from a fit and does not hold the current step yet."""
        return (
            bool(self.save_last)
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and not trainer.fast_dev_run
            and self._written_step != trainer.global_step
        )

    def _write_last(self, trainer: pl.Trainer) -> str:
        """Save ``last`` now (through the strategy's checkpoint IO: atomic with sentex's) and return its path."""
        metrics = {
            **trainer.callback_metrics,
            "epoch": torch.tensor(trainer.current_epoch),
            "step": torch.tensor(trainer.global_step),
        }
        path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        version = self.STARTING_VERSION
        # As Lightning does: a ``last`` this callback did not write (an earlier run's, in a shared dirpath) is kept.
        while path != self.last_model_path and self.file_exists(path, trainer):
            path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST, ver=version)
            version += 1
        self.last_model_path = path  # before the save: it is part of the state the checkpoint holds
        trainer.save_checkpoint(path, self.save_weights_only)
        self._written_step = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)
        return path
