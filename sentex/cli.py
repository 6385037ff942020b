"""The ``sentex`` command: a LightningCLI with sentex defaults and friendly errors."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sentex.data import TweetDataModule
from sentex.errors import CheckpointError, SentexError
from sentex.io.checkpoints import read_checkpoint
from sentex.models.base import ExtractorModule
from sentex.training.callbacks import AtomicCheckpoints, FitSummary, LastCheckpoint, RandomStateCheckpoint
from sentex.training.classifier_writers import ClassifierReportWriter
from sentex.training.cpu_precision import CPUPrecisionCheck
from sentex.training.progress import PlainProgress
from sentex.training.writers import SubmissionWriter, TestReportWriter

# Subcommands that are not Trainer methods: name -> (module with ``main(argv)``, one-line help).
# Listed in ``sentex --help`` once their module exists.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "align": ("sentex.align_command", "DPO-align a trained model against its frozen self (preference pairs)."),
    "export": ("sentex.deploy.export", "Merge LoRA, optionally quantize, and write a self-contained model folder."),
    "bench": ("sentex.deploy.bench", "Measure exported models: size, memory, latency, throughput, Jaccard."),
    "app": ("sentex.app.launcher", "Serve a model in the Streamlit demo app."),
    "serve": ("sentex.deploy.serve", "Serve a model over HTTP with LitServe: POST /predict, dynamic batching."),
    "sweep": ("sentex.sweep.command", "Search hyper-parameters with Optuna, each trial a sentex fit run."),
    "compare": ("sentex.evaluation.compare", "McNemar's exact test between two per-row prediction files."),
}
# ``--data`` takes any of these (``class_path``); a config that names none gets the first.
DATA_MODULES = ("sentex.data.TweetDataModule", "sentex.data.ClassificationDataModule")


def available_extra_commands() -> dict[str, tuple[str, str]]:
    """The extra subcommands whose implementation is installed."""
    return {name: spec for name, spec in EXTRA_COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


class SentexCLI(LightningCLI):
    """LightningCLI plus the checkpoints, writers and terminal output every sentex run wants.

    Only LightningCLI's public hooks are overridden (``parse_arguments``, ``add_arguments_to_parser``,
    ``before_instantiate_classes``, ``instantiate_classes``); the extra callbacks go in through
    ``trainer_defaults``, which Lightning adds to whatever callbacks the config lists.
    """

    def __init__(self, *args: Any, trainer_defaults: dict[str, Any] | None = None, **kwargs: Any) -> None:
        defaults = dict(trainer_defaults or {})
        defaults["callbacks"] = [*(defaults.get("callbacks") or []), *sentex_callbacks()]
        # Each Trainer subcommand's help ends with the data modules' options, which a class choice hides.
        subcommand_help = {name: {"epilog": data_options_help()} for name in ("fit", "validate", "test", "predict")}
        kwargs.setdefault("parser_kwargs", {"epilog": extra_commands_epilog(), **subcommand_help})
        super().__init__(*args, trainer_defaults=defaults, **kwargs)

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
        # A separate, frequent ``last.ckpt`` so a killed run loses at most N steps; also written at the
        # end of training and on SIGTERM (LastCheckpoint), so "last" is the run's final state.
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.save_last": True,
                "last_checkpoint.save_top_k": 0,
                "last_checkpoint.every_n_train_steps": 50,
            }
        )
        parser.add_lightning_class_args(SubmissionWriter, "submission")
        if self.subclass_mode_data:
            # Extraction configs name no data class: they get the tweet data module, as before ``--data``
            # took a class; the classifier's configs name theirs.
            parser.set_defaults({"data": {"class_path": DATA_MODULES[0]}})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then resolve ``--ckpt_path last`` and check the checkpoint before Lightning reads it.

        LightningCLI merges a checkpoint's hyper-parameters into the config right after parsing,
        so a truncated file would give a traceback and another family's checkpoint a confusing
        parser error; checked here, both are one-line :class:`CheckpointError` messages naming the file.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_ckpt_path(self.config[subcommand], subcommand)

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a sentex error from a constructor reaches the user as itself.

        jsonargparse wraps what a class chosen by ``class_path`` raises (the model, and the data module
        since ``--data`` takes a class) in a ValueError that lists every Union member's failure with a
        traceback; the :class:`SentexError` it wraps is the one line the user should see.
        """
        try:
            super().instantiate_classes()
        except ValueError as err:
            cause = sentex_cause(err) or self._constructor_error("data") or self._constructor_error("model")
            if cause is None:
                raise
            raise cause from None
        if getattr(self.datamodule, "sentiment_model", None):
            # The data stage only names the classifier; loading it is the deploy stage's (at first use).
            from sentex.deploy.load import sentiment_labeller

            self.datamodule.sentiment_labeller = sentiment_labeller(self.datamodule.sentiment_model)

    def _constructor_error(self, key: str) -> SentexError | None:
        """The :class:`SentexError` the configured ``data`` or ``model`` class's constructor raises, if any.

        jsonargparse before 4.4x keeps only the last Union member's failure in the exception chain,
        so the class's own error (``data.val_fraction must be ...``, ``model.quantize_base must be ...``)
        is rebuilt here once, on this failure path only; sentex's constructors check their settings
        before they load any weights.
        """
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        section = config.get(key)
        class_path = section.get("class_path") if section is not None else None
        if not class_path:
            return None
        module, _, name = class_path.rpartition(".")
        init_args = section.get("init_args")
        try:
            getattr(importlib.import_module(module), name)(**(init_args.as_dict() if init_args else {}))
        except SentexError as err:
            return err
        except Exception:  # any other failure is for jsonargparse to report
            return None
        return None

    def before_instantiate_classes(self) -> None:
        """Add the progress output that fits where stdout goes, unless the config chose its own."""
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config.get("trainer") or {}
        configured = trainer.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        if trainer.get("enable_progress_bar", True) is not False and not any(map(is_progress_bar, configured)):
            self.trainer_defaults["callbacks"].append(progress_callback())


