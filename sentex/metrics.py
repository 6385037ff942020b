"""Word-level Jaccard (the competition metric) and related torchmetrics.

The competition scores a prediction with the Jaccard index of the two *sets* of lower-cased,
whitespace-separated words. The pure functions below are the single source of that arithmetic;
the ``Metric`` classes only accumulate their results in sum/count tensor states so that they
reduce correctly across processes (``dist_reduce_fx="sum"``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torchmetrics import Metric, MetricCollection

from sentex.data.tweets import SENTIMENTS


def jaccard(a: str, b: str) -> float:
    """Word-level Jaccard index as defined by the Kaggle competition.

    Both strings are lower-cased and split on whitespace; the score is
    ``|A ∩ B| / |A ∪ B|`` of the word sets. The competition code divides by zero when both
    are empty; we define that case as a perfect match.

    >>> jaccard("really love", "love this")
    0.3333333333333333
    >>> jaccard("Good Day", "good  day ")
    1.0
    >>> jaccard("", "")
    1.0
    >>> jaccard("", "anything")
    0.0
    """
    sa, sb = set(a.lower().split()), set(b.lower().split())
    if not sa and not sb:
        return 1.0
    inter = len(sa & sb)
    return inter / (len(sa) + len(sb) - inter)


def exact_match(a: str, b: str) -> float:
    """1.0 when both strings have the same lower-cased words in the same order.

    >>> exact_match(" Sooo SAD", "sooo sad")
    1.0
    >>> exact_match("sad sooo", "sooo sad")
    0.0
    """
    return float(a.lower().split() == b.lower().split())


def token_f1(a: str, b: str) -> float:
    """SQuAD-style bag-of-words F1 (counts repeated words, unlike Jaccard).

    >>> token_f1("really love", "love this")
    0.5
    >>> token_f1("", "")
    1.0
    """
    ta, tb = a.lower().split(), b.lower().split()
    if not ta and not tb:
        return 1.0
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(ta), common / len(tb)
    return 2 * precision * recall / (precision + recall)


def over_extracted(pred: str, gold: str) -> float:
    """1.0 when the prediction has more words than the gold phrase (it over-extracts).

    >>> over_extracted("so happy today", "so happy"), over_extracted("happy", "so happy")
    (1.0, 0.0)
    """
    return float(len(pred.split()) > len(gold.split()))


def under_extracted(pred: str, gold: str) -> float:
    """1.0 when the prediction has fewer words than the gold phrase (it under-extracts).

    >>> under_extracted("happy", "so happy"), under_extracted("happy so", "so happy")
    (1.0, 0.0)
    """
    return float(len(pred.split()) < len(gold.split()))


def answer_words(pred: str, gold: str) -> float:
    """Number of words in the prediction (its mean is the answers' mean length).

    >>> answer_words(" so  happy ", "x")
    2.0
    """
    return float(len(pred.split()))


class MeanTextScore(Metric):
    """Mean of a pairwise text score, kept as a sum and a count so DDP can add them up."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def score(pred: str, target: str) -> float:
        raise NotImplementedError

    def update(self, preds: Sequence[str], target: Sequence[str], sentiments: Sequence[str] | None = None) -> None:
        """Add a batch. ``sentiments`` is accepted so every metric in a collection shares one signature."""
        _check_lengths(preds, target)
        # Out-of-place adds: states created under ``inference_mode`` (a validate before fit)
        # cannot be updated in place later.
        self.total = self.total + sum(self.score(p, t) for p, t in zip(preds, target))
        self.count = self.count + len(preds)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class WordJaccard(MeanTextScore):
    """Mean competition Jaccard (:func:`jaccard`)."""

    score = staticmethod(jaccard)


class ExactMatch(MeanTextScore):
    """Share of predictions with exactly the gold words (:func:`exact_match`)."""

    score = staticmethod(exact_match)


class TokenF1(MeanTextScore):
    """Mean bag-of-words F1 (:func:`token_f1`)."""

    score = staticmethod(token_f1)


class OverExtraction(MeanTextScore):
    """Share of predictions with more words than the gold (:func:`over_extracted`)."""

    higher_is_better = False
    score = staticmethod(over_extracted)


class UnderExtraction(MeanTextScore):
    """Share of predictions with fewer words than the gold (:func:`under_extracted`)."""

    higher_is_better = False
    score = staticmethod(under_extracted)


class AnswerWords(MeanTextScore):
    """Mean number of words per prediction (:func:`answer_words`): shows answers growing or shrinking."""

    higher_is_better = None
    score = staticmethod(answer_words)


class MeanValue(Metric):
    """Mean of the values of a tensor over every update and process (sum/count states).

    Unlike torchmetrics' ``MeanMetric`` its out-of-place updates survive a ``validate`` (inference
    mode) before ``fit``, and a process that saw no value still takes part in the reduction.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        self.total = self.total + values.detach().double().sum()
        self.count = self.count + values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class PerSentimentJaccard(Metric):
    """Mean Jaccard for each sentiment; ``compute`` returns ``{"jaccard_<sentiment>": value}``.

    A sentiment with no rows yet is left out of the result rather than reported as 0.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, sentiments: Sequence[str] = SENTIMENTS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sentiments = tuple(sentiments)
        n = len(self.sentiments)
        self.add_state("total", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[str], sentiments: Sequence[str] | None = None) -> None:
        _check_lengths(preds, target)
        if sentiments is None or len(sentiments) != len(preds):
            raise ValueError("PerSentimentJaccard needs one sentiment per prediction")
        total, count = torch.zeros_like(self.total), torch.zeros_like(self.count)
        for p, t, s in zip(preds, target, sentiments):
            i = self.sentiments.index(s)
            total[i] += jaccard(p, t)
            count[i] += 1
        self.total, self.count = self.total + total, self.count + count

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            f"jaccard_{s}": (self.total[i] / self.count[i]).float()
            for i, s in enumerate(self.sentiments)
            if self.count[i] > 0
        }


def extraction_metrics(prefix: str) -> MetricCollection:
    """One metric object for a stage: ``<prefix>jaccard``, ``exact_match``, ``token_f1``, per sentiment,
    and the answers' length against the gold: ``over_extraction``, ``under_extraction``, ``answer_words``."""
    return MetricCollection(
        {
            "jaccard": WordJaccard(),
            "exact_match": ExactMatch(),
            "token_f1": TokenF1(),
            "by_sentiment": PerSentimentJaccard(),
            "over_extraction": OverExtraction(),
            "under_extraction": UnderExtraction(),
            "answer_words": AnswerWords(),
        },
        prefix=prefix,
        compute_groups=False,
    )


def paired_bootstrap(
    diffs: Sequence[float], n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of paired per-row differences (after - before on the same rows) and its bootstrap interval.

    Rows are resampled with replacement ``n_resamples`` times; the interval is the central ``level``
    share of the resampled means (percentile bootstrap).

    >>> paired_bootstrap([0.1] * 50)
    (0.1, 0.1, 0.1)
    >>> mean, lo, hi = paired_bootstrap([1.0, -1.0] * 200)
    >>> mean, lo < 0 < hi
    (0.0, True)
    """
    x = torch.tensor(list(diffs), dtype=torch.float64)
    if x.numel() == 0:
        raise ValueError("paired_bootstrap needs at least one difference")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_resamples, x.numel()), generator=gen)
    means = x[idx].mean(dim=1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return round(x.mean().item(), 10), round(lo, 10), round(hi, 10)


def _check_lengths(preds: Sequence[str], target: Sequence[str]) -> None:
    if len(preds) != len(target):
        raise ValueError(f"got {len(preds)} predictions for {len(target)} targets")
