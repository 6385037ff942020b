"""The Optuna side of a sweep: storage, the study, resuming after a kill, pruning, progress.

Resume: every trial records the process that runs it (host, pid, start time). A sweep that starts
again on the same study finds the trials a dead process of this host left ``RUNNING``. With TPE it
fails them at once (marked ``interrupted``: they do not count, so a replacement runs). With a grid
they stay ``RUNNING`` until their grid point is done: Optuna's ``GridSampler`` counts a failed point
as visited and would never run it again, while a point still running is handed out again once every
other point has started. So a rerun finishes exactly the points that have no finished trial.
Trials of other hosts (one study shared over PostgreSQL or MySQL) are left to their own workers.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil
import torch
from optuna.trial import FrozenTrial, Trial, TrialState
from optuna_integration import PyTorchLightningPruningCallback
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table

from sentex.errors import NonFiniteLossError, SentexError
from sentex.sweep.recipe import Recipe, TrialRecorder, run_trial, trial_config
from sentex.sweep.redact import redact_text, redact_url
from sentex.sweep.report import best_trial, format_metric, write_reports
from sentex.sweep.space import Space, cli_text, override_args, short_names
from sentex.training.progress import format_duration

DEFAULT_TPE_TRIALS = 20
# A trial that fails with these is a result (say, a learning rate that diverges), not a broken sweep.
TRIAL_ERRORS: tuple[type[Exception], ...] = (NonFiniteLossError, torch.OutOfMemoryError)
STUDY_ATTR = "sentex_sweep"


@dataclass(frozen=True)
class Sweep:
    """Everything one ``sentex sweep`` run needs.

    Attributes:
        space: the checked space file.
        recipe: the checked recipe.
        out: the sweep folder (trial runs, results, the default SQLite storage).
        study_name: the Optuna study's name.
        storage: the storage URL (``sqlite:///...``, ``postgresql://...``, ``mysql+pymysql://...``).
        n_trials: finished trials the study should reach, earlier runs and other workers included.
        pruner: Optuna's pruner (``NopPruner``: no pruning).
    """

    space: Space
    recipe: Recipe
    out: Path
    study_name: str
    storage: str
    n_trials: int
    pruner: optuna.pruners.BasePruner

    @property
    def shown_storage(self) -> str:
        """The storage URL as sentex prints and writes it: without its password."""
        return redact_url(self.storage)


def default_storage(out: Path) -> str:
    """The SQLite file beside the trial runs."""
    return f"sqlite:///{(out / 'study.db').resolve()}"


def target_trials(space: Space, n_trials: int | None) -> int:
    """How many finished trials the study aims at: the whole grid (at most), or ``n_trials`` (20) for TPE."""
    if space.is_grid:
        return min(n_trials or space.grid_size, space.grid_size)
    return n_trials or DEFAULT_TPE_TRIALS


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``; a bad URL or a missing database driver is a one-line error.

    The error shows the URL without its password, and hides the password wherever the driver's own message
    repeats it (SQLAlchemy quotes a URL it cannot parse).
    """
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Wait for another worker's write instead of failing with "database is locked".
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as err:  # sqlalchemy's errors for URLs, drivers and servers are many classes
        reason = redact_text(f"{type(err).__name__}: {err}", url).splitlines()[0]
        raise SentexError(f"--storage {redact_url(url)}: cannot open it ({reason})") from None


def open_study(sweep: Sweep, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Create the study, or load it if it exists and was started with the same space and metric."""
    sampler = optuna.samplers.GridSampler(sweep.space.grid()) if sweep.space.is_grid else optuna.samplers.TPESampler()
    settings = {"space": sweep.space.spec(), "metric": sweep.recipe.metric, "direction": sweep.recipe.direction}
    study = optuna.create_study(
        storage=storage,
        study_name=sweep.study_name,
        sampler=sampler,
        pruner=sweep.pruner,
        direction=sweep.recipe.direction,
        load_if_exists=True,
    )
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is None:
        study.set_user_attr(STUDY_ATTR, {**settings, "fit_args": list(sweep.recipe.fit_args)})
    elif {k: stored.get(k) for k in settings} != settings:
        raise SentexError(
            f"study {sweep.study_name!r} in {sweep.shown_storage} was started with another space file or metric;"
            " rerun it with the same ones, or name a new study with --study"
        )
    elif stored.get("fit_args") != list(sweep.recipe.fit_args):
        print(f"sentex: warning: study {sweep.study_name!r} was started with other fit arguments:", file=sys.stderr)
        print(f"  {' '.join(stored.get('fit_args') or [])}", file=sys.stderr)
    return study


def this_worker() -> dict[str, Any]:
    """What identifies this process among every worker of a study (pids repeat; start times do not)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def is_dead_here(trial: FrozenTrial) -> bool:
    """Whether a ``RUNNING`` trial belongs to a process of this host that no longer runs."""
    worker = trial.user_attrs.get("worker")
    if not worker or worker.get("host") != socket.gethostname():
        return False  # another host's, or killed before it said whose: leave it to its own worker
    try:
        process = psutil.Process(worker["pid"])
        return abs(process.create_time() - worker["started"]) > 1 or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def counts_as_done(trial: FrozenTrial) -> bool:
    """Finished with a result (complete, pruned, or failed in training), not cut short by a kill."""
    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get("interrupted")
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def retire_dead_trials(study: optuna.Study, storage: optuna.storages.RDBStorage, space: Space) -> None:
    """Mark this host's dead ``RUNNING`` trials failed and ``interrupted`` (see the module docstring)."""
    trials = study.get_trials(deepcopy=False)
    done_points = {repr(sorted(t.params.items())) for t in trials if counts_as_done(t)}
    grid_done = space.is_grid and len(done_points) >= space.grid_size
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in trials:
        if trial.state != TrialState.RUNNING or not is_dead_here(trial):
            continue
        if space.is_grid and not grid_done and repr(sorted(trial.params.items())) not in done_points:
            continue  # GridSampler will run this point again; retired once that finished
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


def suggest(trial: Trial, space: Space) -> dict[str, Any]:
    """Ask Optuna for every parameter of ``space``; returns key -> suggested value (a label for lists)."""
    suggested: dict[str, Any] = {}
    for p in space.params:
        if p.choices is not None:
            suggested[p.key] = trial.suggest_categorical(p.key, p.labels)
        elif p.is_int:
            suggested[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            suggested[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)
    return suggested


class Progress:
    """One line per trial start and end: trial k/N, its values, its score, the best so far, time left.

    A terminal gets rich's rules and a bar; a file or pipe gets plain lines, flushed at once.
    """

    def __init__(self, sweep: Sweep, console: Console | None = None) -> None:
        self.sweep = sweep
        self.console = console or Console()
        self.names = short_names([p.key for p in sweep.space.params])
        self.seconds: list[float] = []

    def say(self, text: str) -> None:
        print(f"sweep {self.sweep.study_name}: {text}", flush=True)

    def started(self, number: int, position: int, values: dict[str, Any]) -> None:
        shown = ", ".join(f"{self.names[k]}={cli_text(v)}" for k, v in values.items())
        title = f"trial {number} ({position}/{self.sweep.n_trials}): {shown}"
        if self.console.is_terminal:
            self.console.rule(f"[bold]sweep {self.sweep.study_name}[/]: {title}")
        else:
            self.say(f"{title} starts")

    def finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done, total = sum(map(counts_as_done, trials)), self.sweep.n_trials
        if trial.duration is not None:
            self.seconds.append(trial.duration.total_seconds())
        if trial.value is not None and trial.state == TrialState.COMPLETE:
            result = f"{self.sweep.recipe.metric} {format_metric(trial.value)}"
        else:
            result = " ".join([trial.state.name.lower(), trial.user_attrs.get("error", "")]).strip()
        took = format_duration(trial.duration.total_seconds()) if trial.duration is not None else "?"
        best = best_trial(trials, self.sweep.recipe.direction)
        text = f"trial {trial.number} {result} in {took}; "
        text += f"best {format_metric(best.value)} (trial {best.number})" if best else "no best yet"
        if self.seconds and done < total:
            text += f", ~{format_duration((total - done) * sum(self.seconds) / len(self.seconds))} left"
        if self.console.is_terminal:
            line = Table.grid(padding=(0, 1))
            line.add_row(ProgressBar(total=total, completed=min(done, total), width=30), f"{done}/{total}", text)
            self.console.print(line)
        else:
            self.say(f"{done}/{total} done: {text}")


def make_objective(sweep: Sweep, progress: Progress) -> Any:
    """The Optuna objective: one ``sentex fit`` run under ``out/trial_NNN`` with the trial's values."""
    pruning = not isinstance(sweep.pruner, optuna.pruners.NopPruner)

    def objective(trial: Trial) -> float:
        trial.set_user_attr("worker", this_worker())
        values = sweep.space.values(suggest(trial, sweep.space))
        position = sum(map(counts_as_done, trial.study.get_trials(deepcopy=False))) + 1
        progress.started(trial.number, position, values)

        def note_run_dir(run_dir: Path) -> None:
            trial.set_user_attr("run_dir", os.path.relpath(run_dir.resolve(), sweep.out.resolve()))

        recorder = TrialRecorder(sweep.recipe.metric, note_run_dir)
        callbacks: list[Any] = [recorder]
        if pruning:
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=sweep.recipe.metric))
        root = sweep.out / f"trial_{trial.number:03d}"
        try:
            score = run_trial(sweep.recipe, override_args(values), root, callbacks)
        except TRIAL_ERRORS as err:
            trial.set_user_attr("error", str(err).splitlines()[0] if str(err) else type(err).__name__)
            raise
        assert recorder.run_dir is not None  # setup ran, or there would be no score
        trial.set_user_attr("config", trial_config(recorder.run_dir, sweep.recipe))
        return score

    return objective


def run_sweep(sweep: Sweep, console: Console | None = None) -> optuna.Study:
    """Run (or resume) the sweep until the study has ``n_trials`` finished trials; writes the reports.

    Returns:
        The study, for callers that want more than the written files.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(sweep.storage)
    sweep.out.mkdir(parents=True, exist_ok=True)
    study = open_study(sweep, storage)
    progress = Progress(sweep, console)

    def report(study: optuna.Study) -> None:
        write_sweep_reports(sweep, study.get_trials(deepcopy=False))

    retire_dead_trials(study, storage, sweep.space)
    done = sum(map(counts_as_done, study.get_trials(deepcopy=False)))
    kind = f"grid of {sweep.space.grid_size}" if sweep.space.is_grid else "TPE"
    progress.say(f"{kind}, {done}/{sweep.n_trials} trials done; {sweep.recipe.metric} ({sweep.recipe.direction})")

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        retire_dead_trials(study, storage, sweep.space)
        report(study)
        progress.finished(study, trial)
        if sum(map(counts_as_done, study.get_trials(deepcopy=False))) >= sweep.n_trials:
            study.stop()  # other workers may have finished the rest

    try:
        if done < sweep.n_trials:
            study.optimize(
                make_objective(sweep, progress),
                n_trials=sweep.n_trials - done,
                callbacks=[after_trial],
                catch=TRIAL_ERRORS,
                gc_after_trial=True,
            )
    finally:
        report(study)
    return study


def pruner_name(pruner: optuna.pruners.BasePruner) -> str:
    """``median`` for ``MedianPruner``, ``none`` for ``NopPruner``.

    >>> pruner_name(optuna.pruners.NopPruner()), pruner_name(optuna.pruners.MedianPruner())
    ('none', 'median')
    """
    name = type(pruner).__name__.removesuffix("Pruner").lower()
    return "none" if name == "nop" else name


def write_sweep_reports(sweep: Sweep, trials: Sequence[FrozenTrial]) -> None:
    """:func:`~sentex.sweep.report.write_reports` with the sweep's summary lines."""
    sampler = f"grid ({sweep.space.grid_size} points)" if sweep.space.is_grid else "TPE"
    header = {
        "study": sweep.study_name,
        "recipe": f"`sentex fit {' '.join(sweep.recipe.fit_args)}`",
        "metric": f"{sweep.recipe.metric} ({sweep.recipe.direction}), best checkpoint of each trial",
        "sampler": f"{sampler}, pruning {pruner_name(sweep.pruner)}",
        "storage": f"`{sweep.shown_storage}`",
    }
    write_reports(sweep.out, sweep.space, sweep.recipe, trials, header)


def describe_outputs(sweep: Sweep, trials: Sequence[FrozenTrial]) -> str:
    """The closing lines: where the results are and how to rerun the best trial."""
    best = best_trial(trials, sweep.recipe.direction)
    lines = [f"results: {sweep.out / 'results.md'} ({sweep.out / 'results.csv'})"]
    if best is not None:
        lines.append(f"best: trial {best.number}, {sweep.recipe.metric} {format_metric(best.value)}")
        lines.append(f"rerun it: sentex fit --config {sweep.out / 'best.yaml'}")
    return "\n".join(lines)
