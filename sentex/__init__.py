"""sentex: tweet sentiment extraction with PyTorch Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sentex.version import __version__

__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from sentex.deploy.load import Extractor
    from sentex.deploy.sentiment import Classifier


def load(path: str | Path, sentiment_model: str | Path | Classifier | None = None) -> Extractor | Classifier:
    """Load an exported model folder or a sentex checkpoint; see :func:`sentex.deploy.load.load`.

    ``sentiment_model`` (a sentiment classifier) lets an extractor answer tweets given without a sentiment.
    Imported lazily so that ``import sentex`` stays light for the CLI and the app.
    """
    from sentex.deploy.load import load as _load

    return _load(path, sentiment_model)
