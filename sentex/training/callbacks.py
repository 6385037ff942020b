"""Callbacks every sentex run gets: terminal output at the end of a run, RNG state in checkpoints,
crash-safe checkpoint writes."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
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
