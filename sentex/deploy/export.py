"""``sentex export``: a checkpoint → a self-contained model folder (LoRA merged, optionally quantized).

The folder's layout, file names and manifest are defined in :mod:`sentex.deploy.format`. LoRA is
merged into the base in float32 first (``merge_and_unload``); only the merged model is cast or
quantized, never merged into an already-quantized base. The folder is built under a temporary name
beside the target, flushed to disk and renamed into place at the end, so an interrupted export
leaves nothing at the target.

Several checkpoints (``--ckpt_path`` repeated) make one ensemble folder: each member is exported
as a complete single-model folder under ``members/<i>/``, and the top level holds the shared
tokenizer, the ensemble manifest and its model card. The members are checked to tokenize and decode
alike (:func:`sentex.deploy.ensemble.check_members`) before anything is written.

``--format onnx`` (span models, fp32 or int8) writes the span network as an ONNX graph that ONNX
Runtime runs (:mod:`sentex.deploy.onnx_export`) instead of weight files; ensembles too, member by member.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from sentex.deploy.assembly import assemble_span_network, checkpoint_metrics, module_from_checkpoint
from sentex.deploy.ensemble import check_members, ensemble_manifest
from sentex.deploy.format import (
    CARD,
    DTYPES,
    FORMAT_VERSION,
    HEAD_WEIGHTS,
    KEEP_FP32,
    ONNX_DTYPES,
    ONNX_FAMILIES,
    QUANTIZERS,
    RUNTIMES,
    TORCH_DTYPES,
    member_folder,
    weights_file,
    write_manifest,
)
from sentex.deploy.model_card import render_card, render_ensemble_card
from sentex.deploy.onnx_export import ONNX_INT8, write_onnx
from sentex.deploy.onnx_runtime import import_optional
from sentex.errors import SentexError
from sentex.io.atomic import make_ordinary, replace_folder
from sentex.models.base import ExtractorModule
from sentex.models.components.causal_lm import forget_gguf
from sentex.version import __version__


def merged_network(module: ExtractorModule) -> tuple[nn.Module, dict[str, Any] | None]:
    """The module's transformers model with any LoRA adapter merged in, and the LoRA settings."""
    network = module.net.encoder if module.family == "span" else module.net
    peft_config = getattr(network, "peft_config", None)
    if not peft_config:
        return forget_gguf(network), None
    cfg = peft_config["default"]
    lora = {
        "r": cfg.r,
        "alpha": cfg.lora_alpha,
        "dropout": cfg.lora_dropout,
        "target_modules": sorted(cfg.target_modules),
        "merged": True,
    }
    # A model read from a GGUF file (the packaged SmolLM2) holds plain float32 weights by now; without its
    # GGUF record ``save_pretrained`` writes them like any other.
    return forget_gguf(network.merge_and_unload()), lora