def sentex_cause(err: BaseException) -> SentexError | None:
    """The first :class:`SentexError` in an exception's chain of causes, or ``None``.

    >>> try:
    ...     try:
    ...         raise SentexError("data.fold must be >= 0")
    ...     except SentexError as inner:
    ...         raise ValueError("Does not validate against any of the Union subtypes") from inner
    ... except ValueError as outer:
    ...     print(sentex_cause(outer))
    data.fold must be >= 0
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, SentexError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def is_progress_bar(callback: Any) -> bool:
    """Whether a configured callback (an instance, or a ``class_path`` entry) is a Lightning progress bar.

    >>> is_progress_bar({"class_path": "sentex.training.progress.PlainProgress"}), is_progress_bar(FitSummary())
    (True, False)
    """
    if isinstance(callback, Callback):
        return isinstance(callback, ProgressBar)
    module, _, name = str(callback.get("class_path", "")).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return False  # the parser reports an unknown class itself
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def progress_callback() -> Callback:
    """Rich's progress bar on a terminal; a plain line at a steady interval when output goes to a file."""
    return RichProgressBar() if sys.stdout.isatty() else PlainProgress()


def check_ckpt_path(config: Any, subcommand: str) -> None:
    """Resolve ``ckpt_path: last`` in a subcommand's config, then check the file and its model family."""
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
    check_family(ckpt_path, read_checkpoint(ckpt_path), config["model"].get("class_path"))


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
EXPORTED_MODEL = "sentex.deploy.exported.ExportedExtractor"


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
    from sentex.deploy.format import QUANTIZED_DTYPES, read_manifest

    manifest = read_manifest(Path(folder))
    if manifest["family"] == "classifier":
        raise SentexError(
            f"{folder}: a classifier export; run it with sentex.load(...).classify, sentex serve, sentex app or"
            f" sentex bench, or run sentex {argv[0]} on its checkpoint with its config"
        )
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
        subclass_mode_data=True,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def sentex_callbacks() -> list[Callback]:
    """Callbacks every sentex run gets on top of the config's (fresh instances for each run)."""
    return [
        TestReportWriter(),
        ClassifierReportWriter(),
        FitSummary(),
        RandomStateCheckpoint(),
        AtomicCheckpoints(),
        CPUPrecisionCheck(),
    ]


def extra_commands_epilog() -> str:
    """The ``sentex --help`` lines for the commands that are not Trainer methods."""
    return "other commands: " + "; ".join(
        f"sentex {name} --help ({help_text.rstrip('.')})" for name, (_, help_text) in available_extra_commands().items()
    )


def data_options_help() -> str:
    """One line naming the data modules ``--data`` takes and their options (the help cannot expand a class choice).

    >>> "--data.train_path" in data_options_help() and "--data.label_column" in data_options_help()
    True
    """
    parts = []
    for i, class_path in enumerate(DATA_MODULES):
        module, _, name = class_path.rpartition(".")
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        options = ", ".join(f"--data.{p}" for p in params)
        parts.append(f"{name}{' (the default)' if i == 0 else ''}: {options}")
    return "data modules (--data NAME; all options: --data.help NAME): " + "; ".join(parts)


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
    except SIGTERMException:
        # Lightning stops at a batch boundary and exits 0 (SIGTERMException is a bare SystemExit); a
        # scheduler must see a stopped run as failed, as it would a process killed by the signal (128 + 15).
        print("sentex: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    release_process_group()


def release_process_group() -> None:
    """Destroy torch.distributed's process group after a run that started one (DDP on CPU: gloo).

    Lightning leaves it to the interpreter's exit, where gloo's worker threads can be torn down still
    joinable: the process then aborts after a successful run ("terminate called without an active
    exception", exit -6; https://github.com/pytorch/pytorch/issues/190489, seen once in sentex's CI).
    Only after a run that ended normally: destroying the group while another rank is still inside a
    collective would hang (https://github.com/pytorch/torchtitan/pull/1342).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
