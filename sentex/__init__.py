"""sentex: tweet sentiment extraction with PyTorch Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sentex.inference import Extractor


def load(path: str | Path) -> Extractor:
    """Load an exported model folder or a sentex checkpoint; see :func:`sentex.inference.load`.

    Imported lazily so that ``import sentex`` stays light for the CLI and the app.
    """
    from sentex.inference import load as _load

    return _load(path)
