"""Kaggle-grade span options: the label-shift rule, Jaccard-shaped targets, folds, out-of-fold scores, taxonomy."""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sentex.data import TweetDataModule
from sentex.data.folds import stratified_folds
from sentex.data.label_noise import MIN_EXTRA, extra_spaces_before, recover_phrase, shift_like_labels
from sentex.metrics import jaccard
from sentex.models import SpanExtractor
from sentex.models.components.span_math import jaccard_boundary_targets, smoothed_span_nll
from sentex.models.span import soft_boundary_targets
from sentex.training.error_taxonomy import error_class
from tests.conftest import CONFIG_DIR, sentex, write_rows

# Hand-written tweets in the Kaggle data's shape: (tweet, meant phrase, label as the data set would give it).
# Each label is derived by hand from the rule: n = leading spaces + spaces after a space before the phrase;
# the start moves n left, the end n - 1 (after punctuation) or n - 2, then whitespace is stripped.
SHIFTED = [
    ("  Yes you should go see it!  It`s sooooo much fun!", "fun!", "ch fu"),  # n = 2 + 1: "mu[ch fu]n!"
    (" hey mia!  totally adore your new song", "adore", "y adore"),  # n = 1 + 1: start -2, end +0
    ("   Sorry all, we will keep it quiet now", "quiet", "it quie"),  # n = 3: start -3, end -1
]
UNSHIFTED = [
    ("so happy with my new phone", "so happy"),
    ("cannot believe it rained  again", "rained"),  # the extra space comes after the phrase
    (" single leading space is fine", "fine"),
]


def span_of(text: str, phrase: str) -> tuple[int, int]:
    start = text.index(phrase)
    return start, start + len(phrase)


@pytest.mark.parametrize(("text", "meant", "label"), SHIFTED)
def test_shift_gives_the_hand_derived_label(text: str, meant: str, label: str) -> None:
    s, e = shift_like_labels(text, *span_of(text, meant))
    assert text[s:e] == label


@pytest.mark.parametrize(("text", "phrase"), UNSHIFTED)
def test_no_change_without_extra_spaces_before_the_phrase(text: str, phrase: str) -> None:
    span = span_of(text, phrase)
    assert extra_spaces_before(text, span[0]) < 2
    assert shift_like_labels(text, *span) == span
    assert recover_phrase(text, *span) == span


def test_unexplained_partial_label_is_kept() -> None:
    text = "totally happy today"  # "ally hap" is noise no shift explains
    assert recover_phrase(text, *span_of(text, "ally hap")) == span_of(text, "ally hap")


