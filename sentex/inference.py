"""``load(path)``: one extractor for an exported folder or a sentex checkpoint::

    from sentex.inference import load
    ex = load("models/sentex-int8")  # or a .ckpt
    ex.extract(["my phone died again, worst day"], ["negative"])  # -> ['worst day']

Both sources end in the same thing: a *runner* with the training module's own ``collate`` and
``extract``, so an exported model tokenizes and decodes exactly like the model that was validated.
An exported folder (see :mod:`sentex.export` for the layout) is read without the base model; a
checkpoint holds only trainable weights, so its model is rebuilt from the saved hyper-parameters
(the frozen base comes from ``model_name_or_path``) with ``load_from_checkpoint``.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

from sentex.checkpointing import first_line, read_checkpoint
from sentex.errors import CheckpointError, SentexError
from sentex.int4 import INT4_WEIGHTS, int4_linears, load_int4_into
from sentex.metrics import SENTIMENTS
from sentex.models import ExtractorModule, Seq2SeqExtractor, SpanExtractor
from sentex.quantize import INT8_WEIGHTS, KEEP_FP32, dynamic_int8, load_int8_into

MANIFEST = "sentex.json"
HEAD_WEIGHTS = "head.safetensors"
FAMILIES: dict[str, type[ExtractorModule]] = {"span": SpanExtractor, "seq2seq": Seq2SeqExtractor}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# sentex's own weight files (see sentex.quantize, sentex.int4); their kernels run on CPU only.
QUANTIZED_DTYPES = ("int8", "int4")
DTYPES = (*TORCH_DTYPES, *QUANTIZED_DTYPES)


class _SpanRunner(nn.Module):
    """An exported span model; tokenization and decoding are ``SpanExtractor``'s own methods."""

    collate = SpanExtractor.collate
    span_log_probs = SpanExtractor.span_log_probs
    extract = SpanExtractor.extract

    def __init__(self, tokenizer: Any, encoder: nn.Module, head: nn.Linear, settings: dict[str, Any]) -> None:
        super().__init__()
        self.tokenizer, self.encoder, self.head = tokenizer, encoder, head
        self.dropout = nn.Identity()
        self.hparams = SimpleNamespace(**settings)


class _Seq2SeqRunner(nn.Module):
    """An exported seq2seq model; prompting and decoding are ``Seq2SeqExtractor``'s own methods."""

    collate = Seq2SeqExtractor.collate
    extract = Seq2SeqExtractor.extract

    def __init__(self, tokenizer: Any, model: nn.Module, settings: dict[str, Any]) -> None:
        super().__init__()
        self.tokenizer, self.model = tokenizer, model
        self.generation = dict(settings.get("generation") or {})
        self.hparams = SimpleNamespace(**settings)


class Extractor:
    """A loaded model that returns the sentiment phrase of each tweet.

    Attributes:
        family: ``"span"`` (answers are exact substrings) or ``"seq2seq"`` (generated, then
            mapped back onto the tweet's spelling where possible).
        info: the export manifest (``sentex.json``); for a checkpoint, a minimal one.
    """

    def __init__(self, runner: nn.Module, family: str, info: dict[str, Any]) -> None:
        self.runner = runner.eval()
        self.family = family
        self.info = info
        # Per-call generation settings are set on the shared runner; a web app may call from several threads.
        self._lock = threading.Lock()

    def extract(
        self, texts: Sequence[str], sentiments: Sequence[str], batch_size: int = 16, **generation: Any
    ) -> list[str]:
        """Predict the phrase for each ``(text, sentiment)``.

        Rows are batched by length (less padding), and answers come back in input order.

        Args:
            texts: tweets.
            sentiments: ``negative``, ``neutral`` or ``positive``, one per tweet.
            batch_size: rows per forward pass.
            **generation: ``generate`` settings for seq2seq models (``num_beams``, ``max_new_tokens``, ...).

        Raises:
            SentexError: mismatched lengths, an unknown sentiment, or generation settings for a span model.
        """
        check_inputs(texts, sentiments, batch_size)
        if generation and self.family != "seq2seq":
            raise SentexError(f"a {self.family} model takes no generation settings (got {', '.join(generation)})")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock:
            return self._extract_locked(texts, sentiments, batch_size, order, generation)

    def _extract_locked(
        self, texts: Sequence[str], sentiments: Sequence[str], batch_size: int, order: list[int], generation: dict
    ) -> list[str]:
        out: list[str] = [""] * len(texts)
        saved = getattr(self.runner, "generation", None)
        try:
            if generation:
                self.runner.generation = {**saved, **generation}
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    rows = [{"textID": str(i), "text": texts[i], "sentiment": sentiments[i]} for i in idx]
                    for i, pred in zip(idx, self.runner.extract(self.runner.collate(rows))):
                        out[i] = pred
        finally:
            if generation:
                self.runner.generation = saved
        return out


