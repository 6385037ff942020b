"""``sentex align`` builds its model from the SFT checkpoint's settings; the align configs hold alignment settings only.

What must hold: an align run from a ``configs/span.yaml``-style checkpoint (BiLSTM head, independent
scoring, label-shift and soft-target options) needs no model setting repeated; a given model setting
that contradicts the checkpoint fails in one line naming both values, an equal one is accepted;
seq2seq and causal checkpoints are inherited the same way; and a checkpoint of an earlier sentex,
whose hyper-parameters lack the newer settings, aligns with their defaults. Alignment settings
(optimizer, objective) are the align config's, never the checkpoint's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sentex.align_command import AlignCLI
from sentex.alignment.sft import RUN_SETTINGS
from sentex.cli import main
from sentex.data import TweetDataModule
from sentex.errors import SentexError
from sentex.models import CausalExtractor, SpanExtractor
from sentex.models.base import ExtractorModule
from tests.conftest import CONFIG_DIR, TWEETS, save_untrained, sentex, t5_checkpoint, write_rows

# align_cli hands LightningCLI its arguments as the sentex command does (run_cli silences the same warning).
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

# A config's model settings, as the SFT recipe wrote them (shorter inputs: the test's tweets are short).
RECIPE = {**yaml.safe_load((CONFIG_DIR / "span.yaml").read_text())["model"]["init_args"], "max_length": 32}
RECIPE_MODEL = {k: v for k, v in RECIPE.items() if k not in RUN_SETTINGS}


@pytest.fixture(scope="module")
def recipe_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SFT checkpoint with ``configs/span.yaml``'s model settings (seeded, untrained)."""
    # The test is only worth something if the recipe differs from the defaults where it matters.
    assert RECIPE["head_lstm"] and RECIPE["span_soft_targets"] and RECIPE["reapply_label_shift"]
    torch.manual_seed(0)
    return save_untrained(SpanExtractor(**RECIPE), tmp_path_factory.mktemp("recipe") / "sft.ckpt")


def align_cli(config: str, *args: str) -> AlignCLI:
    """``sentex align --config configs/CONFIG ARGS`` built in this process (model, data, trainer), not run."""
    return AlignCLI(
        ExtractorModule, TweetDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
        save_config_callback=None, args=["--config", str(CONFIG_DIR / config), *args],
    )  # fmt: skip


