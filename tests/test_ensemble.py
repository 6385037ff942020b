"""Fold ensembles of span models: one member equals that member, an ensemble export round-trips and its
answers are the members' averaged span distributions, it runs in predict and bench like one model, and
checkpoints that cannot answer as one are refused before anything is written."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import sentex
import sentex.deploy.export as export_module
from sentex.cli import main as cli_main
from sentex.deploy.export import export
from sentex.deploy.load import Extractor, load, module_from_checkpoint
from sentex.deploy.quant.int8 import RowScaledDynamicLinear, int8_compute
from sentex.errors import CheckpointError
from sentex.metrics import jaccard
from sentex.models import SpanExtractor
from sentex.models.components.pipeline import InferencePipeline
from sentex.models.components.span_ensemble import SpanEnsemble
from tests.conftest import SENTIMENTS, TEXTS, TWEETS, FittedCheckpoint, save_untrained, t5_checkpoint, write_rows

ROWS = [{"textID": str(i), "text": t, "sentiment": s} for i, (t, s) in enumerate(zip(TEXTS, SENTIMENTS))]


# --- fixtures: two different members, their ensemble exported fp32 and int8 ------------------------
def untrained_span(path: Path, seed: int, **kw) -> Path:
    torch.manual_seed(seed)
    return save_untrained(SpanExtractor(**{"max_length": 32, **kw}), path)


@pytest.fixture(scope="module")
def members(span_fit: FittedCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The session's fitted span checkpoint and an untrained joint-scoring one (another head, another scoring)."""
    return [span_fit.path, untrained_span(tmp_path_factory.mktemp("member") / "joint.ckpt", 1, span_scoring="joint")]


