"""Rebuilding models from what training and export saved, for the export writer and the loader alike.

Two things are built from stored parts on both sides of an export:

- a checkpoint's LightningModule (:func:`module_from_checkpoint`): ``sentex export`` merges and
  writes it, :func:`sentex.deploy.load.load` runs it;
- a span network from an encoder and head weights (:func:`assemble_span_network`): an exported span
  folder is loaded through it, and ``sentex export --format onnx`` builds the graph it exports with it,
  so the graph is the network a torch fp32 export would load.

They live here, not in :mod:`sentex.deploy.load`, so the writer (:mod:`sentex.deploy.export`) does not
depend on the reader: both depend on this module.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sentex.deploy.format import HEAD_WEIGHTS
from sentex.errors import CheckpointError
from sentex.io.checkpoints import read_checkpoint
from sentex.models.base import ExtractorModule
from sentex.models.causal import CausalExtractor
from sentex.models.classifier import SentimentClassifier
from sentex.models.components.span_network import SpanNetwork
from sentex.models.seq2seq import Seq2SeqExtractor
from sentex.models.span import SpanExtractor

# Checkpoint family → the LightningModule that rebuilds it.
FAMILIES: dict[str, type[ExtractorModule]] = {
    "span": SpanExtractor,
    "seq2seq": Seq2SeqExtractor,
    "causal": CausalExtractor,
    "classifier": SentimentClassifier,
}


# --- checkpoints ---------------------------------------------------------------------------
def read_sentex_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (:func:`sentex.io.checkpoints.read_checkpoint`), checked to be sentex's.

    Raises:
        CheckpointError: the file is unreadable or not a sentex checkpoint.
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "sentex" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not a sentex checkpoint (no 'sentex' or 'hyper_parameters' entry)")
    return ckpt


def family_of(ckpt: dict[str, Any], path: Path) -> tuple[str, type[ExtractorModule]]:
    """The model family a checkpoint says it holds, and its LightningModule class.

    Raises:
        CheckpointError: a family sentex does not know (``path`` names the file in the message).
    """
    family = ckpt["sentex"].get("family")
    if family not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    return family, FAMILIES[family]


def module_from_checkpoint(path: str | Path, full_precision: bool = False) -> tuple[ExtractorModule, dict[str, Any]]:
    """Rebuild the LightningModule of a checkpoint; returns it (eval mode, CPU) and the raw checkpoint.

    Args:
        path: the checkpoint.
        full_precision: rebuild a QLoRA model on a float32 base instead of its 4-bit one (an export
            merges LoRA into full-precision weights; the adapters are the same either way).

    Raises:
        CheckpointError: the file is unreadable, not sentex's, or of an unknown family.
    """
    path = Path(path)
    ckpt = read_sentex_checkpoint(path)
    _, cls = family_of(ckpt, path)
    overrides = {"quantize_base": None} if full_precision and ckpt["hyper_parameters"].get("quantize_base") else {}
    with warnings.catch_warnings():
        # By design a checkpoint lacks the frozen base weights; Lightning warns about each one.
        warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in")
        module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
    return module.eval(), ckpt


def checkpoint_metrics(ckpt: dict[str, Any]) -> dict[str, float]:
    """The monitored validation score of a checkpoint (e.g. ``{"val/jaccard": 0.70}``), if it has one."""
    out = {}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and state.get("monitor") and state.get("best_model_score") is not None:
            out[state["monitor"]] = round(float(state["best_model_score"]), 6)
    return out


# --- span networks -------------------------------------------------------------------------
def assemble_span_network(encoder: nn.Module, heads: dict[str, torch.Tensor], dtype: torch.dtype) -> SpanNetwork:
    """A span network of ``encoder`` and the head weights ``heads`` (network names), heads cast to ``dtype``.

    Joint scoring, the pair term's width and the LSTM are read off the heads, so an export needs no
    settings beyond its weights to be rebuilt as the network that was trained.

    Raises:
        KeyError: ``heads`` lacks a weight the network's heads need.
    """
    joint = "pair_start.weight" in heads
    pair_dim = heads["pair_start.weight"].shape[0] if joint else 64
    scoring, lstm = "joint" if joint else "independent", "lstm.weight_ih_l0" in heads
    net = SpanNetwork(encoder, head_dropout=0.0, scoring=scoring, pair_dim=pair_dim, lstm=lstm)
    missing = [k for k in net.head_state() if k not in heads]
    if missing:
        raise KeyError(f"{HEAD_WEIGHTS} lacks {missing[0]}")
    for name, child in net.named_children():
        if name not in ("encoder", "dropout"):
            child.load_state_dict({k.split(".", 1)[1]: v for k, v in heads.items() if k.startswith(f"{name}.")})
            child.to(dtype)
    return net.eval()
