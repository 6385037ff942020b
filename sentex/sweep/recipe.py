"""The recipe side of a sweep: check a space against the ``sentex fit`` parser, and run one trial.

A trial is the real ``sentex fit`` (:class:`~sentex.cli.SentexCLI`), run in the sweep's process with
the trial's values as command-line overrides after the recipe's arguments, so it gets everything a
normal run gets: ``lightning_logs/version_N``, TensorBoard, checkpoints, the saved ``config.yaml``.
Running it in-process (not as a child process) saves the seconds of importing torch per trial and lets
the Optuna pruning callback talk to the live trial.
"""

from __future__ import annotations

import argparse
import difflib
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from sentex.cli import SentexCLI, run_cli
from sentex.data import TweetDataModule
from sentex.errors import SentexError
from sentex.models.base import ExtractorModule
from sentex.sweep.space import Space, SpaceError, cli_text, is_config_key

# Set by the sweep for every trial; a space entry or an override for them would be silently replaced.
SWEEP_KEYS = ("trainer.default_root_dir", "ckpt_path", "config")
DIRECTIONS = {"max": "maximize", "min": "minimize"}


@dataclass(frozen=True)
class Recipe:
    """What a sweep needs to know about its recipe.

    Attributes:
        fit_args: the ``sentex fit`` arguments every trial shares (``--config`` files, then overrides).
        metric: the monitored metric of the best-checkpoint callback (``val/jaccard``).
        direction: ``maximize`` or ``minimize``, from that callback's mode.
        root_dir: the recipe's own ``trainer.default_root_dir`` (put back into the best config).
    """

    fit_args: tuple[str, ...]
    metric: str
    direction: str
    root_dir: str | None


class ParseOnlyCLI(SentexCLI):
    """The sentex CLI without building anything: checking a space needs the parsed config only."""

    def instantiate_classes(self) -> None:
        """Skip building the model (loading its weights), data and trainer."""


def parser_problem(err: BaseException) -> str:
    """A one-line gist of a jsonargparse error (they nest a few lines per Union member).

    >>> message = "Parser key 'm':\\n  - Expected a <class 'NoneType'>\\n  - Expected a <class 'int'>"
    >>> parser_problem(ValueError(message))
    'expected int or None'
    >>> parser_problem(ValueError("unrecognized arguments: --x 1"))
    'unrecognized arguments: --x 1'
    """
    text = str(err)
    expected = re.findall(r"Expected a <class '([\w.]+)'>", text)
    if expected:
        names = sorted({n.rpartition(".")[2].replace("NoneType", "None") for n in expected}, key=lambda n: n == "None")
        return "expected " + " or ".join(names)  # sorted: jsonargparse versions list Union members in either order
    rejected = re.search(r"Option '(\w+)' is not accepted", text)
    if rejected:
        return rejected.group(0)
    lines = [line.strip(" -") for line in text.splitlines() if line.strip(" -")]
    return lines[-1] if lines else type(err).__name__


def parse_recipe(fit_args: Sequence[str]) -> ParseOnlyCLI:
    """The sentex CLI parsed with ``sentex fit ARGS`` (its ``config`` and ``parser``), without building anything.

    Raises:
        SentexError: the arguments do not parse (one line).
    """
    # As in run_cli: handing LightningCLI an argv is how sentex runs it; the warning is for scripts.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    try:
        cli = ParseOnlyCLI(
            ExtractorModule,
            TweetDataModule,
            subclass_mode_model=True,
            seed_everything_default=42,
            run=False,
            args=list(fit_args),
            parser_kwargs={"exit_on_error": False},
        )
    except argparse.ArgumentError as err:
        raise SentexError(f"the recipe's arguments do not parse: {parser_problem(err)}") from None
    return cli


