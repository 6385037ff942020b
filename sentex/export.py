"""``sentex export``: a checkpoint → a self-contained model folder (LoRA merged, optionally int8).

Layout of the folder::

    sentex.json              manifest: family, base model, LoRA, settings, metrics, dtype, version
    README.md                model card
    config.json              transformers config (encoder for span, full model for seq2seq)
    model.safetensors        fp32 / fp16 / bf16 weights (plain ``from_pretrained`` loads them)
    model.int8.safetensors   int8 weights instead, for dtype int8 (see :mod:`sentex.quantize`)
    model.int4.safetensors   4-bit weights instead, for dtype int4 (see :mod:`sentex.int4`)
    head.safetensors         span only: start/end head ``nn.Linear(hidden, 2)``, float32
    tokenizer files

LoRA is merged into the base in float32 first (``merge_and_unload``); only the merged model is
cast or quantized, never merged into an already-quantized base. The folder is built under a
temporary name beside the target and renamed into place at the end, so an interrupted export
leaves nothing at the target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import nn

from sentex import __version__
from sentex.errors import SentexError
from sentex.inference import DTYPES, HEAD_WEIGHTS, MANIFEST, TORCH_DTYPES, checkpoint_metrics, module_from_checkpoint
from sentex.int4 import GROUP_SIZE, INT4_WEIGHTS, save_int4
from sentex.model_card import render_card
from sentex.models import ExtractorModule
from sentex.quantize import INT8_WEIGHTS, KEEP_FP32, save_int8
from sentex.writers import current_umask


class Quantizer(NamedTuple):
    """How an int dtype is written, and what the manifest says of it."""

    weights: str
    save: Callable[[nn.Module, Path, Sequence[str]], None]
    storage: str
    runtime: str


QUANTIZERS = {
    "int8": Quantizer(
        INT8_WEIGHTS,
        save_int8,
        "symmetric per-row int8 weights + float32 scales (Linear and Embedding)",
        "torch dynamic int8 Linear (quantize_dynamic, per-channel weights); embeddings float32",
    ),
    "int4": Quantizer(
        INT4_WEIGHTS,
        save_int4,
        f"asymmetric 4-bit weights in groups of {GROUP_SIZE} + float32 scale/offset (Linear and Embedding)",
        "torch int4 weight-only Linear (_weight_int4pack_mm_for_cpu, bf16 activations); embeddings float32",
    ),
}


def merged_network(module: ExtractorModule) -> tuple[nn.Module, dict[str, Any] | None]:
    """The module's transformers model with any LoRA adapter merged in, and the LoRA settings."""
    network = module.encoder if module.family == "span" else module.model
    peft_config = getattr(network, "peft_config", None)
    if not peft_config:
        return network, None
    cfg = peft_config["default"]
    lora = {
        "r": cfg.r,
        "alpha": cfg.lora_alpha,
        "dropout": cfg.lora_dropout,
        "target_modules": sorted(cfg.target_modules),
        "merged": True,
    }
    return network.merge_and_unload(), lora


def settings_of(module: ExtractorModule) -> dict[str, Any]:
    """What inference needs besides weights (the runner's ``hparams``)."""
    hp = module.hparams
    if module.family == "span":
        return {k: hp[k] for k in ("max_length", "max_span_tokens", "neutral_full_tweet")}
    return {
        "prompt_template": hp.prompt_template,
        "max_length": hp.max_length,
        "max_target_length": hp.max_target_length,
        "generation": dict(module.generation),
    }


def build_manifest(module: ExtractorModule, ckpt: dict[str, Any], lora: dict | None, dtype: str, source: Path) -> dict:
    """The ``sentex.json`` contents."""
    hparams = {k: v for k, v in dict(module.hparams).items() if not k.startswith("_")}
    quantizer = QUANTIZERS.get(dtype)
    quantization = None
    if quantizer is not None:
        quantization = {
            "storage": quantizer.storage,
            "runtime": quantizer.runtime,
            "kept_fp32": list(KEEP_FP32[module.family]),
        }
    return {
        "format": "sentex-export",
        "format_version": 1,
        "family": module.family,
        "base_model": hparams.get("model_name_or_path"),
        "dtype": dtype,
        "weights": quantizer.weights if quantizer else "model.safetensors",
        "lora": lora,
        "settings": settings_of(module),
        "quantization": quantization,
        "hyper_parameters": hparams,
        "metrics": checkpoint_metrics(ckpt),
        "sentex_version": __version__,
        "source_checkpoint": str(source),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_weights(network: nn.Module, folder: Path, dtype: str, family: str) -> None:
    """Write the transformers part: ``save_pretrained`` for float dtypes, sentex's int8/int4 safetensors otherwise."""
    quantizer = QUANTIZERS.get(dtype)
    if quantizer is not None:
        network.config.save_pretrained(folder)
        quantizer.save(network, folder / quantizer.weights, KEEP_FP32[family])
    else:
        network.to(TORCH_DTYPES[dtype]).save_pretrained(folder, safe_serialization=True)


def write_export(module: ExtractorModule, ckpt: dict[str, Any], source: Path, folder: Path, dtype: str) -> dict:
    """Write every file of an export into ``folder`` (which exists and is empty); returns the manifest."""
    network, lora = merged_network(module)
    manifest = build_manifest(module, ckpt, lora, dtype, source)
    write_weights(network.eval(), folder, dtype, module.family)
    module.tokenizer.save_pretrained(folder)
    if module.family == "span":
        head = {k: v.detach().float().contiguous() for k, v in module.head.state_dict().items()}
        save_file(head, str(folder / HEAD_WEIGHTS))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(render_card(manifest), encoding="utf-8")
    return manifest


def export(ckpt_path: str | Path, out: str | Path, dtype: str = "fp32", overwrite: bool = False) -> dict[str, Any]:
    """Export a checkpoint to ``out`` atomically; returns the manifest.

    Raises:
        SentexError: unknown dtype, ``out`` exists without ``overwrite``, or a bad checkpoint.
    """
    if dtype not in DTYPES:
        raise SentexError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise SentexError(f"{out} already exists; pass --overwrite to replace it")
    module, ckpt = module_from_checkpoint(ckpt_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with torch.no_grad():
            manifest = write_export(module, ckpt, Path(ckpt_path), tmp, dtype)
        make_ordinary(tmp)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def make_ordinary(folder: Path) -> None:
    """Give the folder and its files the permissions of newly created ones (umask).

    ``mkdtemp`` and safetensors' writer create them private (0700/0600), which would surprise
    anyone sharing or serving the export.
    """
    mask = current_umask()
    folder.chmod(0o777 & ~mask)
    for file in folder.rglob("*"):
        file.chmod((0o777 if file.is_dir() else 0o666) & ~mask)


def replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and deleted after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def folder_size(path: Path) -> int:
    """Bytes on disk of a file or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sentex export", description="Merge LoRA, optionally quantize, and write a self-contained model folder."
    )
    parser.add_argument("--ckpt_path", required=True, help="sentex checkpoint (.ckpt) to export")
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES, help="weight precision (default: fp32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sentex export``."""
    args = parse_args(argv or [])
    manifest = export(args.ckpt_path, args.out, args.dtype, args.overwrite)
    size = folder_size(Path(args.out)) / 2**20
    print(f"sentex: exported {manifest['family']} model ({args.dtype}, {size:.1f} MiB) to {args.out}")