@pytest.fixture(scope="module")
def ensembles(members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ensembles")
    for dtype in ("fp32", "int8"):
        export(members, root / f"ens-{dtype}", dtype)
    return {dtype: root / f"ens-{dtype}" for dtype in ("fp32", "int8")}


def span_distribution(net: nn.Module, batch: dict, max_span: int) -> torch.Tensor:
    """``(batch, tokens, tokens)`` probability of each span, computed here from the raw logits: softmax of
    ``start_i + end_j (+ pair_ij)`` over the pairs ``i <= j < i + max_span`` of tweet tokens."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        out = net(**inputs)
    scores = out.start[:, :, None] + out.end[:, None, :] + (0 if out.pair is None else out.pair)
    idx = torch.arange(scores.shape[1])
    band = (idx[None, :] >= idx[:, None]) & (idx[None, :] < idx[:, None] + max_span)
    valid = band[None] & batch["in_tweet"][:, :, None] & batch["in_tweet"][:, None, :]
    return scores.masked_fill(~valid, float("-inf")).flatten(1).softmax(-1).view_as(scores)


def answers(pipeline: InferencePipeline) -> list[str]:
    return Extractor(pipeline, "span", {}).extract(TEXTS, SENTIMENTS)


# --- (a) one member ---------------------------------------------------------------------------------
def test_an_ensemble_of_one_member_equals_that_member(members: list[Path]) -> None:
    module, _ = module_from_checkpoint(members[0])
    single = InferencePipeline(module.net, module.codec)
    alone = InferencePipeline(SpanEnsemble([module.net]), module.codec)
    assert answers(alone) == answers(single)
    batch = module.codec.collate(ROWS)
    want, got = module.codec.span_scores(module.net, batch), module.codec.span_scores(SpanEnsemble([module.net]), batch)
    rows = batch["in_tweet"].any(1)  # the empty tweet has no span at all
    n = want.shape[-1]
    assert torch.equal(want[rows].flatten(1).argmax(1) // n, got[rows].flatten(1).argmax(1) // n)
    assert torch.equal(want[rows].flatten(1).argmax(1), got[rows].flatten(1).argmax(1))
    # the one member's distribution, not just its argmax
    torch.testing.assert_close(got[rows].exp(), span_distribution(module.net, batch, 64)[rows])


# --- (b) export round trip --------------------------------------------------------------------------
def test_ensemble_folder_layout_manifest_and_card(
    ensembles: dict[str, Path], members: list[Path], span_fit: FittedCheckpoint
) -> None:
    folder = ensembles["fp32"]
    assert {"sentex.json", "README.md", "tokenizer.json", "members"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "model.safetensors").exists()
    manifest = json.loads((folder / "sentex.json").read_text())
    assert manifest["family"] == "span" and manifest["dtype"] == "fp32"
    assert manifest["ensemble"] == {"members": ["members/0", "members/1"], "combine": "mean span probability"}
    assert manifest["settings"] == module_from_checkpoint(members[0])[0].codec.settings()
    score = round(span_fit.metrics["val/jaccard"], 6)
    info = manifest["member_info"]
    assert [m["source_checkpoint"] for m in info] == [str(p) for p in members]
    assert info[0]["metrics"] == {"val/jaccard": score} and info[1]["metrics"] == {}
    assert [m["span_scoring"] for m in info] == ["independent", "joint"] and manifest["metrics"] == {}
    for i, ckpt in enumerate(members):  # each member is a complete single-model export of its checkpoint
        member = folder / "members" / str(i)
        assert {"sentex.json", "README.md", "config.json", "model.safetensors", "head.safetensors"} <= {
            p.name for p in member.iterdir()
        }
        assert "ensemble" not in json.loads((member / "sentex.json").read_text())
        assert load(member).extract(TEXTS, SENTIMENTS) == load(ckpt).extract(TEXTS, SENTIMENTS)
    card = (folder / "README.md").read_text()
    for needle in ("ensemble of 2 members (fp32)", f"{score:.4f}", str(members[1]), "`members/1`", "joint scoring"):
        assert needle in card, needle


def test_fp32_ensemble_export_answers_like_the_in_memory_ensemble(
    ensembles: dict[str, Path], members: list[Path]
) -> None:
    ex = load(ensembles["fp32"])
    assert isinstance(ex.pipeline.net, SpanEnsemble) and len(ex.pipeline.net) == 2 and ex.family == "span"
    (m1, _), (m2, _) = module_from_checkpoint(members[0]), module_from_checkpoint(members[1])
    in_memory = InferencePipeline(SpanEnsemble([m1.net, m2.net]), m1.codec)
    assert ex.extract(TEXTS, SENTIMENTS) == answers(in_memory)
    # the members disagree somewhere, so the average decides something
    assert answers(InferencePipeline(m1.net, m1.codec)) != answers(InferencePipeline(m2.net, m2.codec))
    # the ensemble's distribution is the mean of the members' distributions, computed independently
    batch = ex.pipeline.collate(ROWS)
    rows = batch["in_tweet"].any(1)
    got = ex.pipeline.codec.span_scores(ex.pipeline.net, batch).exp()[rows]
    want = (span_distribution(m1.net, batch, 64) + span_distribution(m2.net, batch, 64))[rows] / 2
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(got.sum((1, 2)), torch.ones(int(rows.sum())))
    exported = [span_distribution(m, batch, 64)[rows] for m in ex.pipeline.net.members]
    torch.testing.assert_close(got, (exported[0] + exported[1]) / 2, atol=1e-6, rtol=1e-4)
    n = got.shape[-1]
    best = got.flatten(1).argmax(1)
    for (i, j), offsets, text, sentiment, pred in zip(
        torch.stack([best // n, best % n], 1).tolist(),
        [o for o, r in zip(batch["offsets"], rows) if r],
        [t for t, r in zip(TEXTS, rows) if r],
        [s for s, r in zip(SENTIMENTS, rows) if r],
        [p for p, r in zip(ex.extract(TEXTS, SENTIMENTS), rows) if r],
    ):
        assert pred == (text.strip() if sentiment == "neutral" else text[offsets[i][0] : offsets[j][1]])


def test_int8_ensemble_loads_and_answers_substrings(ensembles: dict[str, Path]) -> None:
    ex = load(ensembles["int8"])
    assert ex.info["dtype"] == "int8" and len(ex.pipeline.net) == 2
    for member in ex.pipeline.net.members:
        query = member.encoder.encoder.layer[0].attention.self.query  # int8 kernels only where the CPU has VNNI/AMX
        assert type(query) is (RowScaledDynamicLinear if int8_compute() == "int8" else nn.Linear)
    for i in range(2):
        files = {p.name for p in (ensembles["int8"] / "members" / str(i)).iterdir()}
        assert "model.int8.safetensors" in files and "model.safetensors" not in files
    preds = ex.extract(TEXTS, SENTIMENTS, batch_size=4)
    assert all(p in t for p, t in zip(preds, TEXTS)) and preds[2] == TEXTS[2].strip()
    size = lambda f: sum(p.stat().st_size for p in f.rglob("*") if p.is_file())  # noqa: E731
    assert size(ensembles["int8"]) <= 0.35 * size(ensembles["fp32"])


def test_a_broken_member_is_a_one_line_error(ensembles: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ensembles["int8"], broken)
    head = broken / "members" / "0" / "head.safetensors"
    head.rename(tmp_path / "head")
    with pytest.raises(CheckpointError, match=r"members/0: incomplete or corrupt export: .*head\.safetensors"):
        load(broken)
    (tmp_path / "head").rename(head)
    assert len(load(broken).pipeline.net) == 2  # whole again
    shutil.rmtree(broken / "members" / "1")
    with pytest.raises(CheckpointError, match=r"members/1: not a sentex export \(no sentex\.json\)"):
        load(broken)
    manifest = json.loads((broken / "sentex.json").read_text())
    manifest["ensemble"]["members"] = ["members/0", "../elsewhere"]
    (broken / "sentex.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="'../elsewhere' is not a folder inside the ensemble"):
        load(broken)


# --- (c) predict ------------------------------------------------------------------------------------
def test_predict_takes_an_ensemble_folder(ensembles: dict[str, Path], tmp_path: Path) -> None:
    data = write_rows(tmp_path / "tweets.csv", TWEETS)
    folder = str(ensembles["fp32"])
    cli_main(["predict", "--ckpt_path", folder, "--data.predict_path", str(data), "--trainer.default_root_dir",
              str(tmp_path), "--submission.output_path", str(tmp_path / "sub.csv"), "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false"])  # fmt: skip
    with open(tmp_path / "sub.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["textID"] for r in rows] == [t[0] for t in TWEETS]
    assert [r["selected_text"] for r in rows] == load(folder).extract([t[1] for t in TWEETS], [t[3] for t in TWEETS])


# --- (d) members that cannot answer as one ------------------------------------------------------------
def tiny_bert(path: Path) -> Path:
    """A 1-layer BERT with its own 36-token vocabulary (another tokenizer than MiniLM's)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "positive", "negative"]
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(path).save_pretrained(path)  # from vocab.txt, in transformers 4 and 5
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    BertModel(config).save_pretrained(path)
    return path


def test_mismatched_members_are_refused_before_anything_is_written(
    members: list[Path], tiny_t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other_tokenizer = untrained_span(tmp_path / "bert.ckpt", 0, model_name_or_path=str(tiny_bert(tmp_path / "bert")))
    other_settings = untrained_span(tmp_path / "long.ckpt", 0, max_length=48)
    seq2seq = t5_checkpoint(tiny_t5, tmp_path / "t5.ckpt")
    before = set(tmp_path.iterdir())
    for bad, message in [
        (other_tokenizer, f"{other_tokenizer}: its tokenizer differs from {members[0]}'s (vocabulary of 33 tokens, "
                          "not 30522); members must share one"),
        (other_settings, f"{other_settings}: decoding setting max_length=48 differs from {members[0]}'s "
                         "max_length=32; members must decode alike"),
        (seq2seq, f"{seq2seq}: a seq2seq checkpoint; only span checkpoints form an ensemble"),
    ]:  # fmt: skip
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["export", "--ckpt_path", str(members[0]), "--ckpt_path", str(bad), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err  # transformers' loading progress bars may come first
        assert exit_info.value.code == 1 and err.splitlines()[-1] == f"sentex: error: {message}"
        assert "Traceback" not in err
        assert set(tmp_path.iterdir()) == before  # no output folder, no temporary one


def test_an_interrupted_ensemble_export_leaves_nothing_then_the_cli_writes_it(
    members: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def crash(manifest: dict) -> str:
        raise RuntimeError("killed after the members were written")

    monkeypatch.setattr(export_module, "render_ensemble_card", crash)
    with pytest.raises(RuntimeError, match="killed"):
        export(members, tmp_path / "ens", "int8")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    cli_main(["export", "--ckpt_path", str(members[0]), "--ckpt_path", str(members[1]), "--out",
              str(tmp_path / "ens"), "--dtype", "int8"])  # fmt: skip
    assert "exported span ensemble of 2 members (int8, " in capsys.readouterr().out
    assert load(tmp_path / "ens").info["ensemble"]["members"] == ["members/0", "members/1"]


def test_one_ckpt_path_is_a_single_model_export(members: list[Path], tmp_path: Path, capsys) -> None:
    cli_main(["export", "--ckpt_path", str(members[1]), "--out", str(tmp_path / "one"), "--dtype", "int8"])
    assert "exported span model (int8" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "one" / "sentex.json").read_text())
    assert "ensemble" not in manifest and (tmp_path / "one" / "model.int8.safetensors").is_file()
    assert not (tmp_path / "one" / "members").exists()


# --- (e) bench ----------------------------------------------------------------------------------------
def test_bench_measures_an_ensemble_next_to_a_member(
    ensembles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = ensembles["fp32"]
    val, out = write_rows(tmp_path / "val.csv", TWEETS), tmp_path / "results"
    cli_main(["bench", str(folder / "members" / "0"), str(folder), "--data.val_path", str(val), "--out", str(out),
              "--batch_sizes", "1", "4", "--latency_rows", "8", "--repeats", "1", "--threads", "1",
              "--timeout", "300"])  # fmt: skip
    printed = capsys.readouterr().out
    assert f"| {folder.name} (2 members) | span | fp32 |" in printed
    with open(out / "bench.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["0", f"{folder.name} (2 members)"]
    files = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(folder) for f in names)
    assert float(rows[1]["size_mb"]) == round(files / 2**20, 2)
    assert float(rows[1]["size_vs_first"]) > 1.9  # two members' weights: the cost shows
    preds = sentex.load(folder).extract([t[1] for t in TWEETS], [t[3] for t in TWEETS], batch_size=4)
    expected = sum(jaccard(p, t[2]) for p, t in zip(preds, TWEETS)) / len(TWEETS)
    assert float(rows[1]["jaccard"]) == round(expected, 4)
    assert float(rows[1]["ms_per_sample_b1"]) > 0 and float(rows[1]["throughput_b4"]) > 0
