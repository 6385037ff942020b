"""``load(path)``: one extractor for an exported folder or a sentex checkpoint::

    from sentex.deploy.load import load
    ex = load("models/sentex-int8")  # or a .ckpt
    ex.extract(["my phone died again, worst day"], ["negative"])  # -> ['worst day']

Both sources end in the same thing: an :class:`~sentex.models.components.pipeline.InferencePipeline`
of the family's network and codec, the very classes its LightningModule trains, so an exported model
tokenizes and decodes exactly like the model that was validated. An exported folder (layout:
:mod:`sentex.deploy.format`) is read without the base model (an ONNX export's network is its graph in an
ONNX Runtime session, :mod:`sentex.deploy.onnx_runtime`); an ensemble folder becomes a
:class:`~sentex.models.components.span_ensemble.SpanEnsemble` of its members' networks behind one
codec. A checkpoint holds only trainable weights, so its model is rebuilt from the saved
hyper-parameters (the frozen base comes from ``model_name_or_path``) with ``load_from_checkpoint``
(:mod:`sentex.deploy.assembly`, which ``sentex export`` rebuilds models with too).

:func:`sentiment_labeller` is what ``sentex predict --data.sentiment_model`` hands the data module: the
data stage comes before this one, so it takes the classifier ready to call instead of loading it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from sentex.data.datamodule import SentimentLabeller
from sentex.data.tweets import SENTIMENTS
from sentex.deploy.assembly import assemble_span_network, checkpoint_metrics, module_from_checkpoint
from sentex.deploy.format import (
    HEAD_WEIGHTS,
    KEEP_FP32,
    QUANTIZERS,
    TORCH_DTYPES,
    ensemble_members,
    head_state_from_file,
    read_manifest,
    runtime_of,
    weights_file,
)
from sentex.deploy.onnx_runtime import onnx_span_network
from sentex.deploy.sentiment import Classifier, check_sentiment_classifier, fill_sentiments
from sentex.errors import CheckpointError, SentexError
from sentex.io.checkpoints import first_line
from sentex.models.components.causal_codec import CausalCodec
from sentex.models.components.classifier_codec import ClassifierCodec
from sentex.models.components.pipeline import InferencePipeline
from sentex.models.components.seq2seq_codec import Seq2SeqCodec
from sentex.models.components.span_codec import SpanCodec
from sentex.models.components.span_ensemble import SpanEnsemble
from sentex.models.components.span_network import SpanNetwork

# Generative families: transformers' model class of their exports, and their codec.
GENERATIVE = {"seq2seq": (AutoModelForSeq2SeqLM, Seq2SeqCodec), "causal": (AutoModelForCausalLM, CausalCodec)}


class Extractor:
    """A loaded model that returns the sentiment phrase of each tweet.

    Attributes:
        family: ``"span"`` (answers are exact substrings) or ``"seq2seq"`` (generated, then
            mapped back onto the tweet's spelling where possible).
        info: the export manifest (``sentex.json``); for a checkpoint, a minimal one.
    """

    def __init__(
        self, pipeline: InferencePipeline, family: str, info: dict[str, Any], sentiment_model: Classifier | None = None
    ) -> None:
        self.pipeline = pipeline.eval()
        self.family = family
        self.info = info
        self.sentiment_model = sentiment_model
        # Per-call generation settings are set on the shared runner; a web app may call from several threads.
        self._lock = threading.Lock()

    def extract(
        self,
        texts: Sequence[str],
        sentiments: Sequence[str | None] | None = None,
        batch_size: int = 16,
        **generation: Any,
    ) -> list[str]:
        """Predict the phrase for each ``(text, sentiment)``.

        Rows are batched by length (less padding), and answers come back in input order.

        Args:
            texts: tweets.
            sentiments: ``negative``, ``neutral`` or ``positive``, one per tweet. With a sentiment model
                (``load(..., sentiment_model=...)``) it may be left out, or hold ``None``/``""``/``"auto"``
                for rows whose sentiment the classifier should predict.
            batch_size: rows per forward pass.
            **generation: ``generate`` settings for generative models (``num_beams``, ``max_new_tokens``, ...).

        Raises:
            SentexError: mismatched lengths, a missing sentiment and no sentiment model, an unknown
                sentiment, or generation settings for a span model.
        """
        sentiments = self.sentiments_for(texts, sentiments, batch_size)
        if generation and self.family not in GENERATIVE:
            raise SentexError(f"a {self.family} model takes no generation settings (got {', '.join(generation)})")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock:
            return self._extract_locked(texts, sentiments, batch_size, order, generation)

    def sentiments_for(
        self, texts: Sequence[str], sentiments: Sequence[str | None] | None, batch_size: int = 16
    ) -> list[str]:
        """The sentiment of each row: as given, or the sentiment model's where missing; checked.

        Raises:
            SentexError: mismatched lengths, a text that is not a string, a missing sentiment without a
                sentiment model, or an unknown sentiment.
        """
        if sentiments is not None and len(texts) != len(sentiments):
            raise SentexError(f"got {len(texts)} texts but {len(sentiments)} sentiments")
        check_texts(texts, batch_size)
        filled = fill_sentiments(texts, sentiments, self.sentiment_model, batch_size)
        for i, sentiment in enumerate(filled):
            if sentiment not in SENTIMENTS:
                hint = "" if sentiment else " (no sentiment: load the extractor with a sentiment model to predict it)"
                raise SentexError(f"row {i}: sentiment {sentiment!r} is not one of {', '.join(SENTIMENTS)}{hint}")
        return filled

    def _extract_locked(
        self, texts: Sequence[str], sentiments: Sequence[str], batch_size: int, order: list[int], generation: dict
    ) -> list[str]:
        out: list[str] = [""] * len(texts)
        codec = self.pipeline.codec
        saved = getattr(codec, "generation", None)
        try:
            if generation:
                codec.generation = {**saved, **generation}
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    rows = [{"textID": str(i), "text": texts[i], "sentiment": sentiments[i]} for i in idx]
                    for i, pred in zip(idx, self.pipeline.extract(self.pipeline.collate(rows))):
                        out[i] = pred
        finally:
            if generation:
                codec.generation = saved
        return out


def check_texts(texts: Sequence[str], batch_size: int) -> None:
    """Raise :class:`SentexError` naming a bad batch size or the first text that is not a string."""
    if batch_size < 1:
        raise SentexError(f"batch_size must be at least 1, got {batch_size}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise SentexError(f"row {i}: text must be a string, got {type(text).__name__}")


def load(path: str | Path, sentiment_model: str | Path | Classifier | None = None) -> Extractor | Classifier:
    """Load an exported folder (with ``sentex.json``) or a sentex ``.ckpt`` for inference on CPU.

    Args:
        path: the model: an extractor (span, seq2seq, causal) or a sentiment classifier.
        sentiment_model: a classifier (folder, checkpoint or loaded) that predicts the sentiment of
            rows given without one; only for an extractor.

    Returns:
        An :class:`Extractor`, or a :class:`~sentex.deploy.sentiment.Classifier` for a classifier.

    Raises:
        CheckpointError: the path is missing, or not a readable sentex checkpoint/export.
        SentexError: a sentiment model that is not a tweet-sentiment classifier, or one given to a classifier.
    """
    model = load_model(Path(path))
    if sentiment_model is None:
        return model
    if not isinstance(model, Extractor):
        raise SentexError(f"{path}: a sentiment model goes with an extractor, and this is a {model.family} model")
    classifier = sentiment_model
    if not isinstance(classifier, Classifier):
        classifier = load_model(Path(sentiment_model))
    model.sentiment_model = check_sentiment_classifier(classifier, str(sentiment_model))
    return model


def load_model(path: Path) -> Extractor | Classifier:
    """The model of a folder or checkpoint, without a sentiment model."""
    if path.is_dir():
        return load_folder(path)
    if path.is_file():
        return load_checkpoint(path)
    raise CheckpointError(f"{path}: no such checkpoint or exported model folder")


def sentiment_labeller(path: str | Path, option: str = "--data.sentiment_model") -> SentimentLabeller:
    """Texts → sentiments by the sentiment classifier at ``path``, loaded and checked at the first call.

    The :class:`~sentex.data.datamodule.TweetDataModule`'s ``sentiment_labeller``: the CLI builds it
    from ``--data.sentiment_model`` and the data module calls it only when some rows lack a sentiment,
    so a run whose rows all have one never loads the classifier.

    Args:
        path: a sentiment classifier export or checkpoint.
        option: how the user named it, for the one-line error of a model that is no sentiment classifier.

    Returns:
        A callable ``(texts, batch_size) -> sentiments``, one per text.
    """
    loaded: list[Classifier] = []  # filled at the first call, then reused

    def label(texts: Sequence[str], batch_size: int) -> list[str]:
        if not loaded:
            loaded.append(check_sentiment_classifier(load_model(Path(path)), f"{option} {path}"))
        return loaded[0].classify(texts, batch_size)

    return label


# --- checkpoints ---------------------------------------------------------------------------
def load_checkpoint(path: Path) -> Extractor | Classifier:
    """An extractor (or classifier) over the (un-merged) model of a sentex checkpoint."""
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
    if module.family == "classifier":
        return Classifier(module.net, module.codec, info)
    return Extractor(InferencePipeline(module.net, module.codec), module.family, info)


# --- exported folders ----------------------------------------------------------------------
def load_network(folder: Path, auto_class: Any, family: str, dtype: str) -> nn.Module:
    """The transformers model of an export, in eval mode; int8 / int4 get quantized Linears."""
    if dtype in TORCH_DTYPES:
        return auto_class.from_pretrained(folder, dtype=TORCH_DTYPES[dtype]).eval()
    model = auto_class.from_config(AutoConfig.from_pretrained(folder))
    return QUANTIZERS[dtype].load(model, folder / weights_file(dtype), KEEP_FP32[family])


def span_network(folder: Path, dtype: str) -> SpanNetwork:
    """The exported span network: encoder of ``dtype`` plus the float heads of ``head.safetensors``."""
    encoder = load_network(folder, AutoModel, "span", dtype)
    heads = head_state_from_file(load_file(str(folder / HEAD_WEIGHTS)))
    return assemble_span_network(encoder, heads, TORCH_DTYPES.get(dtype, torch.float32))


def folder_span_network(folder: Path, manifest: dict[str, Any]) -> nn.Module:
    """The span network of a single-model export: torch's, or the ONNX graph in an ONNX Runtime session."""
    if runtime_of(manifest) == "onnx":
        return onnx_span_network(folder, weights_file(manifest["dtype"], "onnx"))
    return span_network(folder, manifest["dtype"])


def load_folder(folder: Path) -> Extractor | Classifier:
    """An extractor over an exported model folder (a single model or an ensemble of span models), or a classifier."""
    manifest = read_manifest(folder)
    family, dtype, settings = manifest["family"], manifest["dtype"], manifest["settings"]
    members = ensemble_members(folder, manifest)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if members is not None:  # a member's failure is a CheckpointError naming the member's folder
            pipeline = InferencePipeline(
                SpanEnsemble(list(map(member_network, members))), SpanCodec(tokenizer, **settings)
            )
        elif family == "span":
            pipeline = InferencePipeline(folder_span_network(folder, manifest), SpanCodec(tokenizer, **settings))
        elif family == "classifier":
            model = load_network(folder, AutoModelForSequenceClassification, family, dtype)
            return Classifier(model, ClassifierCodec(tokenizer, **settings), manifest)
        else:
            auto_class, codec = GENERATIVE[family]
            pipeline = InferencePipeline(load_network(folder, auto_class, family, dtype), codec(tokenizer, **settings))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as err:  # TypeError: unknown settings
        raise CheckpointError(f"{folder}: incomplete or corrupt export: {first_line(err)}") from None
    return Extractor(pipeline, family, manifest)


def member_network(folder: Path) -> nn.Module:
    """The span network of one ensemble member (a single-model export inside the ensemble folder)."""
    manifest = read_manifest(folder)
    if manifest["family"] != "span" or manifest.get("ensemble") is not None:
        raise CheckpointError(f"{folder}: an ensemble member must be a single span model")
    try:
        return folder_span_network(folder, manifest)
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder}: incomplete or corrupt export: {first_line(err)}") from None
