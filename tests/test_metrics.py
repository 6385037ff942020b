import pytest
import torch

from sentex.metrics import ExactMatch, PerSentimentJaccard, TokenF1, WordJaccard, extraction_metrics, jaccard, token_f1


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("really love", "love this", 1 / 3),  # {really, love} vs {love, this}: 1 shared of 3
        ("Sooo SAD", "sooo sad", 1.0),  # case-insensitive
        (" my  day ", "my day", 1.0),  # whitespace split, not single spaces
        ("a a b", "a b", 1.0),  # sets, so repeats don't count
        ("good", "bad", 0.0),
        ("", "", 1.0),  # the competition divides by zero here; we define a perfect match
        ("", "word", 0.0),
        ("happy!", "happy", 0.0),  # punctuation stays part of the word, as in the competition
        ("i am so happy today", "so happy", 2 / 5),
    ],
)
def test_jaccard_hand_computed(a: str, b: str, expected: float) -> None:
    assert jaccard(a, b) == pytest.approx(expected)
    assert jaccard(b, a) == pytest.approx(expected)


def test_token_f1_counts_repeats() -> None:
    # pred has "a" twice, gold once: common=2 ("a","b"), P=2/3, R=1 -> F1=0.8
    assert token_f1("a a b", "a b") == pytest.approx(0.8)


def test_metrics_accumulate_across_batches() -> None:
    m = WordJaccard()
    m.update(["really love"], ["love this"])
    m.update(["x", "y"], ["x", "z"])
    assert m.compute().item() == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert m.count.item() == 3


def test_metric_states_are_sums_so_ddp_can_add_them() -> None:
    # Two "processes" that saw different rows: adding their states must equal one process seeing all rows.
    a, b, both = ExactMatch(), ExactMatch(), ExactMatch()
    a.update(["x"], ["x"])
    b.update(["y", "z"], ["y", "q"])
    both.update(["x", "y", "z"], ["x", "y", "q"])
    for name in ("total", "count"):
        assert a._reductions[name] is not None
        assert getattr(a, name) + getattr(b, name) == getattr(both, name)
    merged = ExactMatch()
    merged.total, merged.count = a.total + b.total, a.count + b.count
    assert merged.compute() == both.compute() == pytest.approx(2 / 3)


def test_per_sentiment_breakdown_and_collection_keys() -> None:
    m = extraction_metrics("val/")
    m.update(["really love", "a", "b"], ["love this", "a", "c"], ["positive", "neutral", "negative"])
    out = {k: v.item() for k, v in m.compute().items()}
    assert out["val/jaccard_positive"] == pytest.approx(1 / 3)
    assert out["val/jaccard_neutral"] == 1.0
    assert out["val/jaccard_negative"] == 0.0
    assert out["val/jaccard"] == pytest.approx((1 / 3 + 1) / 3)
    assert out["val/exact_match"] == pytest.approx(1 / 3)
    assert set(out) == {
        "val/jaccard",
        "val/exact_match",
        "val/token_f1",
        "val/jaccard_positive",
        "val/jaccard_neutral",
        "val/jaccard_negative",
        "val/over_extraction",
        "val/under_extraction",
        "val/answer_words",
    }
    # "really love" vs "love this": same length; "a" vs "a"; "b" vs "c": no row longer or shorter
    assert out["val/over_extraction"] == 0.0 and out["val/under_extraction"] == 0.0
    assert out["val/answer_words"] == pytest.approx((2 + 1 + 1) / 3)
    m.reset()
    m.update(["so happy today", "sad"], ["so happy", "very sad"], ["positive", "negative"])
    out = {k: v.item() for k, v in m.compute().items()}
    assert out["val/over_extraction"] == 0.5 and out["val/under_extraction"] == 0.5


def test_per_sentiment_omits_unseen_sentiments_and_rejects_missing() -> None:
    m = PerSentimentJaccard()
    m.update(["a"], ["a"], ["neutral"])
    assert set(m.compute()) == {"jaccard_neutral"}
    with pytest.raises(ValueError):
        m.update(["a"], ["a"])
    with pytest.raises(ValueError):
        TokenF1().update(["a", "b"], ["a"])


def test_empty_metric_is_zero_not_nan() -> None:
    assert not torch.isnan(WordJaccard().compute())
