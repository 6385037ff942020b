"""``sentex export``: merged, cast or int8 folders that reload and predict; atomic and refusing overwrite."""

from __future__ import annotations

import csv
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
from sentex.deploy.quant.int8 import RowScaledDynamicLinear, int8_compute
from sentex.errors import CheckpointError, SentexError
from sentex.io.atomic import current_umask
from tests.conftest import (
    SENTIMENTS,
    TEXTS,
    TWEETS,
    FittedCheckpoint,
    fit_span_checkpoint,
    t5_checkpoint,
    write_rows,
)

DTYPES = ["fp32", "fp16", "bf16", "int8", "int4"]
# How far each export's logits may be from the fp32 export's on the tiny T5 (logits' std is about 1):
# largest absolute error (None: unbounded), mean absolute error, and mean cosine similarity per position.
# Measured (the random tiny T5 differs between transformers releases): fp16 0.11-0.14 / 0.0044-0.0077 /
# 1.000, bf16 0.51-0.56 / 0.027-0.049 / 0.997-0.999, int8 1.1-3.9 / 0.086-0.20 / 0.942-0.992, int4
# 2.9-3.7 / 0.31-0.44 / 0.82-0.92 (4-bit groups of 32 over d_model=64 are coarse; int8's largest error
# is as large as the logits themselves, so only its mean is bounded); under transformers 5.24 and 4.56.
T5_LOGIT_TOLERANCE: dict[str, tuple[float | None, float, float]] = {
    "fp16": (0.3, 0.02, 0.999),
    "bf16": (1.5, 0.12, 0.99),
    "int8": (None, 0.5, 0.9),
    "int4": (None, 1.0, 0.7),
}
# Of the 11 TEXTS, how many fp16/bf16 greedy generations must equal fp32's (measured 9-11 and 6-9).
MIN_SAME_GREEDY_ROWS = {"fp16": 8, "bf16": 5}


