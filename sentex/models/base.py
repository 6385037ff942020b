"""What every sentex LightningModule shares: steps, metrics, optimizer, lean checkpoints.

A model family (seq2seq, span, ...) subclasses :class:`ExtractorModule` and implements three
things: ``collate`` (rows → tensors), ``compute_loss`` and ``extract`` (batch → phrases).
Everything else — logging keys, metric objects, the schedule, the non-finite-loss guard,
adapter-only checkpoints — lives here once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from sentex.errors import CheckpointError, NonFiniteLossError
from sentex.metrics import extraction_metrics, jaccard
from sentex.models.optim import SCHEDULES, build_optimizer
from sentex.version import __version__

Batch = dict[str, Any]


class ExtractorModule(pl.LightningModule):
    """Base class: a model that extracts the sentiment phrase from a tweet.

    Args:
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_steps: optimizer steps of linear warm-up before the decay.
        lr_schedule: the decay after warm-up, ``cosine`` or ``linear`` (to 0 at the last step).
    """

    family: ClassVar[str] = "base"
    # Old state-dict key prefix → current one, for checkpoints of an earlier module layout.
    legacy_prefixes: ClassVar[dict[str, str]] = {}

    def __init__(
        self, learning_rate: float, weight_decay: float, warmup_steps: int, lr_schedule: str = "cosine"
    ) -> None:
        super().__init__()
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"model.lr_schedule must be one of {', '.join(SCHEDULES)}, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.val_metrics = extraction_metrics("val/")
        self.test_metrics = extraction_metrics("test/")
        self.test_rows: list[dict[str, Any]] = []
        # Checkpoints hold only trainable weights; the frozen base is rebuilt from its name/path.
        self.strict_loading = False

    # --- what a family implements -------------------------------------------------------
    # Every family keeps its tokenizer, batching and decoding in a codec (``self.codec``), the object
    # that exports and ``sentex.load`` run without Lightning.
    @property
    def tokenizer(self) -> Any:
        return self.codec.tokenizer

    @property
    def generation(self) -> dict[str, Any]:
        """``generate`` settings used by validation, test and predict (generative families; empty otherwise)."""
        return getattr(self.codec, "generation", {})

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        """Turn data-module rows (dicts of CSV fields) into a batch; keep the raw fields too."""
        return self.codec.collate(rows)

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        """Training loss of a labelled batch."""
        raise NotImplementedError

    def extract(self, batch: Batch) -> list[str]:
        """The predicted phrase for each row of a batch."""
        raise NotImplementedError

    def extract_with_scores(self, batch: Batch) -> tuple[list[str], list[dict[str, Any]] | None]:
        """The predictions and, for families that have them, per-row scores kept for stacking.

        ``sentex test`` writes the scores beside its per-row report (out-of-fold predictions).
        """
        return self.extract(batch), None

    def lr_overrides(self) -> dict[str, float]:
        """Parameter-name prefix → learning rate, for parts that train at their own rate."""
        return {}

    # --- steps ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}) with precision "
                f"'{self.trainer.precision}'. T5 models overflow in fp16 (transformers #5651, #23918): "
                "rerun with --trainer.precision bf16-mixed (Ampere+ GPUs) or 32, "
                "or lower --model.init_args.learning_rate if it diverged. "
                "Checkpoints written so far are kept."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        return loss

    def _evaluate(self, batch: Batch, metrics, stage: str) -> tuple[list[str], list[dict[str, Any]] | None]:
        preds, scores = self.extract_with_scores(batch) if stage == "test" else (self.extract(batch), None)
        metrics.update(preds, batch["selected_text"], batch["sentiment"])
        self.log(f"{stage}/loss", self.compute_loss(batch), batch_size=len(preds), sync_dist=True)
        return preds, scores

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        preds, scores = self._evaluate(batch, self.test_metrics, "test")
        for i, pred in enumerate(preds):
            row = {
                "textID": batch["textID"][i],
                "text": batch["text"][i],
                "sentiment": batch["sentiment"][i],
                "selected_text": batch["selected_text"][i],
                "prediction": pred,
                "jaccard": round(jaccard(pred, batch["selected_text"][i]), 6),
            }
            if scores is not None:
                row["scores"] = scores[i]
            self.test_rows.append(row)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, list[str]]:
        return {"textID": list(batch["textID"]), "selected_text": self.extract(batch)}

    def _log_metrics(self, metrics) -> None:
        # compute() already sums the states over processes; sync_dist only silences Lightning's warning.
        self.log_dict(metrics.compute(), prog_bar=False, sync_dist=True)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self.test_rows = []

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    # --- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = build_optimizer(
            self,
            self.learning_rate,
            self.weight_decay,
            self.warmup_steps,
            int(self.trainer.estimated_stepping_batches),
            self.lr_overrides(),
            self.lr_schedule,
            getattr(self, "optimizer_name", "adamw"),
            # fp16's gradient scaler unscales inside a fused step, after Lightning would clip.
            allow_fused=getattr(self.trainer.precision_plugin, "scaler", None) is None,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        """Clip as Lightning does, and also for a fused optimizer under bf16-mixed.

        Lightning refuses to clip with any optimizer that can unscale fp16 gradients itself (fused
        AdamW) under every mixed precision, but only fp16 has a gradient scaler: under bf16-mixed the
        gradients are the true ones and clipping them directly is what the unfused path does.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        # torch's fused Adam/AdamW/SGD are the optimizers that unscale inside ``step`` (what Lightning
        # refuses to clip for); ``defaults["fused"]`` is the public record of that choice.
        if gradient_clip_val and scaler is None and optimizer.defaults.get("fused"):
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if str(gradient_clip_algorithm or "norm") == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_fit_start(self) -> None:
        trainable, total = self.parameter_counts()
        rank_zero_info(
            f"sentex {self.family}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
        )

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # --- checkpoints ---------------------------------------------------------------------
    def trainable_state_keys(self) -> set[str]:
        """State-dict keys a checkpoint must carry: trainable parameters and persistent buffers."""
        keys = {name for name, p in self.named_parameters() if p.requires_grad}
        return keys | {name for name, _ in self.named_buffers() if name in self.state_dict()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["sentex"] = {"family": self.family, "version": __version__}

    def _checkpoint_name(self) -> str:
        """``"<path>: "`` of the checkpoint the trainer is restoring, so errors name the file ("" if unknown)."""
        try:
            path = self.trainer.ckpt_path
        except (RuntimeError, AttributeError):  # no Trainer attached (a module loaded by hand), or Fabric's stand-in
            return ""
        return f"{path}: " if path else ""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        where = self._checkpoint_name()
        meta = checkpoint.get("sentex")
        if meta is None:
            raise CheckpointError(f"{where}checkpoint was not written by sentex (no 'sentex' entry)")
        if meta.get("family") != self.family:
            raise CheckpointError(
                f"{where}checkpoint is a '{meta.get('family')}' model but the config builds a '{self.family}' model;"
                " use the config the checkpoint was trained with"
            )
        checkpoint["state_dict"] = rename_legacy_keys(checkpoint["state_dict"], self.legacy_prefixes)
        saved, expected = set(checkpoint["state_dict"]), self.trainable_state_keys()
        unknown, missing = saved - set(self.state_dict()), expected - saved
        if unknown or missing:
            example = sorted(unknown or missing)[0]
            raise CheckpointError(
                f"{where}checkpoint does not fit this model: {len(unknown)} unknown and {len(missing)} missing "
                f"weights (e.g. '{example}'); were model settings (LoRA rank, target modules) changed?"
            )


def rename_legacy_keys(state: dict[str, Any], prefixes: dict[str, str]) -> dict[str, Any]:
    """``state`` with keys that start with an old prefix renamed to the new one (order kept).

    >>> list(rename_legacy_keys({"head.w": 1, "net.x": 2}, {"head.": "net.head."}))
    ['net.head.w', 'net.x']
    """
    out = {}
    for key, value in state.items():
        old = next((p for p in prefixes if key.startswith(p)), None)
        out[prefixes[old] + key[len(old) :] if old else key] = value
    return out