@pytest.mark.parametrize("seed", range(3))
def test_jaccard_targets_sum_to_one_and_peak_at_the_gold(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    words = [f"word{i}" for i in range(12)]
    text = " ".join(words)
    starts = [sum(len(w) + 1 for w in words[:i]) for i in range(12)]
    offsets = [(0, 0)] + [(a, a + len(w)) for a, w in zip(starts, words)] + [(0, 0)]  # [CLS] words [SEP]
    in_tweet = [False] + [True] * 12 + [False]
    s = int(torch.randint(1, 10, (1,), generator=gen))
    e = s + int(torch.randint(0, 3, (1,), generator=gen))
    start_t, end_t = jaccard_boundary_targets(text, offsets, in_tweet, s, e)
    for target, gold in ((start_t, s), (end_t, e)):
        assert target.sum().item() == pytest.approx(1.0)
        assert int(target.argmax()) == gold
        assert (target >= 0).all() and target[0] == 0 and target[-1] == 0
    assert (start_t[e + 1 :] == 0).all() and (end_t[:s] == 0).all()  # a start never after the gold end


def test_soft_targets_change_the_loss_and_its_gradient() -> None:
    logits = torch.randn(1, 5, requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    soft = torch.tensor([[0.0, 0.6, 0.4, 0.0, 0.0]])
    allowed = torch.ones(1, 5, dtype=torch.bool)
    hard = smoothed_span_nll(logp, torch.tensor([1]), allowed, 0.0)
    mixed = smoothed_span_nll(logp, torch.tensor([1]), allowed, 0.0, soft, 0.5)
    expected = 0.5 * -logp[0, 1] + 0.5 * -(soft * logp).sum()
    assert mixed.item() == pytest.approx(expected.item()) and mixed.item() != pytest.approx(hard.item())
    (grad,) = torch.autograd.grad(mixed, logits)
    # d/dz of CE with target t is softmax(z) - t: t = 0.5·onehot + 0.5·soft
    target = 0.5 * torch.nn.functional.one_hot(torch.tensor(1), 5).float() + 0.5 * soft[0]
    torch.testing.assert_close(grad[0], logp.exp()[0].detach() - target)


@pytest.fixture(scope="module")
def span_model() -> SpanExtractor:
    torch.manual_seed(0)
    return SpanExtractor(max_length=48, recover_shifted_labels=True, reapply_label_shift=True, span_soft_targets=0.5)


def test_codec_trains_on_the_meant_phrase_and_answers_like_the_labels(span_model: SpanExtractor) -> None:
    text, meant, label = SHIFTED[1]
    batch = span_model.collate([{"textID": "a", "text": text, "selected_text": label, "sentiment": "positive"}])
    s, e = batch["span"][0].tolist()
    offsets = batch["offsets"][0]
    assert text[offsets[s][0] : offsets[e][1]] == meant  # the gold token span is the meant phrase
    # Decoding that span gives the label's convention back.
    scores = torch.full((1, len(offsets), len(offsets)), float("-inf"))
    scores[0, s, e] = 0.0
    assert span_model.codec.decode(batch, scores) == [label]
    span_model.codec.reapply_label_shift = False
    try:
        assert span_model.codec.decode(batch, scores) == [meant]
    finally:
        span_model.codec.reapply_label_shift = True


def test_offsets_point_at_the_decoded_occurrence_of_a_repeated_phrase(span_model: SpanExtractor) -> None:
    text = "so sad, so sad today"
    batch = span_model.collate([{"textID": "a", "text": text, "sentiment": "negative"}])
    offsets, in_tweet = batch["offsets"][0], batch["in_tweet"][0].tolist()
    second = [k for k, (a, _) in enumerate(offsets) if in_tweet[k] and a == text.rindex("so sad")][0]
    scores = torch.full((1, len(offsets), len(offsets)), float("-inf"))
    scores[0, second, second + 1] = 0.0  # the model picks the second "so sad"
    assert span_model.codec.decode_spans(batch, scores) == [(8, 14)]
    assert span_model.codec.decode(batch, scores) == ["so sad"]


def test_soft_target_loss_runs_on_a_batch(span_model: SpanExtractor) -> None:
    rows = [
        {"textID": str(i), "text": t, "selected_text": p, "sentiment": "negative"} for i, (t, p) in enumerate(UNSHIFTED)
    ]
    batch = span_model.collate(rows)
    start_t, end_t = soft_boundary_targets(batch, batch["input_ids"].shape[1])
    assert torch.allclose(start_t.sum(1), torch.ones(3)) and torch.allclose(end_t.sum(1), torch.ones(3))
    assert (start_t.argmax(1) == batch["span"][:, 0]).all() and (end_t.argmax(1) == batch["span"][:, 1]).all()
    loss = span_model.compute_loss(batch)
    assert torch.isfinite(loss) and loss.requires_grad


def test_bad_soft_target_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="span_soft_targets"):
        SpanExtractor(max_length=32, span_soft_targets=1.5)


def test_folds_are_disjoint_stratified_and_cover_every_row_once(tmp_path: Path) -> None:
    sentiments = ["positive"] * 13 + ["negative"] * 11 + ["neutral"] * 7
    rows = [(f"id{i}", f"tweet number {i}", "tweet", s) for i, s in enumerate(sentiments)]
    path = write_rows(tmp_path / "t.csv", rows)
    seen: list[str] = []
    for fold in range(4):
        dm = TweetDataModule(train_path=str(path), num_folds=4, fold=fold, split_seed=7)
        dm.setup("fit")
        val, train = dm.datasets["val"]["textID"], dm.datasets["train"]["textID"]
        assert not set(val) & set(train) and len(val) + len(train) == len(rows)
        counts = {s: dm.datasets["val"]["sentiment"].count(s) for s in ("positive", "negative", "neutral")}
        assert counts["positive"] in (3, 4) and counts["negative"] in (2, 3) and counts["neutral"] in (1, 2)
        seen += val
    assert sorted(seen) == sorted(r[0] for r in rows)  # every row validated exactly once
    assert stratified_folds(sentiments, 4, 7) == stratified_folds(sentiments, 4, 7)
    assert stratified_folds(sentiments, 4, 7) != stratified_folds(sentiments, 4, 8)


@pytest.mark.parametrize(("folds", "fold"), [(1, 0), (5, 5), (5, -1)])
def test_bad_fold_settings_are_one_line_errors(folds: int, fold: int) -> None:
    with pytest.raises(Exception, match="num_folds"):
        TweetDataModule(train_path="x.csv", num_folds=folds, fold=fold)


@pytest.mark.parametrize(
    ("sentiment", "pred", "gold", "expected"),
    [
        ("positive", "so happy today", "happy", "over_extraction"),
        ("positive", "happy", "so happy", "under_extraction"),
        ("negative", "sad today", "so sad", "shifted_boundary"),
        ("negative", "today", "sad", "disjoint"),
        ("neutral", "so happy today", "today", "neutral_rule"),
        ("positive", "So happy", "so happy", None),
    ],
)
def test_error_classes(sentiment: str, pred: str, gold: str, expected: str | None) -> None:
    assert error_class("so happy today", sentiment, pred, gold) == expected


@pytest.mark.slow
def test_fit_and_test_on_a_fold_write_out_of_fold_probabilities_and_taxonomy(tmp_path: Path) -> None:
    rows = [(f"id{i}", f"what a lovely day number {i} here", "lovely", "positive") for i in range(10)]
    rows += [(f"n{i}", f"a plain neutral tweet {i}", "neutral tweet", "neutral") for i in range(5)]
    path = write_rows(tmp_path / "t.csv", rows)
    fold = ("--data.train_path", str(path), "--data.num_folds", "3", "--data.fold", "1")
    fit = sentex(
        "fit", "--config", str(CONFIG_DIR / "quickstart.yaml"), *fold, "--trainer.max_steps", "2",
        "--model.init_args.max_length", "32", "--trainer.default_root_dir", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-2000:]
    (config,) = tmp_path.rglob("config.yaml")
    (best,) = tmp_path.rglob("best-*.ckpt")
    out = sentex(
        "test", "--config", str(config), "--ckpt_path", str(best), "--trainer.default_root_dir", str(tmp_path / "test"),
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (report,) = (tmp_path / "test").rglob("test_predictions.csv")
    with open(report, encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    probs = [json.loads(line) for line in (report.parent / "test_span_probs.jsonl").read_text().splitlines()]
    assert [r["textID"] for r in table] == [p["textID"] for p in probs] and len(table) == 5  # fold 1 of 3
    by_id = {r[0]: r for r in rows}
    for row, p in zip(table, probs):
        assert sum(p["start_probs"]) == pytest.approx(1.0, abs=1e-3)
        assert sum(p["end_probs"]) == pytest.approx(1.0, abs=1e-3)
        assert len(p["offsets"]) == len(p["start_probs"]) == len(p["end_probs"])
        text = by_id[row["textID"]][1]
        assert all(0 <= a < b <= len(text) for a, b in p["offsets"])
        assert row["error_class"] == (
            error_class(text, row["sentiment"], row["prediction"], row["selected_text"]) or ""
        )
        assert float(row["jaccard"]) == pytest.approx(jaccard(row["prediction"], row["selected_text"]), abs=1e-6)
    taxonomy = (report.parent / "test_error_taxonomy.md").read_text()
    assert "| class | rows |" in taxonomy


# --- the rule against the real labels -----------------------------------------------------------
# Counted on the shared train.csv (24,732 rows; 14,708 positive/negative ones, the rule's domain as
# sentex trains and decodes with it). A label is *partial* when it cuts a word (does not start and end
# on word boundaries); the rule explains a partial label when a word-aligned phrase, shifted, is it.
Labels = tuple[tuple[str, int, int], ...]


@functools.lru_cache(maxsize=1)
def positive_negative_labels(folder: Path) -> Labels:
    """``(tweet, label start, label end)`` of every positive/negative row of ``folder/train.csv``."""
    from sentex.data.tweets import read_tweets

    cols = read_tweets(folder / "train.csv", require_labels=True).columns
    rows = zip(cols["text"], cols["selected_text"], cols["sentiment"])
    return tuple((t, t.find(g), t.find(g) + len(g)) for t, g, s in rows if s != "neutral")


def word_aligned(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` starts and ends on word boundaries (whole words)."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    return start in {a for a, _ in words} and end in {b for _, b in words}


def shifted(text: str, start: int, end: int) -> bool:
    """Whether a label is partial with at least ``MIN_EXTRA`` extra spaces before it: one the rule says is shifted."""
    return extra_spaces_before(text, start) >= MIN_EXTRA and not word_aligned(text, start, end)


def partial_share(labels: Labels, extra: Callable[[int], bool]) -> float:
    """The share of partial labels among the labels whose extra spaces before them pass ``extra``."""
    chosen = [(t, s, e) for t, s, e in labels if extra(extra_spaces_before(t, s))]
    return sum(not word_aligned(*label) for label in chosen) / len(chosen)


@pytest.mark.slow
def test_labels_are_cut_where_the_rule_says_they_are_shifted(real_data: Path) -> None:
    """If the labels were cut from a whitespace-normalised copy, only extra spaces move them, and one space
    (``MIN_EXTRA - 1``) does not: partial labels are then no commoner after it than after none, and several
    times commoner from ``MIN_EXTRA`` on. Measured: 9.7% (743 of 7,696) with no extra space, 11.3% (636 of
    5,653) with one, 66.7% (906 of 1,359) with two or more. A trigger of 1 or 3 fails this."""
    labels = positive_negative_labels(real_data)
    none = partial_share(labels, lambda n: n == 0)
    assert partial_share(labels, lambda n: n == MIN_EXTRA - 1) < none + 0.03
    assert partial_share(labels, lambda n: n >= MIN_EXTRA) > 5 * none


@pytest.mark.slow
def test_the_rule_explains_most_shifted_labels_and_leaves_whole_words_alone(real_data: Path) -> None:
    """Measured: of the 906 partial labels with at least ``MIN_EXTRA`` extra spaces before them, the rule
    recovers the meant phrase of 555 (61.3%; a partial label cut at random would almost never be one shift
    of a word-aligned phrase), and of none with fewer; it changes none of the 12,423 whole-word labels. So
    it explains 12,978 of 14,708 labels (88.2%, whole words or recovered) where taking labels as they are
    explains 12,423 (84.5%). A rule off by a character, or one that moves whole-word labels, fails this."""
    labels = positive_negative_labels(real_data)
    recovered = [recover_phrase(t, s, e) != (s, e) for t, s, e in labels]
    whole = [word_aligned(*label) for label in labels]
    domain = [shifted(*label) for label in labels]
    assert not any(r for r, w in zip(recovered, whole) if w)  # whole-word labels stay as they are
    assert not any(r for r, d, w in zip(recovered, domain, whole) if not d and not w)  # no shift, no change
    assert sum(r for r, d in zip(recovered, domain) if d) > 0.58 * sum(domain)
    assert (sum(whole) + sum(recovered)) / len(labels) > 0.875


@pytest.mark.slow
def test_the_rules_constants_fit_the_labels_better_than_its_neighbours(real_data: Path) -> None:
    """``bench/label_noise.py``'s variants (the end moved by ``n``, ``n - 1`` or ``n - 2`` whatever the last
    character; a trigger of one space) reproduce fewer of the 906 partial labels with extra spaces before
    them than sentex's rule. Measured: 638 for the rule, 531 for the best other variant, 121 for the worst."""
    from bench.label_noise import VARIANTS, reproduces

    labels = positive_negative_labels(real_data)
    domain = [(t, t[s:e]) for t, s, e in labels if shifted(t, s, e)]
    counts = {name: sum(reproduces(rule, t, g) for t, g in domain) for name, rule in VARIANTS.items()}
    ours = counts.pop("sentex: end -(n-1) after punctuation, else -(n-2)")
    assert counts and all(ours > 1.1 * n for n in counts.values()), (ours, counts)
