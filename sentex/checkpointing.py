"""Checkpoint I/O that a ``kill -9`` during a save cannot corrupt."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sentex.errors import CheckpointError
from sentex.writers import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file and rename it over the old checkpoint.

    Lightning writes ``last.ckpt`` in place; a process killed mid-write would leave a truncated
    file and no way to resume. ``os.replace`` is atomic on POSIX, so the previous checkpoint
    stays intact until the new one is complete.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: checkpoint not found") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(
                f"{path}: not a readable checkpoint (truncated or corrupt?): {str(err).splitlines()[0]}"
            ) from None