def build_manifest(
    module: ExtractorModule, ckpt: dict[str, Any], lora: dict | None, dtype: str, source: Path, runtime: str = "torch"
) -> dict:
    """The ``sentex.json`` contents."""
    hparams = {k: v for k, v in dict(module.hparams).items() if not k.startswith("_")}
    quantizer = QUANTIZERS.get(dtype)
    quantization = None
    if runtime == "onnx":
        quantization = dict(ONNX_INT8) if dtype == "int8" else None
    elif quantizer is not None:
        quantization = {
            "storage": quantizer.storage,
            "runtime": quantizer.runtime,
            "kept_fp32": list(KEEP_FP32[module.family]),
        }
    return {
        "format": "sentex-export",
        "format_version": FORMAT_VERSION,
        "family": module.family,
        "base_model": hparams.get("model_name_or_path"),
        "dtype": dtype,
        "runtime": runtime,
        "weights": weights_file(dtype, runtime),
        "lora": lora,
        "settings": module.codec.settings(),
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


def write_export(
    module: ExtractorModule, ckpt: dict[str, Any], source: Path, folder: Path, dtype: str, runtime: str = "torch"
) -> dict:
    """Write every file of an export into ``folder`` (which exists and is empty); returns the manifest."""
    network, lora = merged_network(module)
    manifest = build_manifest(module, ckpt, lora, dtype, source, runtime)
    if runtime == "onnx":
        # The network an fp32 export loads (merged encoder + heads), exported as it is; decoding stays in the codec.
        net = assemble_span_network(network.eval(), module.net.head_state(), torch.float32)
        manifest["onnx"] = write_onnx(net, module.codec, folder, dtype)
        network.config.save_pretrained(folder)
    else:
        write_weights(network.eval(), folder, dtype, module.family)
    module.tokenizer.save_pretrained(folder)
    if module.family == "span" and runtime == "torch":
        save_file(module.net.head_state(), str(folder / HEAD_WEIGHTS))
    write_manifest(folder, manifest)
    (folder / CARD).write_text(render_card(manifest), encoding="utf-8")
    return manifest


def write_ensemble(
    members: list[tuple[ExtractorModule, dict[str, Any], Path]], folder: Path, dtype: str, runtime: str = "torch"
) -> dict:
    """Write an ensemble of ``(module, checkpoint, source)`` members into the empty ``folder``; returns its manifest."""
    folders = [member_folder(i) for i in range(len(members))]
    manifests = []
    for sub, (module, ckpt, source) in zip(folders, members):
        (folder / sub).mkdir(parents=True)
        manifests.append(write_export(module, ckpt, source, folder / sub, dtype, runtime))
    members[0][0].tokenizer.save_pretrained(folder)  # shared: check_members compared them
    manifest = {**ensemble_manifest(manifests, folders, dtype), "runtime": runtime}
    write_manifest(folder, manifest)
    (folder / CARD).write_text(render_ensemble_card(manifest), encoding="utf-8")
    return manifest


def check_format(runtime: str, dtype: str) -> None:
    """Refuse a ``--format``/``--dtype`` pair that cannot be exported, before any checkpoint is read.

    Raises:
        SentexError: unknown dtype or format, a dtype ONNX exports lack, or a missing ONNX package.
    """
    if dtype not in DTYPES:
        raise SentexError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if runtime not in RUNTIMES:
        raise SentexError(f"--format must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnx":
        if dtype not in ONNX_DTYPES:
            raise SentexError(f"--format onnx takes --dtype {' or '.join(ONNX_DTYPES)}, got {dtype!r}")
        for package in ("onnx", "onnxscript", "onnxruntime"):
            import_optional(package, "--format onnx")


def export(
    ckpt_path: str | Path | Sequence[str | Path],
    out: str | Path,
    dtype: str = "fp32",
    overwrite: bool = False,
    runtime: str = "torch",
) -> dict[str, Any]:
    """Export a checkpoint, or an ensemble of span checkpoints, to ``out`` atomically; returns the manifest.

    Args:
        ckpt_path: one checkpoint, or a list of them (two or more make an ensemble folder; a list
            of one is a single-model export).
        out: folder to create.
        dtype: weight precision, of every member alike.
        overwrite: replace an existing ``out``.
        runtime: ``torch`` (weight files) or ``onnx`` (an ONNX graph per model; span models, fp32 or int8).

    Raises:
        SentexError: unknown dtype or format, ``out`` exists without ``overwrite``, a bad checkpoint,
            a non-span or LSTM-head checkpoint for ONNX, or ensemble members that do not share the tokenizer and
            decoding settings.
    """
    paths = [Path(ckpt_path)] if isinstance(ckpt_path, (str, Path)) else [Path(p) for p in ckpt_path]
    if not paths:
        raise SentexError("--ckpt_path: no checkpoint to export")
    check_format(runtime, dtype)
    out = Path(out)
    if out.exists() and not overwrite:
        raise SentexError(f"{out} already exists; pass --overwrite to replace it")
    # Every member is held at once: checked before anything is written (the loaded ensemble holds them all too).
    loaded = [(*module_from_checkpoint(path, full_precision=True), path) for path in paths]
    for module, _, path in loaded:
        if runtime == "onnx" and module.family not in ONNX_FAMILIES:
            raise SentexError(f"{path}: a {module.family} checkpoint; --format onnx exports span models only")
        if runtime == "onnx" and module.net.lstm is not None:
            # torch.export (torch 2.13) specialises the LSTM to the traced length: that length only would run.
            raise SentexError(f"{path}: --format onnx cannot export the LSTM head (head_lstm); use --format torch")
    if len(loaded) > 1:
        check_members(paths, [module for module, _, _ in loaded])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with torch.no_grad():
            if len(loaded) == 1:
                manifest = write_export(*loaded[0], tmp, dtype, runtime)
            else:
                manifest = write_ensemble(loaded, tmp, dtype, runtime)
        make_ordinary(tmp)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def folder_size(path: Path) -> int:
    """Bytes on disk of a file or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sentex export", description="Merge LoRA, optionally quantize, and write a self-contained model folder."
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        action="append",
        help="sentex checkpoint (.ckpt) to export; repeat it to export span checkpoints as one ensemble",
    )
    parser.add_argument("--out", required=True, help="folder to create")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES, help="weight precision (default: fp32)")
    parser.add_argument(
        "--format",
        dest="runtime",
        default="torch",
        choices=RUNTIMES,
        help="torch: weight files sentex runs with torch (default); onnx: an ONNX graph for ONNX Runtime "
        f"(span models, --dtype {' or '.join(ONNX_DTYPES)})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sentex export``."""
    args = parse_args(argv or [])
    manifest = export(args.ckpt_path, args.out, args.dtype, args.overwrite, args.runtime)
    size = folder_size(Path(args.out)) / 2**20
    what = f"{manifest['family']} model"
    if manifest.get("ensemble"):
        what = f"{manifest['family']} ensemble of {len(manifest['ensemble']['members'])} members"
    how = f"{args.dtype}, ONNX" if args.runtime == "onnx" else args.dtype
    print(f"sentex: exported {what} ({how}, {size:.1f} MiB) to {args.out}")
