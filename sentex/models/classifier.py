"""Sentiment classification: any encoder or decoder through ``AutoModelForSequenceClassification``.

The network (``self.net``, a transformers model, LoRA-wrapped or not) and the codec
(``self.codec``, :class:`~sentex.models.components.classifier_codec.ClassifierCodec`: tokenizer,
label names, truncation) are plain objects; this module only trains and evaluates them, so an
export or ``sentex.load`` can run ``codec.predict_proba(net, texts)`` without Lightning.

Labels come from the data: when ``labels`` is not set, the data module's label names (the sorted
labels of the training file, or the tweet sentiments) are adopted in ``setup`` and stored in the
hyper-parameters, so every checkpoint records its class names and output order.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from sentex.errors import DataError
from sentex.models.base import Batch, ExtractorModule
from sentex.models.classifier_metrics import classification_metrics, confusion_metric
from sentex.models.components.classifier_codec import ClassifierCodec
from sentex.models.components.classifier_network import HEAD_NAMES, build_classifier_network, load_tokenizer
from sentex.models.components.pretrained import resolve_model_path

log = logging.getLogger(__name__)


class SentimentClassifier(ExtractorModule):
    """A sequence classifier (encoder or decoder), LoRA or full fine-tuning, with the classification metrics.

    It shares sentex's training step (non-finite-loss guard), optimizer and schedule, and lean
    checkpoints (trainable weights only) with the extraction families; ``family`` is ``classifier``.

    Args:
        model_name_or_path: model id or folder; ``packaged:all-MiniLM-L6-v2`` is the offline encoder.
            Decoders (GPT-2, SmolLM, ...) classify from their last non-padding token.
        labels: class names in output order; ``null`` takes them from the data.
        max_length: maximum tokens per text.
        truncation: ``head`` (first tokens) or ``head_tail`` (start and end of long texts).
        head_share: share of ``max_length`` kept from the start under ``head_tail``.
        lora_r: LoRA rank; ``null`` fine-tunes every weight.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: modules that get adapters; default every linear layer outside the head.
        classifier_dropout: dropout before the head where the architecture has one (``null``: the model's).
        head_learning_rate: learning rate of the classification head (default: ``learning_rate``).
        label_smoothing: cross-entropy label smoothing.
        lr_schedule: decay after warm-up, ``cosine`` or ``linear``.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before the decay.
    """

    family = "classifier"

    def __init__(
        self,
        model_name_or_path: str = "packaged:all-MiniLM-L6-v2",
        labels: list[str] | None = None,
        max_length: int = 128,
        truncation: str = "head",
        head_share: float = 0.25,
        lora_r: int | None = None,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        classifier_dropout: float | None = None,
        head_learning_rate: float | None = None,
        label_smoothing: float = 0.0,
        lr_schedule: str = "linear",
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_steps, lr_schedule)
        self.save_hyperparameters()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        self._tokenizer = load_tokenizer(resolve_model_path(model_name_or_path))
        self.net: torch.nn.Module | None = None
        self.codec: ClassifierCodec | None = None
        self.classified_rows: list[dict[str, Any]] = []
        if labels:
            self._build(list(labels))

    # --- building ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded before the codec, which waits for the label names)."""
        return self._tokenizer

    @property
    def label_names(self) -> list[str] | None:
        """The class names in output order (``None`` until the data named them)."""
        return list(self.codec.labels) if self.codec is not None else None

    def _build(self, labels: list[str]) -> None:
        hp = self.hparams
        self.codec = ClassifierCodec(self.tokenizer, labels, hp.max_length, hp.truncation, hp.head_share)
        self.net = build_classifier_network(
            resolve_model_path(hp.model_name_or_path),
            labels,
            self.tokenizer,
            hp.lora_r,
            hp.lora_alpha,
            hp.lora_dropout,
            hp.lora_target_modules,
            hp.classifier_dropout,
        )
        self.hparams["labels"] = list(labels)  # so the checkpoint records them
        n = len(labels)
        self.val_metrics = classification_metrics("val/", n)
        self.test_metrics = classification_metrics("test/", n)
        self.val_confusion, self.test_confusion = confusion_metric(n), confusion_metric(n)

    def setup(self, stage: str) -> None:
        """Adopt the data module's labels (the data module has read its files by now), or check them."""
        try:
            datamodule = self.trainer.datamodule
        except (RuntimeError, AttributeError):  # ``setup`` called by hand (no Trainer), or under Fabric
            datamodule = None
        data_labels = getattr(datamodule, "label_names", None)
        if self.codec is None:
            if not data_labels:
                raise DataError("model.labels: not set, and the data module named no labels; set --model.labels")
            self._build(list(data_labels))
            self.to(self.device)
        elif data_labels and set(data_labels) - set(self.codec.labels):
            extra = sorted(set(data_labels) - set(self.codec.labels))
            raise DataError(
                f"the data has label(s) {', '.join(extra)} that the model does not know"
                f" (its labels: {', '.join(self.codec.labels)})"
            )

    def lr_overrides(self) -> dict[str, float]:
        lr = self.hparams.head_learning_rate
        if not lr:
            return {}
        head = {name for name, p in self.net.named_parameters() if p.requires_grad and _is_head(name)}
        return {f"net.{name}": lr for name in head}

    # --- steps --------------------------------------------------------------------------------
    def logits(self, batch: Batch) -> torch.Tensor:
        return self.codec.logits(self.net, batch)

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["labels"], label_smoothing=self.hparams.label_smoothing)

    @torch.no_grad()
    def extract(self, batch: Batch) -> list[str]:
        """The predicted label of each row (what ``extract`` means for this family)."""
        return self.codec.decode(self.logits(batch).softmax(dim=-1))

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """``(len(texts), classes)`` probabilities in the order of :attr:`label_names`."""
        return self.codec.predict_proba(self.net, texts, batch_size)

    def _evaluate(self, batch: Batch, metrics, confusion, stage: str) -> torch.Tensor:
        logits = self.logits(batch)
        probs = logits.float().softmax(dim=-1)
        target = batch["labels"]
        metrics.update(probs, target)
        confusion.update(probs, target)
        self.log(f"{stage}/loss", F.cross_entropy(logits.float(), target), batch_size=len(target), sync_dist=True)
        return probs

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_confusion, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        probs = self._evaluate(batch, self.test_metrics, self.test_confusion, "test").cpu()
        preds = self.codec.decode(probs)
        for i, pred in enumerate(preds):
            self.classified_rows.append(
                {
                    "id": batch["id"][i],
                    "text": batch["text"][i],
                    "label": batch["label"][i],
                    "prediction": pred,
                    "probs": [round(p, 6) for p in probs[i].tolist()],
                }
            )

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, list]:
        """Columns of ``sentex predict``'s file: ``id``, ``prediction``, ``confidence``, ``prob_<label>``..."""
        probs = self.logits(batch).float().softmax(dim=-1).cpu()
        out: dict[str, list] = {"id": list(batch["id"]), "prediction": self.codec.decode(probs)}
        out["confidence"] = [round(p, 6) for p in probs.max(dim=-1).values.tolist()]
        for c, name in enumerate(self.codec.labels):
            out[f"prob_{name}"] = [round(p, 6) for p in probs[:, c].tolist()]
        return out

    def _finish(self, metrics, confusion, stage: str) -> None:
        self.log_dict(metrics.compute(), sync_dist=True)
        metrics.reset()
        matrix = confusion.compute().tolist()
        confusion.reset()
        self._log_confusion_image(matrix, stage)

    def _log_confusion_image(self, matrix: list[list[int]], stage: str) -> None:
        logger = self.logger
        if not isinstance(logger, TensorBoardLogger) or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        from sentex.models.confusion_image import confusion_image

        try:
            image = confusion_image(matrix, self.codec.labels, f"{stage}, step {self.global_step}")
        except ImportError:
            _warn_once("matplotlib is not installed: no confusion-matrix image in TensorBoard (pip install matplotlib)")
            return
        logger.experiment.add_image(f"{stage}/confusion_matrix", image, self.global_step, dataformats="HWC")

    def on_validation_epoch_end(self) -> None:
        self._finish(self.val_metrics, self.val_confusion, "val")

    def on_test_epoch_start(self) -> None:
        self.classified_rows = []

    def on_test_epoch_end(self) -> None:
        self._finish(self.test_metrics, self.test_confusion, "test")


def _is_head(name: str) -> bool:
    """Whether a parameter name (under the network, peft-wrapped or not) belongs to the classification head.

    >>> _is_head("classifier.weight"), _is_head("base_model.model.score.weight"), _is_head("bert.pooler.dense.weight")
    (True, True, False)
    """
    return any(part in HEAD_NAMES for part in name.split(".")[:4])


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)
