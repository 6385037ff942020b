"""Which checkpoints may form one ensemble export, and the ensemble's manifest.

An ensemble averages its members' span distributions over the *same* token positions, so every
member must be a span model that tokenizes and decodes alike: the same tokenizer (vocabulary,
normalization, pre-tokenization, special tokens) and the same codec settings. Anything else
(scoring, LoRA, training recipe, validation fold) may differ. The folder layout is defined in
:mod:`sentex.deploy.format`; :func:`sentex.deploy.export.export` writes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sentex.deploy.format import ENSEMBLE_COMBINE, ENSEMBLE_FAMILIES, FORMAT_VERSION
from sentex.errors import SentexError
from sentex.models.base import ExtractorModule
from sentex.version import __version__


def tokenizer_signature(tokenizer: Any) -> dict[str, Any]:
    """Everything about a fast tokenizer that decides its token ids and offsets, as plain data.

    The backend's own serialization (vocabulary, normalizer, pre-tokenizer, post-processor, added
    tokens) without its run-time padding/truncation state, plus the class and the special tokens.
    File names and paths (``name_or_path``) are left out: two copies of one tokenizer are alike.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    for transient in ("truncation", "padding"):
        backend.pop(transient, None)
    return {
        "class": type(tokenizer).__name__,
        "vocabulary": tokenizer.get_vocab(),
        "special tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "backend": backend,
    }


def tokenizer_difference(ref: dict[str, Any], other: dict[str, Any]) -> str | None:
    """What differs between two :func:`tokenizer_signature`; ``None`` when they are alike.

    >>> a = {"class": "T", "vocabulary": {"a": 0, "b": 1}, "special tokens": {}, "backend": {}}
    >>> tokenizer_difference(a, {**a, "vocabulary": {"a": 0}})
    'vocabulary of 1 tokens, not 2'
    >>> tokenizer_difference(a, {**a, "backend": {"normalizer": {"lowercase": False}}})
    'its normalizer'
    >>> tokenizer_difference(a, dict(a)) is None
    True
    """
    for key in ("class", "vocabulary", "special tokens", "backend"):  # the most telling difference first
        if ref.get(key) == other.get(key):
            continue
        if key == "vocabulary":
            mine, theirs = other.get(key) or {}, ref.get(key) or {}
            if len(mine) != len(theirs):
                return f"vocabulary of {len(mine)} tokens, not {len(theirs)}"
            return f"same-size vocabulary with other token ids ({len(mine)} tokens)"
        if key == "backend":
            parts = ref[key].keys() | other[key].keys()
            return "its " + ", ".join(sorted(p for p in parts if ref[key].get(p) != other[key].get(p)))
        return f"{key} {other.get(key)!r}, not {ref.get(key)!r}"
    return None


def check_members(paths: Sequence[Path], modules: Sequence[ExtractorModule]) -> None:
    """Refuse checkpoints that cannot answer as one ensemble, naming the first offending checkpoint.

    Raises:
        SentexError: a member is not a span model, or its tokenizer or codec settings differ from
            the first member's.
    """
    first_path, first = paths[0], modules[0]
    for path, module in zip(paths, modules):
        if module.family not in ENSEMBLE_FAMILIES:
            raise SentexError(f"{path}: a {module.family} checkpoint; only span checkpoints form an ensemble")
    ref_tokenizer, ref_settings = tokenizer_signature(first.tokenizer), first.codec.settings()
    for path, module in zip(paths[1:], modules[1:]):
        diff = tokenizer_difference(ref_tokenizer, tokenizer_signature(module.tokenizer))
        if diff:
            raise SentexError(f"{path}: its tokenizer differs from {first_path}'s ({diff}); members must share one")
        settings = module.codec.settings()
        for key in sorted(settings.keys() | ref_settings.keys()):
            if settings.get(key) != ref_settings.get(key):
                raise SentexError(
                    f"{path}: decoding setting {key}={settings.get(key)!r} differs from {first_path}'s "
                    f"{key}={ref_settings.get(key)!r}; members must decode alike"
                )


def _shared(values: list[Any]) -> Any:
    """The value every member has, or ``None`` when they differ."""
    return values[0] if all(v == values[0] for v in values) else None


def ensemble_manifest(member_manifests: list[dict[str, Any]], folders: list[str], dtype: str) -> dict[str, Any]:
    """The ``sentex.json`` of an ensemble, from its members' own manifests (in member order).

    ``base_model`` and ``lora`` are the members' common value (``None`` when they differ); each
    member's source checkpoint, validation metrics, base model, LoRA and scoring are in ``member_info``.
    The ensemble itself has no validation score (its members' scores are each on their own
    validation data), so ``metrics`` is empty: ``sentex test`` or ``sentex bench`` measures it.
    """
    first = member_manifests[0]
    member_info = [
        {
            "path": folder,
            "source_checkpoint": m["source_checkpoint"],
            "metrics": m["metrics"],
            "base_model": m["base_model"],
            "lora": m["lora"],
            "span_scoring": (m.get("hyper_parameters") or {}).get("span_scoring", "independent"),
        }
        for folder, m in zip(folders, member_manifests)
    ]
    return {
        "format": "sentex-export",
        "format_version": FORMAT_VERSION,
        "family": first["family"],
        "base_model": _shared([m["base_model"] for m in member_manifests]),
        "dtype": dtype,
        "lora": _shared([m["lora"] for m in member_manifests]),
        "settings": first["settings"],
        "quantization": first["quantization"],
        "ensemble": {"members": list(folders), "combine": ENSEMBLE_COMBINE},
        "member_info": member_info,
        "metrics": {},
        "sentex_version": __version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
