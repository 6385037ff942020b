"""``sentex export --format onnx``: the span network as an ONNX graph that answers like the torch export.

The model is the session's two-step span fit on the packaged MiniLM; the tweets are the sample shipped
with sentex. Answers are compared through the real entry points (``sentex.load``, ``sentex predict``,
``sentex bench``), logits through each export's own network object.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import sentex.deploy.onnx_export as onnx_export
from sentex.cli import main as cli_main
from sentex.data.tweets import read_tweets
from sentex.deploy.bench_measure import measure
from sentex.deploy.export import export, folder_size
from sentex.deploy.load import load
from sentex.deploy.onnx_runtime import OnnxSpanNetwork
from sentex.errors import CheckpointError, SentexError
from sentex.metrics import jaccard
from tests.conftest import TWEETS, fit_span_checkpoint, require_module, t5_checkpoint, write_rows

SAMPLE = read_tweets("sentex:sample.csv", require_labels=True).columns
TEXTS, SENTIMENTS = SAMPLE["text"], SAMPLE["sentiment"]
LOGIT_ATOL = 1e-4
# Of the sample's 240 non-neutral rows, the share of int8 answers that must equal fp32's on this barely trained
# model, whose span scores are close together (measured: ONNX int8 0.82, torch's own int8 export 0.80), and how
# closely int8 start logits must follow fp32's over the real tokens (cosine; measured 0.989 and 0.990).
MIN_INT8_AGREEMENT = 0.7
MIN_INT8_COSINE = 0.95


@pytest.fixture(scope="module", autouse=True)
def onnx_extra() -> None:
    """The ONNX packages: skip without them locally, fail under ``CI=true`` (CI installs the extra)."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        require_module(name, "the onnx extra: pip install 'sentex[onnx]'")


