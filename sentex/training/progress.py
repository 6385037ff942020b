"""Progress for runs whose output goes to a file (nohup, SLURM, CI): a plain line at a steady interval.

A terminal gets Rich's progress bar; a log file would get nothing readable from it until the end
(or a flood of carriage returns from tqdm). :class:`PlainProgress` prints one self-contained line
every ``interval_s`` seconds instead: step, epoch, loss, samples/s and the estimated time left.
The interval is ``$SENTEX_PROGRESS_INTERVAL`` seconds where that is set (``0``: a line per
training step), else 30 s, so a job script can change it without touching the config.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar

from sentex.errors import SentexError

INTERVAL_ENV = "SENTEX_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


def interval_from_env(env: Mapping[str, str] | None = None) -> float:
    """Seconds between progress lines: ``$SENTEX_PROGRESS_INTERVAL`` if set, else :data:`DEFAULT_INTERVAL_S`.

    >>> interval_from_env({}), interval_from_env({"SENTEX_PROGRESS_INTERVAL": "2.5"})
    (30.0, 2.5)

    Raises:
        SentexError: the variable is set to something other than a number of seconds >= 0.
    """
    env = os.environ if env is None else env
    raw = env.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds >= 0):
        raise SentexError(f"{INTERVAL_ENV} must be a number of seconds (0 or more), got {raw!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``?`` when unknown.

    >>> format_duration(75), format_duration(3725), format_duration(float("nan"))
    ('1:15', '1:02:05', '?')
    """
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(
    step: int, total_steps: int | None, epoch: int, max_epochs: int | None, loss: float | None,
    samples: int, elapsed: float,
) -> str:  # fmt: skip
    """One progress line.

    >>> progress_line(50, 200, 0, 3, 1.23456, 1600, 40.0)
    'sentex: step 50/200 (25%) | epoch 1/3 | train/loss 1.2346 | 40.0 samples/s | elapsed 0:40 | ETA 2:00'
    >>> progress_line(5, None, 0, None, None, 10, 2.0)
    'sentex: step 5 | epoch 1 | 5.0 samples/s | elapsed 0:02'
    """
    parts = [f"step {step}/{total_steps} ({100 * step / total_steps:.0f}%)" if total_steps else f"step {step}"]
    parts.append(f"epoch {epoch + 1}/{max_epochs}" if max_epochs and max_epochs > 0 else f"epoch {epoch + 1}")
    if loss is not None:
        parts.append(f"train/loss {loss:.4f}")
    parts.append(f"{samples / elapsed:.1f} samples/s" if elapsed > 0 else "- samples/s")
    parts.append(f"elapsed {format_duration(elapsed)}")
    if total_steps and step > 0:
        parts.append(f"ETA {format_duration(elapsed * (total_steps - step) / step)}")
    return "sentex: " + " | ".join(parts)


class PlainProgress(ProgressBar):
    """Print :func:`progress_line` every ``interval_s`` seconds of training, and the metrics after validation.

    Args:
        interval_s: seconds between two progress lines; by default ``$SENTEX_PROGRESS_INTERVAL``
            (``0`` prints every step), else 30.

    Raises:
        SentexError: ``$SENTEX_PROGRESS_INTERVAL`` is not a number of seconds >= 0.
    """

    def __init__(self, interval_s: float | None = None) -> None:
        super().__init__()
        self.interval_s = interval_from_env() if interval_s is None else interval_s
        self._enabled = True
        self._start = self._last = 0.0
        self._samples = 0
        self._steps_at_start = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._samples, self._steps_at_start = 0, trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += len(batch["text"]) if isinstance(batch, dict) and "text" in batch else 1
        now = time.monotonic()
        if self._enabled and trainer.is_global_zero and now - self._last >= self.interval_s:
            self._last = now
            print(self._line(trainer, now), flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            print(self._line(trainer, time.monotonic()) + " | done", flush=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if shown:
            values = " | ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items()))
            print(f"sentex: validation at step {trainer.global_step}: {values}", flush=True)

    def _line(self, trainer: pl.Trainer, now: float) -> str:
        total = trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else None
        loss = trainer.callback_metrics.get("train/loss")
        # samples/s and ETA from this run's own steps: a resumed run does not count restored steps
        steps = trainer.global_step - self._steps_at_start
        elapsed = now - self._start
        epoch = trainer.current_epoch  # one past the last epoch once training has ended
        if trainer.max_epochs and trainer.max_epochs > 0:
            epoch = min(epoch, trainer.max_epochs - 1)
        line = progress_line(
            trainer.global_step, total, epoch, trainer.max_epochs,
            None if loss is None else float(loss), self._samples, elapsed,
        )  # fmt: skip
        if total and steps > 0 and trainer.global_step < total:
            eta = elapsed * (total - trainer.global_step) / steps
            line = line.rsplit(" | ETA ", 1)[0] + f" | ETA {format_duration(eta)}"
        return line
