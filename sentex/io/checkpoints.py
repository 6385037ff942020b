"""Checkpoint I/O: saves a ``kill -9`` cannot corrupt, and reads whose every failure is one line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sentex.errors import CheckpointError
from sentex.io.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file and rename it over the old checkpoint.

    Lightning writes ``last.ckpt`` in place; a process killed mid-write would leave a truncated
    file and no way to resume. ``os.replace`` is atomic on POSIX, so the previous checkpoint
    stays intact until the new one is complete.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self, path: str | os.PathLike[str], map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: checkpoint not found") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(
                f"{path}: not a readable checkpoint (truncated or corrupt?): {first_line(err)}"
            ) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's plain contents on CPU (no code runs), or raise a one-line :class:`CheckpointError`.

    A complete checkpoint that holds objects beyond plain data gives ``{}``: whoever needs it in
    full (the Trainer) loads it later.
    """
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            return {}
        # torch's own text here suggests weights_only=False, which is wrong for a damaged file.
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): not a pickle") from None
    except Exception as err:  # torch raises RuntimeError, OSError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first_line(err)}") from None


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (its type name when the message is empty)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
