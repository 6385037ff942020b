"""Every bad input of issue 7, tried through ``sentex`` itself: the exact line a user sees.

Fatal inputs: exit 1 (exit 2 for a bad config, from jsonargparse), one ``sentex: error:`` line
naming the file (and line and field where there is one), and no output file left behind.
Forgivable inputs: the run goes on and the rows are counted. docs/bad-inputs.md is the table.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from sentex.cli import main
from sentex.data.tweets import read_tweets
from tests.conftest import TWEETS, write_rows

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HEADER = ("textID", "text", "selected_text", "sentiment")


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code or 0, capsys.readouterr().err


def tiny_args(tiny_t5: Path, tmp_path: Path) -> list[str]:
    return [
        "--config", str(CONFIGS / "lora_cpu.yaml"),
        "--model.init_args.model_name_or_path", str(tiny_t5),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip


def the_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sentex: error:")]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    return lines[0]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# name -> (writes the labelled file, the message after "sentex: error: <path>: ")
FATAL_LABELLED = {
    "missing_file": (lambda p: p, "file not found"),
    "empty_file": (lambda p: _write_bytes(p, b""), "file is empty"),
    "header_only": (lambda p: write_rows(p, []), "no usable rows (0 data row(s))"),
    "missing_column": (
        lambda p: write_rows(p, [("1", "hi", "positive")], header=("textID", "text", "sentiment")),
        "missing column(s) selected_text (found: textID, text, sentiment)",
    ),
    "wrong_sentiment": (
        lambda p: write_rows(p, [TWEETS[0], ("x", "so fun", "fun", "happy")]),
        "line 3: field 'sentiment': unknown value 'happy' (expected one of negative, neutral, positive)",
    ),
    "non_utf8": (
        lambda p: _write_bytes(p, b"textID,text,selected_text,sentiment\n1,ok,ok,neutral\n2,caf\xe9,caf\xe9,neutral\n"),
        "line 3: not valid UTF-8 (byte 0xe9); re-save the file as UTF-8",
    ),
    "ragged_row": (
        lambda p: _write_bytes(p, b"textID,text,selected_text,sentiment\n1,ok,ok,neutral\n2,oops,positive\n"),
        "line 3: expected 4 fields, found 3",
    ),
    "only_unusable_rows": (
        lambda p: write_rows(p, [("1", "   ", "", "neutral"), ("2", "nice day", "lovely", "positive")]),
        "no usable rows (2 data row(s), 1 empty text, 1 selected_text not found in text)",
    ),
}


@pytest.mark.parametrize("case", sorted(FATAL_LABELLED))
def test_fatal_labelled_file(case: str, tiny_t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write, message = FATAL_LABELLED[case]
    path = write(tmp_path / "val.csv")
    code, err = run_main(["validate", *tiny_args(tiny_t5, tmp_path), "--data.val_path", str(path)], capsys)
    assert code == 1
    assert the_error_line(err) == f"sentex: error: {path}: {message}"


def test_bad_predict_file_leaves_no_submission(tiny_t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = _write_bytes(tmp_path / "test.csv", b"textID,text,sentiment\n1,hello,neutral\n2,bye,sad\n")
    out = tmp_path / "out" / "submission.csv"
    args = [
        "predict",
        *tiny_args(tiny_t5, tmp_path),
        "--data.predict_path",
        str(bad),
        "--submission.output_path",
        str(out),
    ]
    code, err = run_main(args, capsys)
    assert code == 1
    assert the_error_line(err) == (
        f"sentex: error: {bad}: line 3: field 'sentiment': unknown value 'sad'"
        " (expected one of negative, neutral, positive)"
    )
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("model:\n  init_args:\n    learning_rat: 0.1\n", "learning_rat"),
        ("data:\n  batch_size: lots\n", "batch_size"),
        ("trainer:\n  max_epochs: [1, 2]\n", "max_epochs"),
    ],
    ids=["unknown_key", "wrong_type_int", "wrong_type_list"],
)
def test_bad_yaml_is_a_parser_error(
    yaml_text: str, expected: str, tiny_t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    code, err = run_main(["fit", *tiny_args(tiny_t5, tmp_path), "--config", str(bad)], capsys)
    assert code == 2
    assert "error:" in err and expected in err and "Traceback" not in err


def _seq2seq_checkpoint(tiny_t5: Path, tmp_path: Path) -> Path:
    from lightning.pytorch import Trainer

    from sentex.models import Seq2SeqExtractor

    model = Seq2SeqExtractor(model_name_or_path=str(tiny_t5), lora_r=4)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(model)
    path = tmp_path / "seq2seq.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_of_another_family(tiny_t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _seq2seq_checkpoint(tiny_t5, tmp_path)
    val = write_rows(tmp_path / "val.csv", TWEETS)
    args = [
        "validate", "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--data.val_path", str(val), "--ckpt_path", str(ckpt),
    ]  # fmt: skip
    code, err = run_main(args, capsys)
    assert code == 1
    assert the_error_line(err) == (
        f"sentex: error: {ckpt}: checkpoint is a 'seq2seq' model but the config builds a 'span' model;"
        " use the config the checkpoint was trained with"
    )


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_checkpoint(damage: str, tiny_t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = _seq2seq_checkpoint(tiny_t5, tmp_path)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2] if damage == "truncated" else b"garbage")
    val = write_rows(tmp_path / "val.csv", TWEETS)
    args = ["validate", *tiny_args(tiny_t5, tmp_path), "--data.val_path", str(val), "--ckpt_path", str(bad)]
    code, err = run_main(args, capsys)
    assert code == 1
    line = the_error_line(err)
    assert line.startswith(f"sentex: error: {bad}: not a readable checkpoint (truncated or corrupt?): ")
    assert "weights_only" not in line  # torch's hint to load unsafely would be wrong advice here


def test_resume_without_any_last_checkpoint(tiny_t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = write_rows(tmp_path / "train.csv", TWEETS)
    code, err = run_main(
        ["fit", *tiny_args(tiny_t5, tmp_path), "--data.train_path", str(train), "--ckpt_path", "last"], capsys
    )
    assert code == 1
    assert the_error_line(err) == (
        f"sentex: error: --ckpt_path last: no last.ckpt under {tmp_path / 'lightning_logs'}; pass a checkpoint path"
    )


# --- forgivable inputs: read, counted, and usable ------------------------------------------------
LONG_TWEET = "so " * 34_000 + "happy"  # ~100 KB


def _forgivable_bytes() -> bytes:
    """One file with every input that must *not* stop a run, in the forms real files have them."""
    rows = [
        ("e1", "I love it 😍🔥", "love it 😍🔥", "positive"),
        ("e2", "אני אוהב את זה", "אוהב", "positive"),  # right-to-left
        ("e3", "مرحبا بالعالم", "مرحبا بالعالم", "neutral"),
        ("e4", "line one\nline two", "line two", "negative"),  # quoted newline
        ("e5", LONG_TWEET, "happy", "positive"),
        ("e1", "same id again, fine", "fine", "positive"),  # duplicate textID
        ("s1", "", "", "neutral"),  # empty / NaN text (pandas writes NaN as an empty field)
        ("s2", " \t ", " ", "neutral"),  # whitespace-only text
        ("s3", "nice day", "lovely", "positive"),  # selected_text not in text
    ]
    lines = [",".join([*HEADER, "extra_column"])]
    for row in rows:
        fields = ['"' + f.replace('"', '""') + '"' for f in row]
        lines.append(",".join([*fields, "ignored"]))
    return "\ufeff".encode() + "\r\n".join(lines).encode("utf-8") + b"\r\n"  # BOM + Windows line endings


def test_forgivable_inputs_are_read_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_bytes(tmp_path / "odd.csv", _forgivable_bytes())
    with caplog.at_level(logging.WARNING):
        table = read_tweets(path, require_labels=True)
    assert table.columns["textID"] == ["e1", "e2", "e3", "e4", "e5", "e1"]  # BOM gone from the first header
    assert table.columns["text"][3] == "line one\nline two" and table.columns["text"][4] == LONG_TWEET
    assert table.skipped == {"empty text": 2, "selected_text not found in text": 1}
    assert table.duplicate_ids == 1
    messages = [r.getMessage() for r in caplog.records]
    assert (
        f"{path}: skipped 3 row(s): 2 empty text, 1 selected_text not found in text (pass strict=True to fail instead)"
        in messages
    )
    assert f"{path}: 1 duplicate textID(s); rows are kept" in messages


def test_error_line_is_where_the_record_starts(tmp_path: Path) -> None:
    data = b'textID,text,selected_text,sentiment\n1,"two\nlines",two,neutral\n2,x,x,bad\n'
    with pytest.raises(Exception, match=r"line 4: field 'sentiment'"):
        read_tweets(_write_bytes(tmp_path / "m.csv", data), require_labels=True)


def test_100kb_tweet_is_truncated_by_the_tokenizer(tiny_t5: Path) -> None:
    from sentex.models import Seq2SeqExtractor

    model = Seq2SeqExtractor(model_name_or_path=str(tiny_t5), lora_r=4, max_length=64)
    batch = model.collate([{"textID": "x", "text": LONG_TWEET, "selected_text": "happy", "sentiment": "positive"}])
    assert batch["input_ids"].shape == (1, 64)
    with torch.no_grad():
        assert torch.isfinite(model.compute_loss(batch))


@pytest.mark.slow
def test_forgivable_inputs_through_predict(tiny_t5: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write_bytes(tmp_path / "odd.csv", _forgivable_bytes())
    out = tmp_path / "submission.csv"
    args = [
        "predict",
        *tiny_args(tiny_t5, tmp_path),
        "--data.predict_path",
        str(path),
        "--submission.output_path",
        str(out),
    ]
    main(args)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # predict drops no row: a submission needs every textID, even with empty text or a stray label.
    assert [r["textID"] for r in rows] == ["e1", "e2", "e3", "e4", "e5", "e1", "s1", "s2", "s3"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_unlabelled_file_keeps_empty_texts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [("1", "hello", "neutral"), ("2", "", "positive"), ("3", "  ", "negative")]
    path = write_rows(tmp_path / "test.csv", rows, header=("textID", "text", "sentiment"))
    with caplog.at_level(logging.WARNING):
        table = read_tweets(path, require_labels=False)
    assert table.columns["textID"] == ["1", "2", "3"] and table.skipped == {}
    assert f"{path}: 2 row(s) with empty text are kept so every textID gets a prediction" in caplog.messages


def test_span_batch_whose_phrases_were_all_truncated_away_has_a_finite_loss() -> None:
    from sentex.models import SpanExtractor

    model = SpanExtractor(max_length=32)
    batch = model.collate([{"textID": "x", "text": LONG_TWEET, "selected_text": "happy", "sentiment": "positive"}])
    assert batch["input_ids"].shape == (1, 32)  # the 100 KB tweet is cut by the tokenizer
    assert torch.isfinite(model.compute_loss(batch))