def sft_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# --- span ---------------------------------------------------------------------------------------
def test_align_runs_from_the_recipe_checkpoint_with_no_model_settings(recipe_sft: Path, tmp_path: Path) -> None:
    train = write_rows(tmp_path / "train.csv", TWEETS * 3)
    main([
        "align", "--config", str(CONFIG_DIR / "dpo_span.yaml"), "--model.sft_checkpoint", str(recipe_sft),
        "--data.train_path", str(train), "--data.batch_size", "4", "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    hp = saved["hyper_parameters"]
    assert {k: hp[k] for k in RECIPE_MODEL} == RECIPE_MODEL  # the policy was built as the SFT model
    sft = sft_state(recipe_sft)
    lstm = [k for k in sft if k.startswith("net.lstm.")]
    assert lstm and all(not torch.equal(saved["state_dict"][k], sft[k]) for k in lstm)  # and trained on
    # alignment settings are the align config's, not the SFT run's
    assert hp["learning_rate"] == 2e-5 and hp["head_learning_rate"] is None
    assert saved["sentex"]["dpo"]["loss_type"] == "expected_jaccard"
    # the run's saved config holds the settings it was built with, so it reproduces the run
    written = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    assert written["head_lstm"] is True and written["span_soft_targets"] == RECIPE["span_soft_targets"]


def test_a_contradicting_setting_fails_in_one_line(recipe_sft: Path, tmp_path: Path) -> None:
    res = sentex(
        "align", "--config", str(CONFIG_DIR / "dpo_span.yaml"), "--model.sft_checkpoint", str(recipe_sft),
        "--model.head_lstm", "false", "--data.train_path", "sentex:sample.csv", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("sentex: error:")]
    assert "--model.head_lstm false contradicts the SFT checkpoint's head_lstm=True" in line
    assert line == res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "lightning_logs").exists()  # refused before anything ran


def test_contradictions_from_config_and_command_line_are_named_together(recipe_sft: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((CONFIG_DIR / "dpo_span.yaml").read_text())
    config["model"]["init_args"]["span_soft_targets"] = 0.0
    (tmp_path / "align.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SentexError) as err:
        AlignCLI(
            ExtractorModule, TweetDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
            args=["--config", str(tmp_path / "align.yaml"), "--model.sft_checkpoint", str(recipe_sft),
                  "--model.span_scoring", "joint", "--data.train_path", "sentex:sample.csv"],
        )  # fmt: skip
    message = str(err.value)
    assert "\n" not in message
    assert "model.span_soft_targets: 0.0 (config) contradicts the SFT checkpoint's span_soft_targets=0.5" in message
    assert "--model.span_scoring joint contradicts the SFT checkpoint's span_scoring='independent'" in message


def test_a_setting_equal_to_the_checkpoint_is_accepted(recipe_sft: Path) -> None:
    cli = align_cli(
        "dpo_span.yaml", "--model.sft_checkpoint", str(recipe_sft), "--model.head_lstm", "true",
        "--model.max_length", "32", "--data.train_path", "sentex:sample.csv",
    )  # fmt: skip
    model = cli.model
    assert {k: model.hparams[k] for k in RECIPE_MODEL} == RECIPE_MODEL
    assert isinstance(model.net.lstm, torch.nn.LSTM) and isinstance(model.reference.net.lstm, torch.nn.LSTM)
    assert (model.codec.max_length, model.codec.max_span_tokens) == (32, RECIPE["max_span_tokens"])
    sft = sft_state(recipe_sft)
    for name, value in model.state_dict().items():
        if name.startswith("net.lstm."):  # policy and reference start as the SFT model
            assert torch.equal(value, sft[name]) and torch.equal(model.state_dict()[f"reference.{name}"], sft[name])


def test_a_checkpoint_of_an_earlier_sentex_aligns_with_the_defaults(tmp_path: Path) -> None:
    """Hyper-parameters without the settings added since, and the module layout of that time."""
    torch.manual_seed(0)
    path = save_untrained(SpanExtractor(max_length=32, max_span_tokens=8), tmp_path / "new.ckpt")
    ckpt = torch.load(path, weights_only=True)
    newer = ("head_lstm", "span_soft_targets", "recover_shifted_labels", "reapply_label_shift", "span_scoring",
             "span_label_smoothing", "head_learning_rate", "lr_schedule")  # fmt: skip
    ckpt["hyper_parameters"] = {k: v for k, v in ckpt["hyper_parameters"].items() if k not in newer}
    ckpt["state_dict"] = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}  # encoder.*, head.*
    assert "head.weight" in ckpt["state_dict"] and "head_lstm" not in ckpt["hyper_parameters"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    cli = align_cli("dpo_span.yaml", "--model.sft_checkpoint", str(tmp_path / "old.ckpt"),
                    "--data.train_path", "sentex:sample.csv")  # fmt: skip
    model = cli.model
    assert (model.codec.max_length, model.codec.max_span_tokens) == (32, 8)  # the checkpoint's own
    hp = model.hparams
    assert not hp.head_lstm and hp.span_scoring == "independent" and hp.span_soft_targets == 0.0
    assert torch.equal(model.net.head.weight, ckpt["state_dict"]["head.weight"])


# --- the generative families -------------------------------------------------------------------
def test_seq2seq_alignment_inherits_the_sft_model(tiny_t5: Path, tmp_path: Path) -> None:
    sft = t5_checkpoint(tiny_t5, tmp_path / "sft.ckpt")
    cli = align_cli(
        "dpo.yaml", "--model.sft_checkpoint", str(sft), "--data.train_path", "sentex:sample.csv",
        "--trainer.accelerator", "cpu", "--trainer.precision", "32",
    )  # fmt: skip
    hp = cli.model.hparams
    assert hp.model_name_or_path == str(tiny_t5) and hp.prompt_template == "{sentiment}: {text}"
    assert (hp.lora_r, hp.lora_target_modules, hp.generation) == (4, ["q", "v", "wi", "wo"], {"max_new_tokens": 6})
    assert cli.model.codec.prompt_template == "{sentiment}: {text}" and hp.learning_rate == 5e-5  # the config's
    assert any("wi.lora_A" in k for k in cli.model.state_dict())  # the policy adapter has the SFT's targets


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_causal import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_causal_alignment_inherits_the_sft_model_but_not_its_4bit_base(tiny_llama: Path, tmp_path: Path) -> None:
    settings: dict[str, Any] = dict(
        system_prompt="You copy phrases.", max_length=160, lora_r=4, lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj"], generation={"max_new_tokens": 5},
    )  # fmt: skip
    torch.manual_seed(0)
    path = save_untrained(CausalExtractor(str(tiny_llama), **settings), tmp_path / "sft.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["quantize_base"] = "nf4"  # as a QLoRA SFT run records it: same adapter weights
    torch.save(ckpt, path)
    cli = align_cli(
        "dpo_causal.yaml", "--model.sft_checkpoint", str(path), "--data.train_path", "sentex:sample.csv",
        "--trainer.precision", "32",
    )  # fmt: skip
    hp = cli.model.hparams
    assert hp.model_name_or_path == str(tiny_llama) and {k: hp[k] for k in settings} == settings
    assert hp.quantize_base is None  # the adapter loads onto the float base, which alignment merges it into
    assert cli.model.codec.system_prompt == "You copy phrases." and hp.learning_rate == 5e-5  # the config's