def check_inputs(texts: Sequence[str], sentiments: Sequence[str], batch_size: int) -> None:
    """Raise :class:`SentexError` naming the first bad argument or row."""
    if len(texts) != len(sentiments):
        raise SentexError(f"got {len(texts)} texts but {len(sentiments)} sentiments")
    if batch_size < 1:
        raise SentexError(f"batch_size must be at least 1, got {batch_size}")
    for i, (text, sentiment) in enumerate(zip(texts, sentiments)):
        if not isinstance(text, str):
            raise SentexError(f"row {i}: text must be a string, got {type(text).__name__}")
        if sentiment not in SENTIMENTS:
            raise SentexError(f"row {i}: sentiment {sentiment!r} is not one of {', '.join(SENTIMENTS)}")


def load(path: str | Path) -> Extractor:
    """Load an exported folder (with ``sentex.json``) or a sentex ``.ckpt`` for inference on CPU.

    Raises:
        CheckpointError: the path is missing, or not a readable sentex checkpoint/export.
    """
    path = Path(path)
    if path.is_dir():
        return load_folder(path)
    if path.is_file():
        return load_checkpoint(path)
    raise CheckpointError(f"{path}: no such checkpoint or exported model folder")


# --- checkpoints ---------------------------------------------------------------------------
def read_sentex_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (:func:`sentex.checkpointing.read_checkpoint`), checked to be sentex's."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "sentex" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not a sentex checkpoint (no 'sentex' or 'hyper_parameters' entry)")
    return ckpt


def family_of(ckpt: dict[str, Any], path: Path) -> tuple[str, type[ExtractorModule]]:
    """The model family a checkpoint says it holds, and its LightningModule class."""
    family = ckpt["sentex"].get("family")
    if family not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    return family, FAMILIES[family]


def module_from_checkpoint(path: str | Path) -> tuple[ExtractorModule, dict[str, Any]]:
    """Rebuild the LightningModule of a checkpoint; returns it (eval mode, CPU) and the raw checkpoint."""
    path = Path(path)
    ckpt = read_sentex_checkpoint(path)
    _, cls = family_of(ckpt, path)
    with warnings.catch_warnings():
        # By design a checkpoint lacks the frozen base weights; Lightning warns about each one.
        warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in")
        module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return module.eval(), ckpt


def checkpoint_metrics(ckpt: dict[str, Any]) -> dict[str, float]:
    """The monitored validation score of a checkpoint (e.g. ``{"val/jaccard": 0.70}``), if it has one."""
    out = {}
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and state.get("monitor") and state.get("best_model_score") is not None:
            out[state["monitor"]] = round(float(state["best_model_score"]), 6)
    return out


def load_checkpoint(path: Path) -> Extractor:
    """An extractor over the (un-merged) model of a sentex checkpoint."""
    module, ckpt = module_from_checkpoint(path)
    info = {
        "source": "checkpoint",
        "path": str(path),
        "family": module.family,
        "dtype": "fp32",
        "base_model": ckpt["hyper_parameters"].get("model_name_or_path"),
        "hyper_parameters": dict(ckpt["hyper_parameters"]),
        "metrics": checkpoint_metrics(ckpt),
        "sentex_version": ckpt["sentex"].get("version"),
    }
    return Extractor(module, module.family, info)


# --- exported folders ----------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``sentex.json``."""
    file = folder / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a sentex export (no {MANIFEST})") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: unreadable manifest: {err}") from None
    for field in ("family", "dtype", "settings"):
        if field not in manifest:
            raise CheckpointError(f"{file}: manifest has no '{field}' entry")
    if manifest["family"] not in FAMILIES:
        raise CheckpointError(f"{file}: unknown model family {manifest['family']!r}")
    if manifest["dtype"] not in DTYPES:
        raise CheckpointError(f"{file}: unknown dtype {manifest['dtype']!r}")
    return manifest


def load_network(folder: Path, auto_class: Any, family: str, dtype: str) -> nn.Module:
    """The transformers model of an export, in eval mode; int8 / int4 get quantized Linears."""
    if dtype in TORCH_DTYPES:
        return auto_class.from_pretrained(folder, dtype=TORCH_DTYPES[dtype]).eval()
    model = auto_class.from_config(AutoConfig.from_pretrained(folder))
    if dtype == "int4":
        quantized, _ = load_int4_into(model, folder / INT4_WEIGHTS)
        return int4_linears(model.eval(), quantized)
    packed = load_int8_into(model, folder / INT8_WEIGHTS)
    return dynamic_int8(model.eval(), KEEP_FP32[family], packed)


def load_folder(folder: Path) -> Extractor:
    """An extractor over an exported model folder."""
    manifest = read_manifest(folder)
    family, dtype = manifest["family"], manifest["dtype"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if family == "span":
            encoder = load_network(folder, AutoModel, family, dtype)
            head_state = load_file(str(folder / HEAD_WEIGHTS))
            head = nn.Linear(head_state["weight"].shape[1], 2)
            head.load_state_dict(head_state)
            compute = TORCH_DTYPES.get(dtype, torch.float32)
            runner: nn.Module = _SpanRunner(tokenizer, encoder, head.to(compute), manifest["settings"])
        else:
            model = load_network(folder, AutoModelForSeq2SeqLM, family, dtype)
            runner = _Seq2SeqRunner(tokenizer, model, manifest["settings"])
    except (OSError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{folder}: incomplete or corrupt export: {first_line(err)}") from None
    return Extractor(runner, family, manifest)
