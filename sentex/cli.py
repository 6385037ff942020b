"""The ``sentex`` command: a LightningCLI with sentex defaults and friendly errors."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sentex.callbacks import FitSummary, RandomStateCheckpoint
from sentex.checkpointing import AtomicCheckpointIO, read_checkpoint
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

    def _parse_ckpt_path(self) -> None:
        """Resolve ``last``, check the checkpoint, then take its model settings (as LightningCLI does).

        LightningCLI would merge a checkpoint's hyperparameters into the config before any check,
        so a truncated file gave a traceback and another family's checkpoint a confusing parser
        error; here both become one-line :class:`CheckpointError` messages naming the file.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = str(find_last_checkpoint(Path(config["trainer"].get("default_root_dir") or ".")))
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if Path(ckpt_path).is_dir():
            if subcommand in INFERENCE_COMMANDS:  # routing only sees the command line, not config files
                raise CheckpointError(
                    f"{ckpt_path}: an exported folder set in a config file; pass it on the command line"
                    f" (--ckpt_path {ckpt_path}) to run it as the model"
                )
            raise CheckpointError(
                f"{ckpt_path}: a folder, not a checkpoint; exported folders run with validate, test"
                f" and predict, '{subcommand}' needs a .ckpt"
            )
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"{ckpt_path}: checkpoint not found")
        checkpoint = read_checkpoint(ckpt_path)
        check_family(ckpt_path, checkpoint, config["model"].get("class_path"))
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except CheckpointError as err:
            # The model raises without knowing the file; name it so the one-line message is complete.
            ckpt = self.config_init.get(subcommand, {}).get("ckpt_path")
            if ckpt and str(ckpt) not in str(err):
                raise CheckpointError(f"{ckpt}: {err}") from None
            raise

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        callbacks = [*callbacks, TestReportWriter(), FitSummary(), RandomStateCheckpoint()]
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


def check_family(path: str | Path, checkpoint: dict[str, Any], class_path: str | None) -> None:
    """Fail early when a checkpoint was trained as another model family than the config builds."""
    saved = (checkpoint.get("sentex") or {}).get("family")
    if saved is None or not class_path:
        return  # not a sentex checkpoint: the model's own check says so when it loads
    module, _, name = class_path.rpartition(".")
    wanted = getattr(getattr(importlib.import_module(module), name, None), "family", None)
    if wanted is not None and wanted != saved:
        raise CheckpointError(
            f"{path}: checkpoint is a '{saved}' model but the config builds a '{wanted}' model;"
            " use the config the checkpoint was trained with"
        )


# Subcommands that can run an exported folder (``--ckpt_path <folder>``) instead of a checkpoint.
INFERENCE_COMMANDS = ("validate", "test", "predict")
EXPORTED_MODEL = "sentex.models.ExportedExtractor"


def route_exported_model(argv: list[str]) -> list[str]:
    """Turn ``validate|test|predict --ckpt_path <folder>`` into ``--model ExportedExtractor --model.path <folder>``.

    An exported folder has no Lightning checkpoint to restore; it *is* the model. The options go
    last so they replace whatever model (or ``ckpt_path``) a ``--config`` named. int8 and int4
    exports run on CPU kernels only, so they also get ``--trainer.accelerator cpu`` unless the
    command line names an accelerator.

    >>> import json, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = (Path(folder) / "sentex.json").write_text(json.dumps({"family": "span", "dtype": "int8", "settings": {}}))
    >>> route_exported_model(["predict", "--ckpt_path", folder, "--data.predict_path", "t.csv"])[1:] == [
    ...     "--data.predict_path", "t.csv", f"--model={EXPORTED_MODEL}", f"--model.path={folder}", "--ckpt_path=null",
    ...     "--trainer.accelerator=cpu"]
    True
    >>> route_exported_model(["predict", "--ckpt_path", "best.ckpt"])
    ['predict', '--ckpt_path', 'best.ckpt']
    """
    if not argv or argv[0] not in INFERENCE_COMMANDS:
        return argv
    rest, folder, i = [argv[0]], None, 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--ckpt_path" and i + 1 < len(argv) and Path(argv[i + 1]).is_dir():
            folder, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--ckpt_path=") and Path(arg.split("=", 1)[1]).is_dir():
            folder, i = arg.split("=", 1)[1], i + 1
            continue
        rest.append(arg)
        i += 1
    if folder is None:
        return rest
    # Checked here: a failure inside the model's constructor reaches the user wrapped in a parser error.
    from sentex.inference import QUANTIZED_DTYPES, read_manifest

    manifest = read_manifest(Path(folder))
    routed = [*rest, f"--model={EXPORTED_MODEL}", f"--model.path={folder}", "--ckpt_path=null"]
    if manifest["dtype"] in QUANTIZED_DTYPES and not any(a.startswith("--trainer.accelerator") for a in rest):
        routed.append("--trainer.accelerator=cpu")
    return routed


def run_cli(cli_class: type[SentexCLI], args: list[str] | None) -> None:
    """Run a sentex LightningCLI (``SentexCLI`` or a subclass) with sentex's model/data classes and defaults.

    Args:
        cli_class: the CLI class.
        args: the arguments; ``None`` lets LightningCLI read ``sys.argv`` itself.
    """
    # ``args`` is how sentex hands LightningCLI a rewritten or sub-command argv; the warning targets scripts.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    cli_class(
        ExtractorModule,
        TweetDataModule,
        subclass_mode_model=True,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``sentex`` console script."""
    logging.basicConfig(level=logging.WARNING, format="sentex: %(levelname)s: %(message)s")
    argv = sys.argv[1:] if args is None else list(args)
    extra = available_extra_commands()
    try:
        if argv and argv[0] in extra:
            importlib.import_module(extra[argv[0]][0]).main(argv[1:])
            return
        routed = route_exported_model(argv)
        run_cli(SentexCLI, None if args is None and routed == argv else routed)
    except SentexError as err:
        print(f"sentex: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
