"""Where ``sentex fit`` writes: everything under ``--trainer.default_root_dir``, nothing in the current folder.

The configs leave the logger to Lightning's default (a TensorBoard logger under
``default_root_dir/lightning_logs``); a logger pinned to ``save_dir: .`` would put the logs and the
checkpoints in the current folder whatever ``default_root_dir`` says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def sentex(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sentex", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_no_config_pins_the_log_folder(config: Path) -> None:
    trainer = yaml.safe_load(config.read_text(encoding="utf-8")).get("trainer") or {}
    logger = trainer.get("logger")
    save_dir = (logger.get("init_args") or {}).get("save_dir") if isinstance(logger, dict) else None
    assert save_dir is None, f"{config.name}: trainer.logger.init_args.save_dir overrides --trainer.default_root_dir"


@pytest.mark.slow
def test_fit_writes_only_under_default_root_dir_and_resumes_from_last(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    common = [
        "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", "runs/x",
    ]  # fmt: skip
    fit = sentex("fit", *common, "--trainer.max_epochs", "1", cwd=cwd)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = cwd / "runs" / "x" / "lightning_logs" / "version_0"
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"], files_under(cwd)
    assert [p.name for p in (cwd / "runs" / "x").iterdir()] == ["lightning_logs"]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["best-epoch0-step2.ckpt", "last.ckpt"]
    assert list(run.glob("events.out.tfevents.*")) and (run / "config.yaml").is_file()

    # `--ckpt_path last` looks in default_root_dir/lightning_logs, where the first run wrote.
    resumed = sentex("fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = Path("runs/x/lightning_logs/version_0/checkpoints/last.ckpt")
    assert f"Restoring states from the checkpoint path at {last}" in resumed.stderr
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"], files_under(cwd)
    again = cwd / "runs" / "x" / "lightning_logs" / "version_1" / "checkpoints"
    assert sorted(p.name for p in again.iterdir()) == ["best-epoch1-step4.ckpt", "last.ckpt"]