@pytest.fixture(scope="module")
def exports(span_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    export(span_ckpt, root / "torch-fp32", "fp32")
    export(span_ckpt, root / "onnx-fp32", "fp32", runtime="onnx")
    export(span_ckpt, root / "onnx-int8", "int8", runtime="onnx")
    return {p.name: p for p in root.iterdir()}


@dataclass(frozen=True)
class Outputs:
    """What one export does with the sample: its answers (batches of 16), and on all tweets as one padded batch its
    start/end logits and span scores (``real``: the batch's non-padding tokens)."""

    answers: list[str]
    start: torch.Tensor
    end: torch.Tensor
    spans: torch.Tensor
    real: torch.Tensor


@pytest.fixture(scope="module")
def outputs(exports: dict[str, Path]) -> dict[str, Outputs]:
    out = {}
    for name, folder in exports.items():
        extractor = load(folder)
        pipeline = extractor.pipeline
        batch = pipeline.collate([{"text": t, "sentiment": s} for t, s in zip(TEXTS, SENTIMENTS)])
        with torch.no_grad():
            logits = pipeline.codec.logits(pipeline.net, batch)
            spans = pipeline.codec.span_scores(pipeline.net, batch)
        answers = extractor.extract(TEXTS, SENTIMENTS, batch_size=16)
        out[name] = Outputs(answers, logits.start, logits.end, spans, batch["attention_mask"].bool())
    return out


def test_onnx_fp32_answers_like_the_torch_export(outputs: dict[str, Outputs]) -> None:
    """Same phrases on every sample tweet; start/end logits within 1e-4 at every real token."""
    want, got = outputs["torch-fp32"], outputs["onnx-fp32"]
    assert len(got.answers) == len(TEXTS) and got.answers == want.answers
    real = want.real
    assert want.start[real].abs().max() > 10 * LOGIT_ATOL  # not trivially close
    torch.testing.assert_close(got.start[real], want.start[real], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(got.end[real], want.end[real], atol=LOGIT_ATOL, rtol=0)
    valid = want.spans > -1e8  # spans the codec rules out score -inf (or the dtype's lowest) in both
    assert torch.equal(valid, got.spans > -1e8)
    torch.testing.assert_close(got.spans[valid], want.spans[valid], atol=4 * LOGIT_ATOL, rtol=0)


def test_onnx_int8_runs_and_mostly_agrees(exports: dict[str, Path], outputs: dict[str, Outputs]) -> None:
    assert folder_size(exports["onnx-int8"]) <= 0.35 * folder_size(exports["onnx-fp32"])
    want, got = outputs["onnx-fp32"], outputs["onnx-int8"]
    assert all(p in t for p, t in zip(got.answers, TEXTS))
    rows = [i for i, s in enumerate(SENTIMENTS) if s != "neutral"]  # neutral answers are the rule's, not the net's
    same = sum(got.answers[i] == want.answers[i] for i in rows) / len(rows)
    assert same >= MIN_INT8_AGREEMENT, f"int8 agrees with fp32 on {same:.2f} of the rows"
    real = want.real
    assert (got.start - want.start)[real].abs().max() > LOGIT_ATOL  # really quantized ...
    assert torch.cosine_similarity(got.start[real], want.start[real], dim=0) >= MIN_INT8_COSINE  # ... same network


def test_folder_manifest_and_card(exports: dict[str, Path], span_ckpt: Path) -> None:
    for dtype in ("fp32", "int8"):
        folder = exports[f"onnx-{dtype}"]
        graph = "model.onnx" if dtype == "fp32" else "model.int8.onnx"
        names = {p.name for p in folder.iterdir()}
        assert {"sentex.json", "README.md", "config.json", graph, "tokenizer.json"} <= names
        assert not names & {"model.safetensors", "head.safetensors", "model.int8.safetensors"}
        manifest = json.loads((folder / "sentex.json").read_text())
        torch_manifest = json.loads((exports["torch-fp32"] / "sentex.json").read_text())
        assert manifest["runtime"] == "onnx" and manifest["dtype"] == dtype and manifest["weights"] == graph
        assert manifest["settings"] == torch_manifest["settings"] and manifest["family"] == "span"
        assert manifest["source_checkpoint"] == str(span_ckpt)
        assert manifest["onnx"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert manifest["onnx"]["outputs"] == ["start", "end"] and manifest["onnx"]["opset"] == onnx_export.OPSET
        assert manifest["onnx"]["max_abs_logit_diff_fp32"] <= onnx_export.CHECK_ATOL
        assert (manifest["quantization"] is None) == (dtype == "fp32")
        card = (folder / "README.md").read_text()
        assert f"span extractor ({dtype}, ONNX Runtime)" in card and f"`{graph}`" in card
    assert json.loads((exports["torch-fp32"] / "sentex.json").read_text())["runtime"] == "torch"


def test_session_uses_torchs_threads(exports: dict[str, Path]) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        net = load(exports["onnx-fp32"]).pipeline.net
        assert isinstance(net, OnnxSpanNetwork)
        assert net.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


def _run(*args: str) -> None:
    cli_main([*args, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_predict_cli_runs_an_onnx_folder(dtype: str, exports: dict[str, Path], tmp_path: Path) -> None:
    data = write_rows(tmp_path / "tweets.csv", TWEETS)
    folder = str(exports[f"onnx-{dtype}"])
    _run("predict", "--ckpt_path", folder, "--data.predict_path", str(data), "--trainer.default_root_dir",
         str(tmp_path), "--submission.output_path", str(tmp_path / "sub.csv"))  # fmt: skip
    with open(tmp_path / "sub.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["textID"] for r in rows] == [t[0] for t in TWEETS]
    assert [r["selected_text"] for r in rows] == load(folder).extract([t[1] for t in TWEETS], [t[3] for t in TWEETS])


def expected_jaccard(folder: Path, batch_size: int) -> float:
    """Mean Jaccard of ``sentex.load(folder)`` on TWEETS, computed without the bench code."""
    texts, golds, sentiments = [t[1] for t in TWEETS], [t[2] for t in TWEETS], [t[3] for t in TWEETS]
    preds = load(folder).extract(texts, sentiments, batch_size=batch_size)
    return round(sum(map(jaccard, preds, golds)) / len(TWEETS), 4)


def test_bench_measures_an_onnx_folder(exports: dict[str, Path], tmp_path: Path) -> None:
    val = write_rows(tmp_path / "val.csv", TWEETS)
    row = measure(str(exports["onnx-int8"]), str(val), [1, 4], latency_rows=4, repeats=1)
    assert (row["model"], row["family"], row["dtype"], row["runtime"]) == ("onnx-int8", "span", "int8", "onnx")
    assert row["jaccard"] == expected_jaccard(exports["onnx-int8"], batch_size=4)
    assert row["size_mb"] == round(folder_size(exports["onnx-int8"]) / 2**20, 2)
    assert row["ms_per_sample_b1"] > 0 and row["throughput_b4"] == round(1000 / row["ms_per_sample_b4"], 1)


@pytest.mark.slow
def test_bench_puts_onnx_next_to_torch(exports: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The command itself, each model in its own process: one table, the runtime column telling them apart."""
    val = write_rows(tmp_path / "val.csv", TWEETS)
    models = [str(exports["torch-fp32"]), str(exports["onnx-int8"])]
    args = ["--data.val_path", str(val), "--out", str(tmp_path / "b"), "--batch_sizes", "1", "4"]
    cli_main(["bench", *models, *args, "--latency_rows", "4", "--repeats", "1", "--threads", "1"])
    assert "| model | family | dtype | runtime |" in capsys.readouterr().out
    with open(tmp_path / "b" / "bench.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["dtype"], r["runtime"]) for r in rows] == [
        ("torch-fp32", "fp32", "torch"),
        ("onnx-int8", "int8", "onnx"),
    ]
    assert [float(r["jaccard"]) for r in rows] == [expected_jaccard(exports[r["model"]], 4) for r in rows]
    assert float(rows[1]["size_mb"]) == round(folder_size(exports["onnx-int8"]) / 2**20, 2)
    assert float(rows[1]["ms_per_sample_b4"]) > 0 and float(rows[1]["peak_rss_mb"]) > 0


# --- bad input ----------------------------------------------------------------------------------
def test_onnx_takes_fp32_or_int8_only(span_ckpt: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SentexError, match=r"^--format onnx takes --dtype fp32 or int8, got 'int4'$"):
        export(span_ckpt, tmp_path / "o", "int4", runtime="onnx")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", str(span_ckpt), "--out", str(tmp_path / "o"), "--format", "onnx",
                  "--dtype", "bf16"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err == "sentex: error: --format onnx takes --dtype fp32 or int8, got 'bf16'\n"
    assert not (tmp_path / "o").exists()


def test_the_int8_graph_stores_int8_weights_and_dequantizes_them(exports: dict[str, Path]) -> None:
    """Every Linear weight and embedding table is int8 behind a DequantizeLinear; activations stay float."""
    import onnx

    graph = onnx.load(str(exports["onnx-int8"] / "model.int8.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops  # no per-batch activation scale
    int8 = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8) == ops.count("DequantizeLinear") >= 6 * 6 + 1  # 6 per layer x 6 layers + the embeddings ...
    assert any("word_embeddings" in name for name in int8)
    big_floats = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2]
    assert not big_floats  # ... and no float32 matrix left


def test_an_int8_graph_beyond_the_bounds_is_refused_and_nothing_is_written(
    span_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quantizer that spoils the weights (here: every int8 weight's sign flipped) fails the export's check."""
    import onnx
    from onnx import numpy_helper

    quantize = onnx_export.quantize_weights_int8

    def spoiled(source: Path, target: Path) -> None:
        quantize(source, target)
        model = onnx.load(str(target))
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.INT8:
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        onnx.save(model, str(target))

    monkeypatch.setattr(onnx_export, "quantize_weights_int8", spoiled)
    with pytest.raises(SentexError, match=r"^ONNX int8 export failed: its logits' cosine to torch's: -?[\d.]+ \(bound"):
        export(span_ckpt, tmp_path / "o", "int8", runtime="onnx")
    assert not (tmp_path / "o").exists()


def test_onnx_refuses_a_seq2seq_checkpoint(tiny_t5: Path, tmp_path: Path) -> None:
    ckpt = t5_checkpoint(tiny_t5, tmp_path / "t5.ckpt")
    with pytest.raises(SentexError, match=r"t5.ckpt: a seq2seq checkpoint; --format onnx exports span models only$"):
        export(ckpt, tmp_path / "o", "fp32", runtime="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t5.ckpt"]


def test_missing_onnxruntime_is_one_line(
    exports: dict[str, Path], span_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when it is not installed
    hint = "needs the 'onnxruntime' package: pip install 'sentex[onnx]'"
    with pytest.raises(SentexError) as err:
        export(span_ckpt, tmp_path / "o", "fp32", runtime="onnx")
    assert str(err.value) == f"--format onnx {hint}" and not (tmp_path / "o").exists()
    folder = exports["onnx-fp32"]
    with pytest.raises(CheckpointError) as err:
        load(folder)
    assert str(err.value) == f"{folder}: an ONNX export {hint}"
    data = write_rows(tmp_path / "tweets.csv", TWEETS)
    with pytest.raises(SystemExit) as exit_info:
        _run("predict", "--ckpt_path", str(folder), "--data.predict_path", str(data))
    assert exit_info.value.code == 1 and capsys.readouterr().err == f"sentex: error: {folder}: an ONNX export {hint}\n"


def test_broken_onnx_folders_are_one_line_errors(exports: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(exports["onnx-fp32"], folder)
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut: incomplete or corrupt export: model.onnx: "):
        load(folder)
    (folder / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"cut: incomplete or corrupt export: no model.onnx$"):
        load(folder)
    manifest = json.loads((folder / "sentex.json").read_text())
    (folder / "sentex.json").write_text(json.dumps({**manifest, "dtype": "bf16"}))
    with pytest.raises(CheckpointError, match=r"sentex.json: an ONNX export is fp32 or int8, not 'bf16'$"):
        load(folder)
    (folder / "sentex.json").write_text(json.dumps({**manifest, "runtime": "tensorrt"}))
    with pytest.raises(CheckpointError, match=r"sentex.json: unknown runtime 'tensorrt' \(known: torch, onnx\)$"):
        load(folder)


@pytest.mark.slow
def test_an_onnx_ensemble_answers_like_the_torch_ensemble(
    span_ckpt: Path, untrained_span_ckpt: Path, tmp_path: Path
) -> None:
    members = [span_ckpt, untrained_span_ckpt]
    export(members, tmp_path / "torch", "fp32")
    manifest = export(members, tmp_path / "onnx", "fp32", runtime="onnx")
    assert manifest["runtime"] == "onnx" and manifest["ensemble"]["members"] == ["members/0", "members/1"]
    assert all((tmp_path / "onnx" / m / "model.onnx").is_file() for m in manifest["ensemble"]["members"])
    onnx = load(tmp_path / "onnx")
    assert all(isinstance(net, OnnxSpanNetwork) for net in onnx.pipeline.net.members)
    assert onnx.extract(TEXTS, SENTIMENTS) == load(tmp_path / "torch").extract(TEXTS, SENTIMENTS)


@pytest.mark.slow
def test_a_lora_joint_scoring_model_exports_merged_with_its_pair_term(tmp_path: Path) -> None:
    ckpt = fit_span_checkpoint(
        tmp_path / "lora.ckpt", lora_r=4, lora_alpha=8, lora_target_modules=["query", "value"], span_scoring="joint"
    ).path
    manifest = export(ckpt, tmp_path / "onnx", "fp32", runtime="onnx")
    assert manifest["onnx"]["outputs"] == ["start", "end", "pair"] and manifest["lora"]["merged"]
    onnx = load(tmp_path / "onnx")
    assert onnx.pipeline.net.scoring == "joint"
    assert onnx.extract(TEXTS, SENTIMENTS) == load(ckpt).extract(TEXTS, SENTIMENTS)
