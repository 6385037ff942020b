"""What a sweep leaves in its folder: ``results.md``, ``results.csv``, ``metric_per_param.png``, ``best.yaml``.

All four are rewritten after every trial, from the study's storage (so they cover every worker's
trials), and written atomically: a sweep killed mid-write leaves the previous version, never half of one.
``best.yaml`` is the best trial's full config as the trial ran it, so ``sentex fit --config best.yaml``
repeats that trial (same seed, same data) and writes where the recipe would.
"""

from __future__ import annotations

import csv
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from sentex.io.atomic import atomic_path
from sentex.sweep.recipe import Recipe
from sentex.sweep.space import Space, short_names

log = logging.getLogger(__name__)
PLOT = "metric_per_param.png"


@dataclass(frozen=True)
class Row:
    """One trial as the results table shows it.

    Attributes:
        trial: Optuna's trial number.
        values: key -> the value as Optuna stored it (a list value as its YAML text).
        metric: the best-checkpoint score (complete trials only).
        state: ``COMPLETE``, ``PRUNED``, ``FAIL``, ``INTERRUPTED`` (killed with its sweep) or ``RUNNING``.
        seconds: wall time of a finished trial.
        run_folder: its ``lightning_logs/version_N``, relative to the sweep folder (``host:`` first if elsewhere).
    """

    trial: int
    values: dict[str, Any]
    metric: float | None
    state: str
    seconds: float | None
    run_folder: str


def format_metric(value: float | None) -> str:
    """A score as the tables print it.

    >>> format_metric(0.612345), format_metric(None)
    ('0.6123', '')
    """
    return "" if value is None else f"{value:.4f}"


