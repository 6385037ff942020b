"""``sentex align``: DPO-train a model from its SFT checkpoint on preference pairs.

    sentex align --config configs/dpo_span.yaml --data.train_path data/train.csv \\
        --model.sft_checkpoint lightning_logs/version_0/checkpoints/best-....ckpt

This is ``sentex fit`` with an alignment module (:mod:`sentex.alignment.span`,
:mod:`sentex.alignment.seq2seq`, :mod:`sentex.alignment.causal`): when the fit starts, the module
builds preference pairs from the training tweets (:mod:`sentex.alignment.pairs`) — or reads them
from ``--model.pairs_path`` — and trains on them; validation rows are the usual held-out tweets, so
checkpoints, ``val/jaccard``, TensorBoard, ``--ckpt_path last`` and every Lightning option work as
for fit.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from sentex.alignment.module import DPOMixin
from sentex.cli import SentexCLI, run_cli
from sentex.errors import CheckpointError, SentexError
from sentex.io.checkpoints import read_checkpoint


class AlignCLI(SentexCLI):
    """``sentex fit`` for alignment modules (subclasses of :class:`~sentex.alignment.module.DPOMixin`)."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse and check ``ckpt_path`` as ``sentex fit`` does, but keep the align config's model settings.

        ``sentex fit`` takes a checkpoint's hyper-parameters into the config. An aligned span
        checkpoint stores plain span ones (so predict/export load it standalone), which must not turn
        a resumed ``align`` into supervised training; so ``ckpt_path`` is held back while LightningCLI
        reads checkpoints and restored before the classes are built. The model's own load checks
        family and weights.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        self._resume_path = None
        if subcommand:  # run=False (benchmarks) has no subcommand and no ckpt_path
            self._resume_path = self.config[subcommand].get("ckpt_path")
            self.config[subcommand]["ckpt_path"] = None
        if self._resume_path and "dpo" not in (read_checkpoint(self._resume_path).get("sentex") or {}):
            # SFT and align runs share lightning_logs/: "last" may be the SFT run's last.ckpt
            raise CheckpointError(
                f"{self._resume_path}: not a sentex align checkpoint (no alignment settings in it); resume"
                " with a last.ckpt of the align run, or start it from model.sft_checkpoint without --ckpt_path"
            )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if self.subcommand:
            config["ckpt_path"] = self._resume_path
        class_path = config["model"].get("class_path", "")
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None) if module else None
        if not (isinstance(cls, type) and issubclass(cls, DPOMixin)):
            raise SentexError(
                f"sentex align trains DPO modules (sentex.alignment.span.DPOSpanExtractor,"
                f" sentex.alignment.seq2seq.DPOSeq2SeqExtractor, sentex.alignment.causal.DPOCausalExtractor),"
                f" got model {class_path!r}; use configs/dpo_span.yaml, configs/dpo.yaml or configs/dpo_causal.yaml"
            )
        super().before_instantiate_classes()


def main(argv: list[str]) -> None:
    """Run ``sentex align ARGS``: ``sentex fit`` with a DPO module."""
    run_cli(AlignCLI, ["fit", *argv])
