"""``sentex export``: merged, cast or int8 folders that reload and predict; atomic and refusing overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForSeq2SeqLM

import sentex.deploy.export as export_module
from sentex.cli import main as cli_main
from sentex.deploy.export import export, folder_size
from sentex.deploy.load import load
from sentex.deploy.quant.int4 import Int4Linear
from sentex.errors import CheckpointError, SentexError
from sentex.io.atomic import current_umask
from tests.test_inference import SENTIMENTS, TEXTS, span_checkpoint, t5_checkpoint

DTYPES = ["fp32", "fp16", "bf16", "int8", "int4"]


@pytest.fixture(scope="module")
def span_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return span_checkpoint(tmp_path_factory.mktemp("span") / "span.ckpt")


@pytest.fixture(scope="module")
def span_exports(span_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {d: (export(span_ckpt, root / d, d), root / d)[1] for d in DTYPES}


@pytest.fixture(scope="module")
def t5_ckpt(tiny_t5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return t5_checkpoint(tiny_t5, tmp_path_factory.mktemp("t5") / "t5.ckpt")


def _t5_inputs(tokenizer) -> dict[str, torch.Tensor]:
    enc = tokenizer(["positive: I love this", "negative: worst day ever"], padding=True, return_tensors="pt")
    return {**enc, "decoder_input_ids": torch.zeros((2, 3), dtype=torch.long)}


def test_merged_t5_matches_the_adapter_model(t5_ckpt: Path, tiny_t5: Path, tmp_path: Path) -> None:
    adapter = load(t5_ckpt)
    export(t5_ckpt, tmp_path / "merged", "fp32")
    merged = load(tmp_path / "merged")
    inputs = _t5_inputs(adapter.pipeline.codec.tokenizer)
    with torch.no_grad():
        want = adapter.pipeline.net(**inputs).logits
        got = merged.pipeline.net(**inputs).logits
        base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()(**inputs).logits
    assert not torch.allclose(base, want, atol=1e-3)  # the adapter really changes the model ...
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # ... and the merge keeps that change
    assert merged.extract(TEXTS, SENTIMENTS) == adapter.extract(TEXTS, SENTIMENTS)
    # plain transformers loads the merged folder: no peft, no sentex
    plain = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_t5_every_dtype_exports_and_generates(dtype: str, t5_ckpt: Path, tmp_path: Path) -> None:
    export(t5_ckpt, tmp_path / dtype, dtype)
    ex = load(tmp_path / dtype)
    assert ex.family == "seq2seq" and ex.info["dtype"] == dtype
    preds = ex.extract(TEXTS, SENTIMENTS, batch_size=4)
    assert len(preds) == len(TEXTS) and all(isinstance(p, str) for p in preds)
    if dtype == "int8":
        ffn = ex.pipeline.net.decoder.block[0].layer[2].DenseReluDense
        assert type(ffn.wo) is nn.Linear and ffn.wo.weight.dtype == torch.float32  # transformers #20287
        assert type(ffn.wi) is not nn.Linear
    elif dtype == "int4":
        ffn = ex.pipeline.net.decoder.block[0].layer[2].DenseReluDense
        assert type(ffn.wo) is nn.Linear and ffn.wo.weight.dtype == torch.float32
        assert type(ffn.wi) is Int4Linear
    else:
        assert ex.pipeline.net.dtype == {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_span_every_dtype_reloads_and_answers_substrings(dtype: str, span_exports: dict[str, Path]) -> None:
    ex = load(span_exports[dtype])
    preds = ex.extract(TEXTS, SENTIMENTS, batch_size=4)
    assert all(p in t for p, t in zip(preds, TEXTS))
    assert preds[2] == TEXTS[2].strip()  # neutral rule survives export


def test_span_fp32_export_predicts_exactly_like_the_checkpoint(span_ckpt: Path, span_exports: dict[str, Path]) -> None:
    assert load(span_exports["fp32"]).extract(TEXTS, SENTIMENTS) == load(span_ckpt).extract(TEXTS, SENTIMENTS)
    # the encoder part is a plain transformers folder
    encoder = AutoModel.from_pretrained(span_exports["fp32"])
    assert encoder.config.num_hidden_layers == 6


def test_int8_is_a_third_of_fp32_on_disk_and_close_in_output(span_exports: dict[str, Path]) -> None:
    assert folder_size(span_exports["int8"]) <= 0.35 * folder_size(span_exports["fp32"])
    assert folder_size(span_exports["fp16"]) <= 0.55 * folder_size(span_exports["fp32"])
    full, small = load(span_exports["fp32"]), load(span_exports["int8"])
    batch = full.pipeline.collate([{"text": t, "sentiment": s} for t, s in zip(TEXTS, SENTIMENTS)])
    with torch.no_grad():
        want = full.pipeline.net.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        got = small.pipeline.net.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    cos = nn.functional.cosine_similarity(want.last_hidden_state, got.last_hidden_state, dim=-1)
    cos = cos[batch["attention_mask"].bool()]
    assert cos.mean() > 0.97 and cos.min() > 0.85


def test_int4_is_smaller_than_int8_and_close_in_output(span_exports: dict[str, Path]) -> None:
    """Group-wise 4-bit: under a quarter of fp32 on disk; hidden states still point the same way."""
    assert folder_size(span_exports["int4"]) <= 0.25 * folder_size(span_exports["fp32"])
    assert folder_size(span_exports["int4"]) < folder_size(span_exports["int8"])
    manifest = json.loads((span_exports["int4"] / "sentex.json").read_text())
    assert manifest["weights"] == "model.int4.safetensors" and "groups of 32" in manifest["quantization"]["storage"]
    full, small = load(span_exports["fp32"]), load(span_exports["int4"])
    assert type(small.pipeline.net.encoder.encoder.layer[0].attention.self.query) is Int4Linear
    batch = full.pipeline.collate([{"text": t, "sentiment": s} for t, s in zip(TEXTS, SENTIMENTS)])
    with torch.no_grad():
        want = full.pipeline.net.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        got = small.pipeline.net.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    cos = nn.functional.cosine_similarity(want.last_hidden_state, got.last_hidden_state, dim=-1)
    assert cos[batch["attention_mask"].bool()].mean() > 0.9


def test_manifest_and_model_card(span_exports: dict[str, Path], span_ckpt: Path) -> None:
    folder = span_exports["int8"]
    names = {p.name for p in folder.iterdir()}
    assert {"sentex.json", "README.md", "config.json", "model.int8.safetensors", "head.safetensors"} <= names
    assert "model.safetensors" not in names
    manifest = json.loads((folder / "sentex.json").read_text())
    assert manifest["family"] == "span" and manifest["dtype"] == "int8"
    assert manifest["base_model"] == "packaged:all-MiniLM-L6-v2"
    assert manifest["settings"] == {"max_length": 32, "max_span_tokens": 64, "neutral_full_tweet": True}
    assert manifest["metrics"] == {"val/jaccard": 0.625}
    assert manifest["lora"] is None and manifest["hyper_parameters"]["learning_rate"] == 5e-5
    assert manifest["source_checkpoint"] == str(span_ckpt) and manifest["sentex_version"]
    assert manifest["quantization"]["kept_fp32"] == []
    card = (folder / "README.md").read_text()
    for needle in ("span extractor (int8)", "packaged:all-MiniLM-L6-v2", "## How to load", "0.6250", "## Data licence"):
        assert needle in card


def test_lora_span_manifest_records_the_merged_adapter(tmp_path: Path) -> None:
    ckpt = span_checkpoint(tmp_path / "lora.ckpt", lora_r=4, lora_alpha=8, lora_target_modules=["query", "value"])
    manifest = export(ckpt, tmp_path / "out", "fp32")
    assert manifest["lora"] == {
        "r": 4,
        "alpha": 8,
        "dropout": 0.05,
        "target_modules": ["query", "value"],
        "merged": True,
    }
    assert "LoRA r=4" in (tmp_path / "out" / "README.md").read_text()
    assert load(tmp_path / "out").extract(TEXTS, SENTIMENTS) == load(ckpt).extract(TEXTS, SENTIMENTS)


def test_overwrite_is_refused_unless_asked(span_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    export(span_ckpt, out, "fp16")
    with pytest.raises(SentexError, match="already exists; pass --overwrite"):
        export(span_ckpt, out, "int8")
    assert json.loads((out / "sentex.json").read_text())["dtype"] == "fp16"
    export(span_ckpt, out, "int8", overwrite=True)
    assert json.loads((out / "sentex.json").read_text())["dtype"] == "int8"
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # permissions of an ordinary new folder (umask), not mkdtemp's/safetensors' private 0700/0600
    mask = current_umask()
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~mask for f in out.iterdir())


def test_interrupted_export_leaves_nothing(span_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(manifest):
        raise RuntimeError("killed while writing the model card")

    monkeypatch.setattr(export_module, "render_card", crash)
    with pytest.raises(RuntimeError, match="killed"):
        export(span_ckpt, tmp_path / "new", "int8")
    assert list(tmp_path.iterdir()) == []
    # an existing export survives an interrupted --overwrite untouched
    monkeypatch.undo()
    export(span_ckpt, tmp_path / "old", "fp16")
    monkeypatch.setattr(export_module, "render_card", crash)
    with pytest.raises(RuntimeError):
        export(span_ckpt, tmp_path / "old", "int8", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert load(tmp_path / "old").info["dtype"] == "fp16"


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    assert "sentex: error:" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="cut.ckpt: not a readable checkpoint"):
        export(tmp_path / "cut.ckpt", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", "x.ckpt", "--out", str(tmp_path / "o"), "--dtype", "int3"])
    assert exit_info.value.code == 2


def test_cli_export_prints_size(span_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli_main(["export", "--ckpt_path", str(span_ckpt), "--out", str(tmp_path / "m"), "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert "exported span model (bf16" in out and load(tmp_path / "m").info["dtype"] == "bf16"


# --- validate / test / predict on an exported folder ----------------------------------------------
def _run(*args: str) -> None:
    cli_main([*args, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_predict_and_test_take_an_exported_folder(dtype: str, span_exports: dict[str, Path], tmp_path: Path) -> None:
    import csv

    from tests.conftest import TWEETS, write_rows

    data = write_rows(tmp_path / "tweets.csv", TWEETS)
    folder = str(span_exports[dtype])
    _run("predict", "--ckpt_path", folder, "--data.predict_path", str(data), "--trainer.default_root_dir",
         str(tmp_path), "--submission.output_path", str(tmp_path / "sub.csv"))  # fmt: skip
    with open(tmp_path / "sub.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["textID"] for r in rows] == [t[0] for t in TWEETS]  # input order, every row
    assert [r["selected_text"] for r in rows] == load(folder).extract([t[1] for t in TWEETS], [t[3] for t in TWEETS])
    _run("test", "--ckpt_path", folder, "--data.test_path", str(data), "--trainer.default_root_dir", str(tmp_path))
    with open(tmp_path / "test_predictions.csv", encoding="utf-8") as f:
        report = list(csv.DictReader(f))
    assert len(report) == len(TWEETS) and all(r["prediction"] in r["text"] for r in report)


def _config_naming(tmp_path: Path, folder: Path) -> Path:
    config = tmp_path / "predict.yaml"
    config.write_text(f"ckpt_path: {folder}\nmodel:\n  class_path: sentex.models.SpanExtractor\n", encoding="utf-8")
    return config


def test_exported_folder_misuse_is_a_one_line_error(
    span_exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.conftest import TWEETS, write_rows

    data = str(write_rows(tmp_path / "tweets.csv", TWEETS))
    for args, message in [
        (["predict", "--ckpt_path", str(tmp_path), "--data.predict_path", data], "not a sentex export (no sentex"),
        (["fit", "--ckpt_path", str(span_exports["fp32"]), "--model", "sentex.models.SpanExtractor",
          "--data.train_path", data], "a folder, not a checkpoint"),
        (["predict", "--config", str(_config_naming(tmp_path, span_exports["fp32"])), "--data.predict_path", data],
         "an exported folder set in a config file; pass it on the command line"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            cli_main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and message in err and "Traceback" not in err
