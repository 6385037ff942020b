"""``sentex sweep``: search hyper-parameters of a recipe with Optuna, each trial a normal ``sentex fit`` run.

    sentex sweep --config configs/quickstart.yaml --space configs/sweeps/quickstart_grid.yaml
    sentex sweep --config configs/span.yaml --space my_space.yaml --n_trials 30 --trainer.max_epochs 1

Arguments the sweep does not know (``--trainer.max_epochs 1``) are ``sentex fit`` overrides for every
trial. The space file and those overrides are checked against the recipe's parser before any trial
runs. Trials run one after another in this process; several processes or machines share one study
through ``--storage`` (see the README, "Hyper-parameter sweeps").
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import optuna

from sentex.errors import SentexError
from sentex.sweep.recipe import check_recipe
from sentex.sweep.space import read_space
from sentex.sweep.study import Sweep, default_storage, describe_outputs, run_sweep, target_trials

PRUNERS = ("median", "none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentex sweep",
        allow_abbrev=False,  # an abbreviation could swallow a fit override
        description="Search hyper-parameters with Optuna: a grid when every space entry is a list, TPE otherwise.",
        epilog="Other --key value arguments are sentex fit overrides for every trial (e.g. --trainer.max_epochs 1).",
    )
    parser.add_argument("--config", action="append", required=True, help="the recipe (as for sentex fit; repeatable)")
    parser.add_argument("--space", required=True, help="space file: config key -> [values] or {low, high, log, step}")
    parser.add_argument(
        "--n_trials",
        type=int,
        help="finished trials the study should have, earlier runs and other workers included"
        " (default: the whole grid, or 20 for TPE)",
    )
    parser.add_argument("--study", help="study name (default: the space file's name)")
    parser.add_argument("--out", help="sweep folder for trial runs and results (default: sweeps/<study>)")
    parser.add_argument(
        "--storage",
        help="Optuna storage URL shared by every worker, e.g. postgresql://user:pw@host/db"
        " (default: sqlite:///<out>/study.db)",
    )
    parser.add_argument(
        "--pruner", choices=PRUNERS, help="stop unpromising trials early (default: none for a grid, median for TPE)"
    )
    return parser


def split_overrides(extra: Sequence[str]) -> list[str]:
    """Check that the arguments argparse left over are ``--key value`` overrides.

    >>> split_overrides(["--trainer.max_epochs", "1", "--data.batch_size=4"])
    ['--trainer.max_epochs', '1', '--data.batch_size=4']
    >>> split_overrides(["stray"])
    Traceback (most recent call last):
    ...
    sentex.errors.SentexError: sentex sweep: unexpected argument 'stray' (fit overrides are --key value)
    """
    if extra and not extra[0].startswith("--"):
        raise SentexError(f"sentex sweep: unexpected argument {extra[0]!r} (fit overrides are --key value)")
    return list(extra)


def make_pruner(name: str | None, grid: bool) -> optuna.pruners.BasePruner:
    """Median pruning (a trial whose score falls below the median of earlier trials at that epoch stops), or none."""
    name = name or ("none" if grid else "median")
    return optuna.pruners.MedianPruner() if name == "median" else optuna.pruners.NopPruner()


def main(argv: list[str]) -> None:
    """Run ``sentex sweep ARGS``."""
    args, extra = build_parser().parse_known_args(argv)
    if args.n_trials is not None and args.n_trials < 1:
        raise SentexError(f"--n_trials must be 1 or more, got {args.n_trials}")
    space = read_space(args.space, strict=False)
    fit_args = [arg for config in args.config for arg in ("--config", config)] + split_overrides(extra)
    recipe = check_recipe(space, fit_args)  # raises on any problem of the space file, its own or the parser's
    study = args.study or Path(args.space).stem
    out = Path(args.out or Path("sweeps") / study)
    sweep = Sweep(
        space=space,
        recipe=recipe,
        out=out,
        study_name=study,
        storage=args.storage or default_storage(out),
        n_trials=target_trials(space, args.n_trials),
        pruner=make_pruner(args.pruner, space.is_grid),
    )
    result = run_sweep(sweep)
    print(describe_outputs(sweep, result.get_trials(deepcopy=False)), flush=True)