@pytest.fixture(scope="module")
def span_exports(span_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {d: (export(span_ckpt, root / d, d), root / d)[1] for d in DTYPES}


@pytest.fixture(scope="module")
def t5_ckpt(tiny_t5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return t5_checkpoint(tiny_t5, tmp_path_factory.mktemp("t5") / "t5.ckpt")


@pytest.fixture(scope="module")
def t5_exports(t5_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("t5-exports")
    return {d: (export(t5_ckpt, root / d, d), root / d)[1] for d in DTYPES}


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
def test_t5_every_dtype_exports_and_generates(dtype: str, t5_exports: dict[str, Path]) -> None:
    ex = load(t5_exports[dtype])
    assert ex.family == "seq2seq" and ex.info["dtype"] == dtype
    preds = ex.extract(TEXTS, SENTIMENTS, batch_size=4)
    assert len(preds) == len(TEXTS) and all(isinstance(p, str) for p in preds)
    if dtype == "int8":
        ffn = ex.pipeline.net.decoder.block[0].layer[2].DenseReluDense
        assert type(ffn.wo) is nn.Linear and ffn.wo.weight.dtype == torch.float32  # transformers #20287
        # int8 kernels where the CPU has VNNI/AMX; elsewhere the int8 weights computed in float32
        assert type(ffn.wi) is (RowScaledDynamicLinear if int8_compute() == "int8" else nn.Linear)
    elif dtype == "int4":
        ffn = ex.pipeline.net.decoder.block[0].layer[2].DenseReluDense
        assert type(ffn.wo) is nn.Linear and ffn.wo.weight.dtype == torch.float32
        assert type(ffn.wi) is Int4Linear
    else:
        assert ex.pipeline.net.dtype == {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _greedy_with_logits(net: nn.Module, batch: dict, generation: dict, path: torch.Tensor | None = None):
    """Greedy ids of ``net`` on ``batch``, and its float32 logits along ``path`` (default: its own ids).

    Teacher-forcing one decoder path through two nets compares their logits at the same steps.
    """
    prompt = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ids = net.generate(**prompt, **generation)
        path = ids if path is None else path
        logits = net(**prompt, decoder_input_ids=path).logits.float()
    return ids, logits[:, : path.shape[1] - 1]  # the last position predicts past the generated tokens


@pytest.fixture(scope="module")
def t5_logits(t5_exports: dict[str, Path]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each export's greedy ids on TEXTS and its logits along the fp32 export's greedy path."""
    full = load(t5_exports["fp32"]).pipeline
    batch = full.collate([{"text": t, "sentiment": s} for t, s in zip(TEXTS, SENTIMENTS)])
    generation = {**full.codec.generation, "num_beams": 1, "do_sample": False}
    out = {"fp32": _greedy_with_logits(full.net, batch, generation)}
    for dtype in DTYPES[1:]:
        out[dtype] = _greedy_with_logits(load(t5_exports[dtype]).pipeline.net, batch, generation, out["fp32"][0])
    return out


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_t5_exports_match_the_fp32_export_numerically(
    dtype: str, t5_logits: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Same prompts, same decoder path: logits within the dtype's tolerance of fp32's; fp16/bf16 greedy
    generations equal fp32's on every row where no near-tie flips a step."""
    ids32, want = t5_logits["fp32"]
    ids, got = t5_logits[dtype]
    max_abs, mean_abs, mean_cos = T5_LOGIT_TOLERANCE[dtype]
    err = (got - want).abs()
    if max_abs is not None:
        torch.testing.assert_close(got, want, atol=max_abs, rtol=0)
    assert err.mean() <= mean_abs, f"{dtype}: mean |logit error| {err.mean():.4f} > {mean_abs}"
    cos = nn.functional.cosine_similarity(got, want, dim=-1).mean()
    assert cos >= mean_cos, f"{dtype}: mean cosine {cos:.4f} < {mean_cos}"
    if dtype in ("fp16", "bf16"):
        # Where this dtype's argmax is fp32's token at every step of fp32's greedy path, its own greedy
        # decoding follows that path, so generate() must return fp32's tokens exactly. Rows with a
        # near-tie (the tiny random T5 has top-2 margins down to 0.001) may flip.
        same_path = (got.argmax(dim=-1) == want.argmax(dim=-1)).all(dim=1)
        assert same_path.sum() >= MIN_SAME_GREEDY_ROWS[dtype], f"{dtype}: {same_path.sum()} rows follow fp32's path"
        assert ids.shape == ids32.shape and torch.equal(ids[same_path], ids32[same_path])


def test_t5_lower_precision_is_less_exact(t5_logits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    want = t5_logits["fp32"][1]
    errors = [(t5_logits[d][1] - want).abs().mean().item() for d in DTYPES[1:]]
    assert errors == sorted(errors) and errors[0] > 0, dict(zip(DTYPES[1:], errors))


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


def test_manifest_and_model_card(span_exports: dict[str, Path], span_fit: FittedCheckpoint) -> None:
    span_ckpt, score = span_fit.path, span_fit.metrics["val/jaccard"]
    folder = span_exports["int8"]
    names = {p.name for p in folder.iterdir()}
    assert {"sentex.json", "README.md", "config.json", "model.int8.safetensors", "head.safetensors"} <= names
    assert "model.safetensors" not in names
    manifest = json.loads((folder / "sentex.json").read_text())
    assert manifest["family"] == "span" and manifest["dtype"] == "int8" and manifest["runtime"] == "torch"
    assert manifest["base_model"] == "packaged:all-MiniLM-L6-v2"
    assert manifest["settings"] == {
        "max_length": 32,
        "max_span_tokens": 64,
        "neutral_full_tweet": True,
        "reapply_label_shift": False,
    }
    assert manifest["metrics"] == {"val/jaccard": round(score, 6)}  # as the real ModelCheckpoint kept it
    assert manifest["lora"] is None and manifest["hyper_parameters"]["learning_rate"] == 5e-5
    assert manifest["source_checkpoint"] == str(span_ckpt) and manifest["sentex_version"]
    assert manifest["quantization"]["kept_fp32"] == []
    card = (folder / "README.md").read_text()
    needles = (
        "span extractor (int8)",
        "packaged:all-MiniLM-L6-v2",
        "## How to load",
        f"{score:.4f}",
        "## Data licence",
    )
    for needle in needles:
        assert needle in card


def test_lora_span_manifest_records_the_merged_adapter(tmp_path: Path) -> None:
    fitted = fit_span_checkpoint(tmp_path / "lora.ckpt", lora_r=4, lora_alpha=8, lora_target_modules=["query", "value"])
    ckpt = fitted.path
    manifest = export(ckpt, tmp_path / "out", "fp32")
    assert manifest["metrics"] == {"val/jaccard": round(fitted.metrics["val/jaccard"], 6)}
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
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", "x.ckpt", "--out", str(tmp_path / "o"), "--format", "tflite"])
    assert exit_info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_cli_export_prints_size(span_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli_main(["export", "--ckpt_path", str(span_ckpt), "--out", str(tmp_path / "m"), "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert "exported span model (bf16" in out and load(tmp_path / "m").info["dtype"] == "bf16"


# --- validate / test / predict on an exported folder ----------------------------------------------
def _run(*args: str) -> None:
    cli_main([*args, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_predict_and_test_take_an_exported_folder(dtype: str, span_exports: dict[str, Path], tmp_path: Path) -> None:
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