def check_recipe(space: Space, fit_args: Sequence[str]) -> Recipe:
    """Check every key and value of ``space`` against the recipe's parser, before any trial runs.

    Args:
        space: the space file, read with ``strict=False``: the problems of its entries are reported
            together with the parser's, one line each in file order.
        fit_args: the recipe's ``sentex fit`` arguments (``--config recipe.yaml`` and overrides).

    Returns:
        The recipe's metric and direction.

    Raises:
        SpaceError: every bad entry, unknown key and value the parser refuses, one line each.
        SentexError: the recipe itself does not parse or monitors no metric.
    """
    taken = [a for a in fit_args if a.lstrip("-").split("=")[0] in SWEEP_KEYS[:2]]
    if taken:
        raise SentexError(f"{taken[0]}: the sweep sets this for each trial (use sentex sweep --out for the folder)")
    cli = parse_recipe(fit_args)
    config = cli.config
    known = [k for k in config.keys() if k != "config"]
    problems: dict[str, list[str]] = {}
    for key, problem in space.problems:
        problems.setdefault(key, []).append(problem)
    for key in space.keys:
        if key in SWEEP_KEYS:
            problems.setdefault(key, []).insert(0, f"{key}: set by the sweep for each trial (use sentex sweep --out)")
        elif is_config_key(key) and key not in config:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.setdefault(key, []).insert(0, f"{key}: not a setting of the recipe{hint}")
    for param in space.params:
        if param.key in problems:
            continue
        for value in param.choices if param.choices is not None else (param.low, param.high):
            try:
                cli.parser.parse_args([*fit_args, f"--{param.key}={cli_text(value)}"])
            except argparse.ArgumentError as err:
                problem = f"{param.key}: {cli_text(value)} is not a valid value ({parser_problem(err)})"
                problems.setdefault(param.key, []).append(problem)
    if problems:
        order = [*space.keys, *(k for k in problems if k not in space.keys)]
        raise SpaceError(space.name, [p for key in order for p in problems.get(key, [])])
    metric, mode = config.get("best_checkpoint.monitor"), config.get("best_checkpoint.mode")
    if not metric:
        raise SentexError("the recipe's best_checkpoint has no monitor: set best_checkpoint.monitor (e.g. val/jaccard)")
    if mode not in DIRECTIONS:
        raise SentexError(f"best_checkpoint.mode must be max or min, got {mode!r}")
    return Recipe(tuple(fit_args), metric, DIRECTIONS[mode], config.get("trainer.default_root_dir"))


class TrialRecorder(Callback):
    """Note a trial's run folder as soon as it exists, and its best-checkpoint score when it ends.

    Args:
        metric: the best-checkpoint callback's monitor.
        on_run_dir: called with the run folder (``.../lightning_logs/version_N``) in ``setup``, so a
            trial that is pruned or killed still says where its logs are.
    """

    def __init__(self, metric: str, on_run_dir: Callable[[Path], None]) -> None:
        self.metric = metric
        self.on_run_dir = on_run_dir
        self.run_dir: Path | None = None
        self.score: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        self.on_run_dir(self.run_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor == self.metric:
                if callback.best_model_score is not None:
                    self.score = float(callback.best_model_score)
                    return


def trial_cli(callbacks: Sequence[Callback]) -> type[SentexCLI]:
    """:class:`~sentex.cli.SentexCLI` with ``callbacks`` added to the trainer's (as sentex adds its own)."""

    class TrialCLI(SentexCLI):
        def __init__(self, *args: Any, trainer_defaults: dict[str, Any] | None = None, **kwargs: Any) -> None:
            defaults = dict(trainer_defaults or {})
            defaults["callbacks"] = [*(defaults.get("callbacks") or []), *callbacks]
            super().__init__(*args, trainer_defaults=defaults, **kwargs)

    return TrialCLI


def run_trial(recipe: Recipe, overrides: Sequence[str], root: Path, callbacks: Sequence[Callback]) -> float:
    """Run ``sentex fit`` for one trial under ``root``; returns its best-checkpoint score.

    Args:
        recipe: the checked recipe.
        overrides: the trial's ``--key=value`` arguments.
        root: the trial's ``trainer.default_root_dir``.
        callbacks: a :class:`TrialRecorder` (required) and e.g. a pruning callback.

    Raises:
        SentexError: the run ended without a score for the metric (no validation ran).
    """
    recorder = next(c for c in callbacks if isinstance(c, TrialRecorder))
    run_cli(trial_cli(callbacks), ["fit", *recipe.fit_args, *overrides, f"--trainer.default_root_dir={root}"])
    if recorder.score is None:
        raise SentexError(
            f"{root}: the run recorded no {recipe.metric}; the recipe must validate (trainer.limit_val_batches > 0)"
        )
    return recorder.score


def trial_config(run_dir: Path, recipe: Recipe) -> dict[str, Any]:
    """The full config a trial ran (Lightning's ``config.yaml``), with the recipe's own ``default_root_dir``.

    ``sentex fit --config`` takes it unchanged and repeats the trial, writing where the recipe would.
    """
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    config.setdefault("trainer", {})["default_root_dir"] = recipe.root_dir
    return config
