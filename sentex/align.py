"""``sentex align``: DPO-train a model from its SFT checkpoint on preference pairs.

    sentex align --config configs/dpo_span.yaml --data.train_path data/train.csv \\
        --model.sft_checkpoint lightning_logs/version_0/checkpoints/best-....ckpt

This is ``sentex fit`` with a DPO module (:mod:`sentex.models.dpo`): when the fit starts, the
module builds preference pairs from the training tweets (:mod:`sentex.pairs`) — or reads them
from ``--model.pairs_path`` — and trains on them; validation rows are the usual held-out tweets,
so checkpoints, ``val/jaccard``, TensorBoard, ``--ckpt_path last`` and every Lightning option
work as for fit.
"""

from __future__ import annotations

from pathlib import Path

from sentex.cli import SentexCLI, find_last_checkpoint, run_cli
from sentex.errors import CheckpointError, SentexError


class AlignCLI(SentexCLI):
    """``sentex fit`` for DPO modules."""

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last``, but keep the align config's model settings.

        ``sentex fit`` takes a checkpoint's hyper-parameters into the config. A DPO span checkpoint
        stores plain span ones (so predict/export load it standalone), which must not turn a resumed
        ``align`` into supervised training; the model's own load checks family and weights.
        """
        config = self.config.get(self.config.get("subcommand") or "fit") or self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            root = Path(config["trainer"].get("default_root_dir") or ".")
            config["ckpt_path"] = ckpt_path = str(find_last_checkpoint(root))
        if ckpt_path and not Path(ckpt_path).is_file():
            raise CheckpointError(f"{ckpt_path}: checkpoint not found")

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        class_path = config["model"].get("class_path", "")
        if not class_path.startswith("sentex.models.dpo."):
            raise SentexError(
                f"sentex align trains DPO modules (sentex.models.dpo.*), got model {class_path!r}; "
                "use configs/dpo_span.yaml or configs/dpo.yaml"
            )


def main(argv: list[str]) -> None:
    """Run ``sentex align ARGS``: ``sentex fit`` with a DPO module."""
    run_cli(AlignCLI, ["fit", *argv])
