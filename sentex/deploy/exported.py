"""An exported model folder (``sentex export``) as a LightningModule, for validate / test / predict.

    sentex predict --ckpt_path models/sentex-int8 --data.predict_path data/test.csv
    sentex test    --ckpt_path models/sentex-int8 --data.test_path data/labelled.csv

``--ckpt_path`` naming a folder is rewritten by the CLI to ``--model ExportedExtractor --model.path``
(:func:`sentex.cli.route_exported_model`), so the Trainer, the data module, the submission writer,
the per-row test report and the metrics are the same as for a checkpoint; only the weights come from
the export (merged, cast or int8, or an ONNX graph that ONNX Runtime runs) through
:func:`sentex.deploy.load.load_folder`. An ONNX network takes and returns tensors on any device (its
session runs on the CPU), so an fp32 ONNX export needs no ``--trainer.accelerator cpu``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sentex.deploy.format import QUANTIZED_DTYPES
from sentex.deploy.load import load_folder
from sentex.errors import SentexError
from sentex.models.base import Batch, ExtractorModule


class ExportedExtractor(ExtractorModule):
    """Inference over an exported folder; it cannot be trained (fit a checkpoint instead).

    Args:
        path: folder written by ``sentex export`` (holds ``sentex.json``).
    """

    family = "exported"

    def __init__(self, path: str) -> None:
        super().__init__(learning_rate=0.0, weight_decay=0.0, warmup_steps=0)
        self.save_hyperparameters()
        extractor = load_folder(Path(path))
        self.pipeline = extractor.pipeline
        self.info = extractor.info
        self.family = extractor.family  # what the folder holds: span or seq2seq
        self.cpu_only = self.info["dtype"] in QUANTIZED_DTYPES

    def setup(self, stage: str) -> None:
        dtype = self.info["dtype"]
        # setup runs before the strategy moves the module: ask where it is going
        if self.cpu_only and self.trainer is not None and self.trainer.strategy.root_device.type != "cpu":
            raise SentexError(
                f"{self.hparams.path}: {dtype} exports run on CPU kernels only; use --trainer.accelerator cpu"
            )

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        return self.pipeline.collate(rows)

    @torch.no_grad()
    def extract(self, batch: Batch) -> list[str]:
        return self.pipeline.extract(batch)

    def _evaluate(self, batch: Batch, metrics, stage: str) -> tuple[list[str], None]:
        # An export keeps what inference needs, not the training loss: metrics only.
        preds = self.extract(batch)
        metrics.update(preds, batch["selected_text"], batch["sentiment"])
        return preds, None

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        raise SentexError(
            f"{self.hparams.path}: an exported model is for inference only; "
            "fit from its checkpoint (sentex fit --ckpt_path <.ckpt>) instead"
        )

    def configure_optimizers(self) -> Any:
        raise SentexError(f"{self.hparams.path}: an exported model is for inference only; it cannot be fit")
