"""Terminal output at the end of a run."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table


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
        if not trainer.is_global_zero:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
        console = Console()
        if shown:
            console.print(metrics_table("sentex fit: final metrics", shown))
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            console.print(f"best checkpoint: {best}")
        if trainer.log_dir:
            console.print(f"TensorBoard: tensorboard --logdir {trainer.log_dir}")
