"""The sentiment classifier family: metrics, truncation, the data module's checks, learning, decoders, the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sentex.cli import main
from sentex.data import ClassificationDataModule, TweetDataModule
from sentex.errors import DataError
from sentex.models import SentimentClassifier
from sentex.models.classifier_metrics import classification_metrics, confusion_counts, scores_from_rows
from sentex.models.components.classifier_codec import ClassifierCodec
from sentex.models.components.classifier_network import load_tokenizer
from sentex.models.components.pretrained import resolve_model_path
from sentex.training.error_cues import cue_table, text_cues
from tests.conftest import CONFIG_DIR, write_rows

# Hand-written reviews (not from any data set): clear sentiment, different wording in the held-out rows.
TRAIN = [
    ("I love this film, it was wonderful", "positive"),
    ("I hate this film, it was awful", "negative"),
    ("what a great day with my friends", "positive"),
    ("what a terrible day, everything went wrong", "negative"),
    ("this is the best pizza in town", "positive"),
    ("this is the worst pizza in town", "negative"),
    ("absolutely fantastic service, thank you", "positive"),
    ("horrible service, never again", "negative"),
    ("so happy with my new phone", "positive"),
    ("so angry at my broken phone", "negative"),
    ("the concert was amazing", "positive"),
    ("the concert was a huge disappointment", "negative"),
    ("a beautiful and moving story", "positive"),
    ("a boring and pointless story", "negative"),
    ("my team won, brilliant match", "positive"),
    ("my team lost, dreadful match", "negative"),
    ("delicious food and lovely staff", "positive"),
    ("disgusting food and rude staff", "negative"),
    ("I really enjoyed the book", "positive"),
    ("I really disliked the book", "negative"),
    ("excellent quality, highly recommend", "positive"),
    ("poor quality, do not buy", "negative"),
    ("such a fun and relaxing weekend", "positive"),
    ("such a stressful and miserable weekend", "negative"),
]
HELD_OUT = [
    ("the hotel was lovely and the people were kind", "positive"),
    ("the hotel was dirty and the people were rude", "negative"),
    ("great movie, I smiled the whole time", "positive"),
    ("awful movie, I walked out early", "negative"),
    ("wonderful news, congratulations!", "positive"),
    ("terrible news, I am so sad", "negative"),
    ("this coffee is delicious", "positive"),
    ("this coffee tastes horrible", "negative"),
    ("best holiday ever", "positive"),
    ("worst holiday ever", "negative"),
    ("I am thrilled with the results", "positive"),
    ("I am furious about the results", "negative"),
]


def labelled_csv(path: Path, rows, header=("id", "text", "label")) -> Path:
    return write_rows(path, [(f"r{i}", text, label) for i, (text, label) in enumerate(rows)], header=header)


def accuracy(model: SentimentClassifier, rows) -> float:
    probs = model.predict_proba([t for t, _ in rows])
    return sum(p == gold for p, (_, gold) in zip(model.codec.decode(probs), rows)) / len(rows)


# --- metrics ---------------------------------------------------------------------------------------------
# Gold and predicted classes of 8 rows, 3 classes; the matrix [gold][pred] is
#   [[2, 1, 0],     class 0: tp 2, predicted 3, gold 3 -> P 2/3, R 2/3, F1 2/3
#    [1, 2, 0],     class 1: tp 2, predicted 4, gold 3 -> P 1/2, R 2/3, F1 4/7
#    [0, 1, 1]]     class 2: tp 1, predicted 1, gold 2 -> P 1,   R 1/2, F1 2/3
GOLD = [0, 0, 0, 1, 1, 1, 2, 2]
PRED = [0, 0, 1, 0, 1, 1, 1, 2]
HAND = {
    "accuracy": 5 / 8,
    "precision_macro": (2 / 3 + 1 / 2 + 1) / 3,
    "recall_macro": (2 / 3 + 2 / 3 + 1 / 2) / 3,
    "f1_macro": (2 / 3 + 4 / 7 + 2 / 3) / 3,
    "precision_weighted": (3 * 2 / 3 + 3 * 1 / 2 + 2 * 1) / 8,
    "recall_weighted": (3 * 2 / 3 + 3 * 2 / 3 + 2 * 1 / 2) / 8,
    "f1_weighted": (3 * 2 / 3 + 3 * 4 / 7 + 2 * 2 / 3) / 8,
}


def one_hot_probs(pred: list[int], classes: int) -> torch.Tensor:
    probs = torch.full((len(pred), classes), 0.1)
    probs[torch.arange(len(pred)), torch.tensor(pred)] = 0.8
    return probs


def test_metrics_match_hand_computed_values() -> None:
    metrics = classification_metrics("val/", 3)
    probs = one_hot_probs(PRED, 3)
    metrics.update(probs[:5], torch.tensor(GOLD[:5]))  # two batches: the states accumulate
    metrics.update(probs[5:], torch.tensor(GOLD[5:]))
    logged = {k: float(v) for k, v in metrics.compute().items()}
    from_rows = scores_from_rows(GOLD, probs.tolist(), 3)
    for name, value in HAND.items():
        assert logged[f"val/{name}"] == pytest.approx(value, abs=1e-6), name
        assert from_rows[name] == pytest.approx(value, abs=1e-9), name
    assert confusion_counts(GOLD, PRED, 3) == [[2, 1, 0], [1, 2, 0], [0, 1, 1]]


def test_auroc_matches_hand_computed_value() -> None:
    # Class 1's one-vs-rest scores: positives 0.9, 0.4; negatives 0.6, 0.1. Of the 4 (pos, neg) pairs
    # 3 are ordered right -> AUC 0.75; class 0 (complementary probabilities) also 0.75; macro 0.75.
    probs = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.4, 0.6], [0.9, 0.1]])
    gold = [1, 1, 0, 0]
    metrics = classification_metrics("", 2)
    metrics.update(probs, torch.tensor(gold))
    assert float(metrics.compute()["auroc"]) == pytest.approx(0.75)
    assert scores_from_rows(gold, probs.tolist(), 2)["auroc"] == pytest.approx(0.75)


def test_cues_and_error_rate_per_cue() -> None:
    assert text_cues("not what I hoped, but fine") == ["negation", "contrast"]
    assert text_cues("Yeah right, 'best' day ever ;)") == ["emoji", "sarcasm"]
    assert text_cues('what a "great" idea?') == ["question", "sarcasm"]
    assert text_cues("I cant believe it, sooo good") == ["negation", "intensifier"]
    assert text_cues("it's a normal day") == []
    rows = [
        {"cues": "negation", "correct": "False"},
        {"cues": "negation;contrast", "correct": "True"},
        {"cues": "", "correct": "False"},
        {"cues": "", "correct": "True"},
    ]
    table = cue_table(rows)
    assert "| negation | 2 | 1 | 0.500 | x1.00 |" in table and "| contrast | 1 | 0 | 0.000 | x0.00 |" in table
    assert "| all rows | 4 | 2 | 0.500 | x1.00 |" in table


# --- codec -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_tokenizer(resolve_model_path("packaged:all-MiniLM-L6-v2"))


def test_head_tail_truncation_keeps_both_ends(minilm_tokenizer) -> None:
    text = "opening words " + " ".join(f"filler{i}" for i in range(200)) + " closing verdict terrible"
    head_tail = ClassifierCodec(minilm_tokenizer, ["negative", "positive"], 32, "head_tail", 0.25)
    head = ClassifierCodec(minilm_tokenizer, ["negative", "positive"], 32, "head")
    cut = head_tail.shorten(text)
    assert cut.startswith("opening words") and cut.endswith("closing verdict terrible")
    ids = head_tail.encode([text])["input_ids"][0]
    assert len(ids) <= 32 and minilm_tokenizer.decode(ids, skip_special_tokens=True).endswith("verdict terrible")
    assert "terrible" not in minilm_tokenizer.decode(head.encode([text])["input_ids"][0])
    assert head_tail.shorten("short text") == "short text"


# --- data module -----------------------------------------------------------------------------------------
def test_bad_labels_and_missing_columns_are_one_line_errors(tmp_path: Path) -> None:
    rows = [("r1", "fine", "positive"), ("r2", "bad", "happy"), ("r3", "ok", ""), ("r4", "meh", "sad")]
    path = write_rows(tmp_path / "bad.csv", rows, header=("id", "text", "label"))
    dm = ClassificationDataModule(train_path=str(path), class_names=["negative", "positive"])
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "\n" not in message
    assert f"{path}: line 3: field 'label': unknown value 'happy' (expected one of negative, positive)" in message
    assert f"{path}: line 4: field 'label': empty label" in message and "line 5: field 'label'" in message
    no_label = write_rows(tmp_path / "nolabel.csv", [("r1", "fine")], header=("id", "text"))
    with pytest.raises(DataError, match=r"nolabel.csv: missing column\(s\) label \(found: id, text\)"):
        ClassificationDataModule(train_path=str(no_label)).setup("fit")
    single = labelled_csv(tmp_path / "one.csv", [("fine", "positive"), ("good", "positive")])
    with pytest.raises(DataError, match=r"one.csv: found only the label\(s\) \['positive'\]; a classifier needs"):
        ClassificationDataModule(train_path=str(single)).setup("fit")
    tweets = write_rows(tmp_path / "tw.csv", [("t1", "meh", "meh", "neutral"), ("t2", "yay", "yay", "positive")])
    polar = ClassificationDataModule(train_path=str(tweets), file_format="tweets", class_names=["negative", "positive"])
    with pytest.raises(DataError, match=r"field 'sentiment': value\(s\) 'neutral' are not among the labels"):
        polar.setup("fit")


def test_empty_texts_are_skipped_or_fatal_under_strict(tmp_path: Path) -> None:
    rows = [(f"text {i}", "positive" if i % 2 else "negative") for i in range(10)] + [("  ", "positive")]
    path = labelled_csv(tmp_path / "t.csv", rows)
    dm = ClassificationDataModule(train_path=str(path), val_path=str(path))
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 10 and dm.label_names == ["negative", "positive"]
    with pytest.raises(DataError, match=r"line 12: field 'text': empty text"):
        ClassificationDataModule(train_path=str(path), val_path=str(path), strict=True).setup("fit")
    predict = ClassificationDataModule(predict_path=str(path), class_names=["negative", "positive"], strict=True)
    predict.setup("predict")  # a predict file keeps every row, labels or not
    assert len(predict.datasets["predict"]) == 11


def test_tweets_format_validates_on_the_extraction_split(tmp_path: Path) -> None:
    sentiments = ["negative", "neutral", "positive"]
    rows = [(f"t{i}", f"tweet number {i} here", "number", sentiments[i % 3]) for i in range(60)]
    rows.insert(7, ("gone", "", "x", "neutral"))  # skipped by both readers: must not shift the split
    path = write_rows(tmp_path / "tweets.csv", rows)
    classify = ClassificationDataModule(train_path=str(path), file_format="tweets", split_seed=3)
    extract = TweetDataModule(train_path=str(path), split_seed=3)
    classify.setup("fit")
    extract.setup("fit")
    assert classify.datasets["val"]["id"] == extract.datasets["val"]["textID"]
    assert classify.label_names == sentiments


# --- the model -------------------------------------------------------------------------------------------
def fit_classifier(model: SentimentClassifier, train: Path, epochs: int) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, ClassificationDataModule(train_path=str(train), val_path=str(train), batch_size=8))
    return trainer


def test_classifier_learns_held_out_rows_and_keeps_its_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train = labelled_csv(tmp_path / "train.csv", TRAIN)
    model = SentimentClassifier(max_length=32, learning_rate=2e-4, head_learning_rate=3e-3, warmup_steps=0)
    trainer = fit_classifier(model, train, epochs=4)  # labels come from the data, in sorted order
    assert model.label_names == ["negative", "positive"] and model.hparams.labels == ["negative", "positive"]
    assert accuracy(model, HELD_OUT) >= 11 / 12  # chance is 1/2: 11 of 12 happens by luck 0.3% of the time
    ckpt = tmp_path / "c.ckpt"
    trainer.save_checkpoint(ckpt)
    again = SentimentClassifier.load_from_checkpoint(ckpt)  # rebuilt from the labels in the hyper-parameters
    assert torch.allclose(again.predict_proba(["lovely"]), model.predict_proba(["lovely"]), atol=1e-6)


def test_lora_trains_only_adapters_and_the_new_head() -> None:
    model = SentimentClassifier(labels=["negative", "neutral", "positive"], lora_r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".classifier." in n for n in trainable)
    assert any(".classifier." in n for n in trainable)
    assert all(".lora_" in k or ".classifier." in k for k in model.trainable_state_keys())


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 with a word-level tokenizer that has an end-of-text but no padding token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted({w for text, _ in TRAIN + HELD_OUT for w in text.lower().replace(",", " ").split()})
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<|endoftext|>")
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2, eos_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_decoder_pools_the_last_real_token_whatever_the_padding(tiny_gpt2: Path) -> None:
    model = SentimentClassifier(str(tiny_gpt2), labels=["negative", "positive"], lora_r=4).eval()
    assert model.tokenizer.pad_token == "<|endoftext|>" and model.net.config.pad_token_id == 1
    assert {n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad} >= {"score"}
    texts = ["best holiday ever", "the hotel was lovely and the people were kind"]
    batched = model.predict_proba(texts, batch_size=2)  # the short text is padded
    alone = torch.cat([model.predict_proba([t]) for t in texts])
    assert torch.allclose(batched, alone, atol=1e-5)


# --- the command -----------------------------------------------------------------------------------------
def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code or 0, capsys.readouterr().err


def test_cli_fit_then_test_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train = labelled_csv(tmp_path / "train.csv", TRAIN)
    held = labelled_csv(tmp_path / "held.csv", HELD_OUT)
    common = [
        "--config", str(CONFIG_DIR / "classify_tweets.yaml"), "--data.file_format", "csv", "--data.id_column", "id",
        "--data.train_path", str(train), "--data.val_path", str(held), "--data.batch_size", "8",
        "--model.labels", "[negative, positive]", "--model.max_length", "32",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"])
    run = tmp_path / "lightning_logs" / "version_0"
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    main(["test", *common, "--ckpt_path", str(best)])
    out = tmp_path / "lightning_logs" / "version_1"
    with open(out / "test_predictions.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(HELD_OUT))]
    assert {"prediction", "correct", "confidence", "prob_negative", "prob_positive", "cues"} <= set(rows[0])
    assert all(abs(float(r["prob_negative"]) + float(r["prob_positive"]) - 1) < 1e-4 for r in rows)
    assert (out / "test_confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "test_report.md").read_text(encoding="utf-8")
    assert "| accuracy |" in report and "## Errors by cue" in report and "| all rows | 12 |" in report
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert events.Images("val/confusion_matrix")  # the confusion matrix as a TensorBoard image


def test_cli_bad_label_value_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = labelled_csv(tmp_path / "bad.csv", [*TRAIN[:4], ("so so", "meh")])
    code, err = run_main(
        ["fit", "--config", str(CONFIG_DIR / "classify_tweets.yaml"), "--data.file_format", "csv",
         "--data.train_path", str(bad), "--model.labels", "[negative, positive]",
         "--data.class_names", "[negative, positive]", "--trainer.default_root_dir", str(tmp_path)],
        capsys,
    )  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("sentex: error:")]
    assert code == 1 and len(lines) == 1, err[-2000:]
    assert f"{bad}: line 6: field 'label': unknown value 'meh' (expected one of negative, positive)" in lines[0]
    assert "Traceback" not in err
    # A data-module setting refused by its constructor: jsonargparse wraps it, sentex unwraps it.
    code, err = run_main(
        ["fit", "--config", str(CONFIG_DIR / "classify_tweets.yaml"), "--data.file_format", "xml"], capsys
    )
    assert (
        code == 1
        and err.strip().splitlines()[-1] == "sentex: error: data.file_format must be one of csv, tweets, got 'xml'"
    )
    assert "Traceback" not in err