def best_trial(trials: Sequence[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The complete trial with the best value (the lowest number among equals), if any."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    sign = -1 if direction == "maximize" else 1
    return min(complete, key=lambda t: (sign * t.value, t.number))


def row_of(trial: FrozenTrial) -> Row:
    """A trial's :class:`Row`."""
    state = trial.state.name
    if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"):
        state = "INTERRUPTED"
    worker = trial.user_attrs.get("worker") or {}
    folder = trial.user_attrs.get("run_dir", "")
    if folder and worker.get("host") not in (None, socket.gethostname()):
        folder = f"{worker['host']}:{folder}"
    seconds = trial.duration.total_seconds() if trial.duration is not None else None
    value = trial.value if trial.state == TrialState.COMPLETE else None
    return Row(trial.number, dict(trial.params), value, state, seconds, folder)


def write_csv(path: Path, rows: Sequence[Row], keys: Sequence[str], metric: str) -> None:
    """``results.csv``: trial, one column per parameter (full keys), metric, state, seconds, run folder."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *keys, metric, "state", "seconds", "run_folder"])
        for r in rows:
            seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
            writer.writerow([r.trial, *(r.values.get(k, "") for k in keys), r.metric, r.state, seconds, r.run_folder])


def markdown(rows: Sequence[Row], space: Space, recipe: Recipe, header: dict[str, str], best: int | None) -> str:
    """``results.md``: a few summary lines and the table (best trial in bold)."""
    names = short_names([p.key for p in space.params])
    lines = [f"# Sweep `{header['study']}`", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "study"]
    lines += ["", f"| trial | {' | '.join(names.values())} | {recipe.metric} | state | seconds | run folder |"]
    lines.append("|---:|" + "---|" * len(names) + "---:|---|---:|---|")
    for r in rows:
        cells = [str(r.trial), *(str(r.values.get(k, "")) for k in names), format_metric(r.metric)]
        if r.trial == best:
            cells = [f"**{c}**" if c else c for c in cells]
        seconds = "" if r.seconds is None else f"{r.seconds:.0f}"
        folder = f"`{r.run_folder}`" if r.run_folder else ""
        lines.append("| " + " | ".join([*cells, r.state, seconds, folder]) + " |")
    return "\n".join(lines) + "\n"


def plot_choices(ax: Any, labels: Sequence[Any], done: Sequence[Row], key: str) -> list[float]:
    """One column per choice: its trials' scores (spread sideways so equal ones stay visible) and their mean.

    Returns:
        The x position of each trial of ``done``.
    """
    texts = [str(v) for v in labels]
    xs, ys = [], []
    for i, text in enumerate(texts):
        scores = [r.metric for r in done if str(r.values[key]) == text]
        if scores:
            ax.hlines(sum(scores) / len(scores), i - 0.25, i + 0.25, color="0.3", linewidth=1)
    seen: dict[str, int] = {}
    for r in done:
        text = str(r.values[key])
        k, n = seen.get(text, 0), sum(str(o.values[key]) == text for o in done)
        seen[text] = k + 1
        xs.append(texts.index(text) + (0.16 * (k - (n - 1) / 2) / max(n - 1, 1) if n > 1 else 0.0))
        ys.append(r.metric)
    ax.scatter(xs, ys, color="tab:blue", alpha=0.7)
    ax.set_xticks(range(len(texts)), texts, rotation=15 if max(map(len, texts)) > 8 else 0)
    ax.set_xlim(-0.5, len(texts) - 0.5)
    return xs


def write_plot(path: Path, rows: Sequence[Row], space: Space, metric: str, best: int | None) -> bool:
    """``metric_per_param.png``: one panel per parameter, the metric of every complete trial against its value.

    Returns:
        Whether it was written (``False`` without matplotlib, which comes with the ``bench`` extra).
    """
    try:
        from matplotlib.figure import Figure  # the object API needs no pyplot backend
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'sentex[bench]'): no %s", path.name)
        return False
    names = short_names([p.key for p in space.params])
    fig = Figure(figsize=(4.2 * len(space.params), 3.6), layout="constrained")
    for ax, param in zip(fig.subplots(1, len(space.params), squeeze=False)[0], space.params):
        done = [r for r in rows if r.metric is not None and param.key in r.values]
        if param.choices is not None:
            xs = plot_choices(ax, param.labels, done, param.key)
        else:
            xs = [r.values[param.key] for r in done]
            ax.scatter(xs, [r.metric for r in done], color="tab:blue", alpha=0.7)
            ax.set_xscale("log" if param.log else "linear")
        for x, r in zip(xs, done):
            if r.trial == best:
                ax.scatter([x], [r.metric], color="tab:red", marker="*", s=160, zorder=3, label=f"best (trial {best})")
                ax.legend(loc="best", fontsize="small")
        ax.set_title(names[param.key])
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return True


def write_best(path: Path, trial: FrozenTrial, metric: str, study: str) -> None:
    """``best.yaml``: the best trial's full config (see the module docstring), with a comment saying whose."""
    shown = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    header = (
        f"# Best trial of sweep {study}: trial {trial.number}, {metric} = {format_metric(trial.value)}\n"
        f"# {shown}\n"
        f"# Repeat it: sentex fit --config {path.name}\n"
    )
    text = header + yaml.safe_dump(trial.user_attrs["config"], sort_keys=False, allow_unicode=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_reports(
    out: Path, space: Space, recipe: Recipe, trials: Sequence[FrozenTrial], header: dict[str, str]
) -> None:
    """Rewrite every output file of the sweep folder from the study's trials.

    Args:
        out: the sweep folder.
        space: the space file.
        recipe: the recipe (metric, direction).
        trials: every trial of the study.
        header: summary lines for ``results.md`` (``study`` names it; the rest become bullet points).
    """
    rows = [row_of(t) for t in sorted(trials, key=lambda t: t.number)]
    best = best_trial(trials, recipe.direction)
    number = best.number if best is not None else None
    summary = dict(header)
    if best is not None:
        summary["best"] = f"trial {best.number}, {recipe.metric} {format_metric(best.value)} (`best.yaml`)"
    write_csv(out / "results.csv", rows, [p.key for p in space.params], recipe.metric)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown(rows, space, recipe, summary, number), encoding="utf-8")
    if rows:
        write_plot(out / PLOT, rows, space, recipe.metric, number)
    if best is not None and "config" in best.user_attrs:
        write_best(out / "best.yaml", best, recipe.metric, header["study"])
