"""The ``sentex`` command as a user runs it."""

import csv
import importlib
from pathlib import Path

import pytest
import yaml

from sentex.cli import main
from sentex.models import ExtractorModule
from tests.conftest import CONFIG_DIR, CONFIGS, TWEETS, sentex, write_rows

SUBCOMMANDS = ["fit", "validate", "test", "predict"]


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_subcommand_help(subcommand: str, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_main([subcommand, "--help"], capsys)
    assert code == 0
    assert "--data.train_path" in out and "--best_checkpoint.monitor" in out


def test_configs_exist() -> None:
    assert {"lora.yaml", "quickstart.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_main(["fit", "--config", str(config), "--print_config"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    module, _, name = printed["model"]["class_path"].rpartition(".")
    assert module.startswith("sentex.")
    assert issubclass(getattr(importlib.import_module(module), name), ExtractorModule)


def test_unknown_config_key_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: sentex.models.SpanExtractor\n  init_args:\n    learning_rat: 0.1\n")
    code, _, err = run_main(["fit", "--config", str(bad), "--print_config"], capsys)
    assert code != 0 and "learning_rat" in err


@pytest.mark.slow
def test_fit_then_predict_end_to_end(tiny_t5: Path, tmp_path: Path) -> None:
    """Real CLI in a subprocess: TensorBoard events, a checkpoint, and a correct submission.csv."""
    train = write_rows(tmp_path / "train.csv", TWEETS * 4)
    test_rows = [(f"t{i}", text, sentiment) for i, (_, text, _, sentiment) in enumerate(TWEETS)]
    test = write_rows(tmp_path / "test.csv", test_rows, header=("textID", "text", "sentiment"))
    common = [
        "--config", str(CONFIG_DIR / "lora_cpu.yaml"),
        "--model.init_args.model_name_or_path", str(tiny_t5),
        "--trainer.limit_val_batches", "1",
    ]  # fmt: skip
    fit = sentex(
        "fit", *common, "--data.train_path", str(train), "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "2", cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert list(run_dir.glob("events.out.tfevents.*"))
    best = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert best and (run_dir / "checkpoints" / "last.ckpt").exists()
    pred = sentex(
        "predict", *common, "--ckpt_path", str(best[0]), "--data.predict_path", str(test), "--submission.output_path",
        "out/submission.csv", cwd=tmp_path,
    )  # fmt: skip
    assert pred.returncode == 0, pred.stderr[-3000:]
    with open(tmp_path / "out" / "submission.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["textID"] for r in rows] == [r[0] for r in test_rows]
    assert set(rows[0]) == {"textID", "selected_text"}
    assert not list((tmp_path / "out").glob(".*tmp"))


@pytest.mark.slow
def test_data_error_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    bad = write_rows(tmp_path / "bad.csv", [("1", "hi there", "hi", "happy")])
    res = sentex("fit", "--config", str(CONFIG_DIR / "quickstart.yaml"), "--data.train_path", str(bad), cwd=tmp_path)
    assert res.returncode == 1
    assert "sentex: error: " in res.stderr and "unknown value 'happy'" in res.stderr
    assert "Traceback" not in res.stderr
