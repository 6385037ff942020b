"""The ``sentex`` command: a LightningCLI with sentex defaults and friendly errors."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sentex.callbacks import FitSummary
from sentex.checkpointing import AtomicCheckpointIO
from sentex.data import TweetDataModule
from sentex.errors import CheckpointError, SentexError
from sentex.models.base import ExtractorModule
from sentex.writers import SubmissionWriter, TestReportWriter


# Subcommands that are not Trainer methods: name -> (module with ``main(argv)``, one-line help).
# Listed in ``sentex --help`` once their module exists.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "align": ("sentex.align", "DPO-align a trained model against its frozen self (preference pairs)."),
    "export": ("sentex.export", "Merge LoRA, optionally quantize, and write a self-contained model folder."),
    "bench": ("sentex.bench", "Measure exported models: size, memory, latency, throughput, Jaccard."),
    "app": ("sentex.app", "Serve a model in the Streamlit demo app."),
}


def available_extra_commands() -> dict[str, tuple[str, str]]:
    """The extra subcommands whose implementation is installed."""
    return {name: spec for name, spec in EXTRA_COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


class SentexCLI(LightningCLI):
    """LightningCLI plus the checkpoints, writers and terminal output every sentex run wants."""

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        # Only so that ``sentex --help`` lists them; ``main`` dispatches them before parsing.
        for name, (_, help_text) in available_extra_commands().items():
            self._subcommand_parsers[name] = sub = LightningArgumentParser(description=help_text)
            parser._subcommands_action.add_subcommand(name, sub, help=help_text)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
        parser.set_defaults(
            {
                "best_checkpoint.monitor": "val/jaccard",
                "best_checkpoint.mode": "max",
                "best_checkpoint.save_top_k": 1,
                "best_checkpoint.filename": "best-epoch{epoch}-step{step}",
                "best_checkpoint.auto_insert_metric_name": False,
            }
        )
        # A separate, frequent ``last.ckpt`` so a killed run loses at most N steps.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.save_last": True,
                "last_checkpoint.save_top_k": 0,
                "last_checkpoint.every_n_train_steps": 50,
            }
        )
        parser.add_lightning_class_args(SubmissionWriter, "submission")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = str(find_last_checkpoint(Path(config["trainer"].get("default_root_dir") or ".")))

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        callbacks = [*callbacks, TestReportWriter(), FitSummary()]
        configured = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in configured
        ):
            callbacks.append(RichProgressBar())
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)


def find_last_checkpoint(root: Path) -> Path:
    """The newest ``last.ckpt`` of any run under ``root/lightning_logs`` (what ``--ckpt_path last`` means)."""
    candidates = sorted((root / "lightning_logs").glob("*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"--ckpt_path last: no last.ckpt under {root / 'lightning_logs'}; pass a checkpoint path")
    return candidates[-1]


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``sentex`` console script."""
    logging.basicConfig(level=logging.WARNING, format="sentex: %(levelname)s: %(message)s")
    argv = sys.argv[1:] if args is None else list(args)
    extra = available_extra_commands()
    try:
        if argv and argv[0] in extra:
            importlib.import_module(extra[argv[0]][0]).main(argv[1:])
            return
        SentexCLI(
            ExtractorModule,
            TweetDataModule,
            subclass_mode_model=True,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            args=argv,
        )
    except SentexError as err:
        print(f"sentex: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
