"""``sentex sweep``: space files checked before training, a real grid on the quickstart recipe, its outputs,
the best config repeating the best trial, and a sweep killed mid-trial finishing only what is left.

The tests that train are ``slow`` (about 1.5 minutes together on 2 cores): real ``sentex`` processes,
one of them killed with SIGKILL."""

from __future__ import annotations

import csv
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from sentex.cli import main
from sentex.sweep.space import SpaceError, read_space
from tests.conftest import CONFIG_DIR, require_module, sentex, sentex_command, sentex_env

QUICKSTART = CONFIG_DIR / "quickstart.yaml"
GRID = CONFIG_DIR / "sweeps" / "quickstart_grid.yaml"
# A few seconds per trial: one epoch of two batches, one validation batch, short inputs.
SHRINK = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--model.init_args.max_length", "32", "--model.init_args.warmup_steps", "0",
]  # fmt: skip


def sweep_args(out: Path, *extra: str) -> list[str]:
    return ["sweep", "--config", str(QUICKSTART), "--space", str(GRID), "--out", str(out), *SHRINK, *extra]


def read_results(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def point(row: dict[str, str]) -> tuple[str, ...]:
    """A row's grid point: its values of the space's keys."""
    return tuple(row[key] for key in read_space(GRID).grid())


def best_score(run: Path) -> float:
    """The best-checkpoint score a run's ``best-*.ckpt`` carries, unrounded."""
    (ckpt,) = run.glob("lightning_logs/version_*/checkpoints/best-*.ckpt")
    states = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]
    (score,) = [s["best_model_score"] for k, s in states.items() if "ModelCheckpoint" in k and s.get("monitor")]
    return float(score)


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``sentex ARGS`` in this process: exit code, stdout, stderr."""
    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2 x 2 quickstart grid, run once by the real command; its sweep folder."""
    cwd = tmp_path_factory.mktemp("grid")
    run = sentex(*sweep_args(cwd / "sweep"), cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    return cwd / "sweep"


# --- space files --------------------------------------------------------------------------------
def test_space_file_reading(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("model.init_args.learning_rate: {low: 1e-5, high: 1e-3, log: true}\ndata.batch_size: [8, 16]\n")
    parsed = read_space(space)
    assert not parsed.is_grid and parsed.params[0].low == 1e-5  # 1e-5 is a float, as sentex fit reads it
    assert read_space(GRID).is_grid and read_space(GRID).grid_size == 4
    space.write_text("a: [1, 2\n")
    with pytest.raises(SpaceError, match=r"space.yaml: not valid YAML \(line 2\)"):
        read_space(space)
    with pytest.raises(SpaceError, match="missing.yaml: file not found"):
        read_space(tmp_path / "missing.yaml")


@pytest.mark.parametrize("space", sorted((CONFIG_DIR / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_space_fits_its_recipe(space: Path) -> None:
    """The recipe a space file is for is the ``--config`` of the command in its header comment."""
    from sentex.sweep.recipe import check_recipe

    command = re.search(r"sentex sweep --config (\S+) --space (\S+)", space.read_text(encoding="utf-8"))
    assert command and command.group(2) == f"configs/sweeps/{space.name}", f"{space.name}: no sentex sweep example"
    recipe = check_recipe(read_space(space, strict=False), ["--config", str(CONFIG_DIR.parent / command.group(1))])
    assert recipe.metric == "val/jaccard" and recipe.direction == "maximize"


def test_bad_space_file_fails_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every problem at once, one line each naming the file and key; nothing is created."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model.init_args.lora_rr: [8, 16]\n"  # typo of a real key
        "model.init_args.lora_r: [eight, 16]\n"  # a value the parser refuses
        "data.batch_size: []\n"
        "model.init_args.learning_rate: {low: 1.0e-3, high: 1.0e-5}\n"
        "model.init_args.head_dropout: {low: 0, high: 0.5, log: true}\n"
    )
    out = tmp_path / "sweep"
    code, _, err = run_main(sweep_args(out, "--space", str(bad)), capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"sentex: error: {bad}: 5 problems in the space file",
        f"{bad}: model.init_args.lora_rr: not a setting of the recipe; did you mean model.init_args.lora_r?",
        f"{bad}: model.init_args.lora_r: eight is not a valid value (expected int or None)",
        f"{bad}: data.batch_size: empty list (give at least one value)",
        f"{bad}: model.init_args.learning_rate: low (0.001) must be below high (1e-05)",
        f"{bad}: model.init_args.head_dropout: a log range needs low > 0, got 0",
    ]
    assert not out.exists()

    code, _, err = run_main(sweep_args(out, "--trainer.max_epochz", "2"), capsys)  # a bad fit override
    assert code == 1 and "unrecognized arguments: --trainer.max_epochz" in err.lower() and not out.exists()


# --- a real grid --------------------------------------------------------------------------------
@pytest.mark.slow
def test_grid_runs_every_point_once_and_writes_the_outputs(grid_sweep: Path) -> None:
    rows = read_results(grid_sweep)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert len({point(r) for r in rows}) == 4
    for r in rows:  # each trial a normal sentex run, and the table says where
        run = grid_sweep / r["run_folder"]
        assert r["run_folder"] == f"trial_{int(r['trial']):03d}/lightning_logs/version_0"
        assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
        assert float(r["val/jaccard"]) == best_score(grid_sweep / f"trial_{int(r['trial']):03d}")
        assert float(r["seconds"]) > 0
    best = max(rows, key=lambda r: (float(r["val/jaccard"]), -int(r["trial"])))
    table = (grid_sweep / "results.md").read_text(encoding="utf-8")
    assert "| trial | head_learning_rate | batch_size | val/jaccard | state | seconds | run folder |" in table
    assert f"| **{best['trial']}** |" in table
    assert f"trial {best['trial']}, val/jaccard" in (grid_sweep / "best.yaml").read_text(encoding="utf-8")
    require_module("matplotlib", "the plot needs the bench extra: pip install -e '.[bench]'")
    assert (grid_sweep / "metric_per_param.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_best_yaml_repeats_the_best_trial(grid_sweep: Path, tmp_path: Path) -> None:
    """``sentex fit --config best.yaml`` in a fresh process: the best trial's values and score, written where
    the recipe writes (not into the sweep folder)."""
    best = max(read_results(grid_sweep), key=lambda r: (float(r["val/jaccard"]), -int(r["trial"])))
    fit = sentex("fit", "--config", str(grid_sweep / "best.yaml"), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert best_score(tmp_path) == float(best["val/jaccard"])
    config = (tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text(encoding="utf-8")
    assert f"batch_size: {best['data.batch_size']}\n" in config


@pytest.mark.slow
def test_rerunning_a_finished_study_runs_nothing(grid_sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(grid_sweep, out)
    before = read_results(out)
    code, stdout, err = run_main(sweep_args(out), capsys)
    assert code == 0, err
    assert "4/4 trials done" in stdout and "starts" not in stdout
    assert read_results(out) == before

    other = tmp_path / "other.yaml"
    other.write_text("model.init_args.head_learning_rate: [1.0e-3, 3.0e-3, 1.0e-2]\ndata.batch_size: [8, 16]\n")
    code, _, err = run_main(sweep_args(out, "--space", str(other), "--study", "quickstart_grid"), capsys)
    assert code == 1 and "was started with another space file" in err


@pytest.mark.slow
def test_killed_sweep_finishes_only_the_remaining_points(grid_sweep: Path, tmp_path: Path) -> None:
    """SIGKILL while the third trial trains; the rerun runs two trials (the killed point and the last one)."""
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(
        sentex_command(*sweep_args(out)), cwd=tmp_path, env=sentex_env(), stdout=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(300, sweep.kill)  # never hang the suite on a sweep that does not say "starts"
    watchdog.start()
    try:
        for line in sweep.stdout:
            if "(3/4)" in line and "starts" in line:
                sweep.send_signal(signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        sweep.wait()
    assert sweep.returncode == -signal.SIGKILL
    assert [r["state"] for r in read_results(out)] == ["COMPLETE", "COMPLETE"]

    rerun = sentex(*sweep_args(out), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2/4 trials done" in rerun.stdout
    assert rerun.stdout.count(" starts") == 2, rerun.stdout
    rows = read_results(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "INTERRUPTED", "COMPLETE", "COMPLETE"]
    complete = {point(r): float(r["val/jaccard"]) for r in rows if r["state"] == "COMPLETE"}
    # Every point once, with the score of the uninterrupted sweep, whatever the order or process.
    assert complete == {point(r): float(r["val/jaccard"]) for r in read_results(grid_sweep)}
    assert (out / "best.yaml").is_file()


# --- pruning ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pruned_trial_stops_early_and_is_reported(tmp_path: Path, monkeypatch) -> None:
    """Optuna's Lightning pruning callback stops a trial at its first validation; the sweep goes on."""
    import optuna

    from sentex.sweep.recipe import check_recipe
    from sentex.sweep.study import Sweep, run_sweep

    space_file = tmp_path / "space.yaml"
    space_file.write_text("model.init_args.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}\n")
    space = read_space(space_file)
    monkeypatch.chdir(tmp_path)
    recipe = check_recipe(space, ["--config", str(QUICKSTART), *SHRINK, "--trainer.max_epochs", "2"])
    sweep = Sweep(space, recipe, tmp_path / "sweep", "pruned", f"sqlite:///{tmp_path / 'study.db'}", 1,
                  optuna.pruners.ThresholdPruner(lower=2.0))  # fmt: skip  # a Jaccard is never 2: always prune
    study = run_sweep(sweep)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [0]
    (row,) = read_results(sweep.out)
    assert row["state"] == "PRUNED" and row["val/jaccard"] == ""
    assert not (sweep.out / "best.yaml").exists()  # no complete trial, no best
    assert (sweep.out / row["run_folder"] / "config.yaml").is_file()
