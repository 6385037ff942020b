"""The span model's arithmetic as pure functions: token targets, span scores, decoding, losses.

A span is a pair of tweet-token indices ``(start, end)``. Two scorings exist:

* ``independent``: ``log p(start) + log p(end)`` from two softmaxes over the tweet's tokens (the
  classic SQuAD/Kaggle head). Not a distribution over spans: it also gives mass to ``start > end``.
* ``joint``: one softmax over every *valid* pair ``i <= j < i + max_span`` of tweet tokens, scored
  ``start_i + end_j + pair(i, j)`` (RaSoR, arXiv 1611.01436; Fajcik et al., arXiv 2008.12804), so a
  span's log-probability is a real log-probability and sums to 1 over what decoding can answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sentex.metrics import jaccard

IGNORE = -100
NEG = -1e4  # logit of a position that can never be an answer (finite: keeps softmax gradients finite)


def char_span_to_tokens(offsets: list[tuple[int, int]], in_tweet: list[bool], start: int, end: int) -> tuple[int, int]:
    """First and last tweet token overlapping characters ``[start, end)``; ``(IGNORE, IGNORE)`` if none.

    >>> offsets = [(0, 0), (0, 1), (2, 6), (7, 11), (0, 0)]
    >>> char_span_to_tokens(offsets, [False, True, True, True, False], 2, 11)
    (2, 3)
    >>> char_span_to_tokens(offsets, [False, True, True, True, False], 3, 5)
    (2, 2)
    """
    hits = [i for i, ((a, b), ok) in enumerate(zip(offsets, in_tweet)) if ok and b > a and a < end and b > start]
    return (hits[0], hits[-1]) if hits else (IGNORE, IGNORE)


def boundary_log_probs(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Log-softmax of ``(batch, tokens)`` boundary logits over the ``allowed`` tokens only.

    >>> lp = boundary_log_probs(torch.zeros(1, 3), torch.tensor([[True, True, False]]))
    >>> [round(x, 3) for x in lp.exp()[0].tolist()]
    [0.5, 0.5, 0.0]
    """
    return F.log_softmax(logits.float().masked_fill(~allowed, NEG), dim=-1)


def valid_pairs(allowed: torch.Tensor, max_span: int) -> torch.Tensor:
    """``(batch, tokens, tokens)`` bool: ``(i, j)`` with ``i <= j < i + max_span``, both ``allowed``.

    >>> valid_pairs(torch.tensor([[False, True, True]]), 2)[0].int().tolist()
    [[0, 0, 0], [0, 1, 1], [0, 0, 1]]
    """
    n = allowed.shape[1]
    idx = torch.arange(n, device=allowed.device)
    band = (idx[None, :] >= idx[:, None]) & (idx[None, :] < idx[:, None] + max_span)
    return band[None] & allowed[:, :, None] & allowed[:, None, :]


def pair_log_probs(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    pair_logits: torch.Tensor | None,
    allowed: torch.Tensor,
    max_span: int,
) -> torch.Tensor:
    """``(batch, tokens, tokens)`` score of every span; ``-inf`` where ``(i, j)`` is not a valid pair.

    With ``pair_logits`` (joint scoring) the scores are log-probabilities normalised over the valid
    pairs. Without (independent scoring) they are ``log p(start) + log p(end)`` of the two boundary
    softmaxes, which do not sum to 1 over valid pairs.

    >>> z = torch.zeros(1, 3)
    >>> lp = pair_log_probs(z, z, torch.zeros(1, 3, 3), torch.tensor([[True, True, True]]), 2)
    >>> round(lp.exp().sum().item(), 6), round(lp[0, 0, 0].exp().item(), 4)  # 5 valid pairs, uniform
    (1.0, 0.2)
    """
    valid = valid_pairs(allowed, max_span)
    if pair_logits is None:
        start, end = boundary_log_probs(start_logits, allowed), boundary_log_probs(end_logits, allowed)
        scores = start[:, :, None] + end[:, None, :]
        return scores.masked_fill(~valid, float("-inf"))
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :] + pair_logits.float()
    flat = scores.masked_fill(~valid, float("-inf")).flatten(1)
    return F.log_softmax(flat, dim=-1).view_as(scores)


def best_spans(span_scores: torch.Tensor) -> torch.Tensor:
    """``(batch, 2)`` ``(start, end)`` of the highest-scoring span of each row of a :func:`pair_log_probs` matrix.

    >>> s = torch.full((1, 3, 3), float("-inf")); s[0, 1, 2] = -0.1; s[0, 0, 0] = -2.0
    >>> best_spans(s).tolist()
    [[1, 2]]
    """
    n = span_scores.shape[-1]
    flat = span_scores.flatten(1).argmax(dim=1)
    return torch.stack([flat // n, flat % n], dim=1)


def gather_spans(span_scores: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Score of each row's ``(start, end)`` in a ``(batch, tokens, tokens)`` matrix; ``IGNORE`` spans give 0.

    >>> m = torch.arange(9.0).view(1, 3, 3)
    >>> gather_spans(m, torch.tensor([[1, 2]])).tolist(), gather_spans(m, torch.tensor([[IGNORE, IGNORE]])).tolist()
    ([5.0], [0.0])
    """
    ok = (spans != IGNORE).all(dim=1)
    idx = spans.clamp(min=0)
    n = span_scores.shape[-1]
    picked = span_scores.flatten(1).gather(1, (idx[:, 0] * n + idx[:, 1])[:, None]).squeeze(1)
    return picked.masked_fill(~ok, 0.0)


def gather_boundaries(start_logp: torch.Tensor, end_logp: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """``log p(start) + log p(end)`` of each row's ``(start, end)`` token span; ``IGNORE`` spans score 0.

    >>> logp = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    >>> round(gather_boundaries(logp, logp, torch.tensor([[0, 1]])).exp().item(), 4)
    0.125
    """
    ok = (spans != IGNORE).all(dim=1)
    idx = spans.clamp(min=0)
    picked = start_logp.gather(1, idx[:, :1]).squeeze(1) + end_logp.gather(1, idx[:, 1:]).squeeze(1)
    return picked.masked_fill(~ok, 0.0)


def smoothed_span_nll(
    logp: torch.Tensor,
    target: torch.Tensor,
    allowed: torch.Tensor,
    smoothing: float,
    soft: torch.Tensor | None = None,
    soft_weight: float = 0.0,
) -> torch.Tensor:
    """Mean NLL of ``target`` positions with label smoothing spread over the ``allowed`` positions only.

    ``(1 - ε)·(-log p[target]) + ε·mean_{allowed}(-log p)``, averaged over rows whose target is not
    ``IGNORE``. ``F.cross_entropy(label_smoothing=ε)`` would spread ε over every position, including
    the sentiment, special and padding tokens that can never be an answer. With ``soft`` target
    distributions (:func:`jaccard_boundary_targets`), the hard term becomes
    ``(1 - w)·(-log p[target]) + w·CE(soft)`` for ``soft_weight`` ``w``.

    >>> logp = torch.log(torch.tensor([[0.5, 0.25, 0.25, 1e-9]]))
    >>> allowed = torch.tensor([[True, True, True, False]])
    >>> round(smoothed_span_nll(logp, torch.tensor([0]), allowed, 0.0).item(), 4)  # -log 0.5
    0.6931
    >>> # 0.7 · 0.6931 + 0.3 · (0.6931 + 2 · 1.3863) / 3
    >>> round(smoothed_span_nll(logp, torch.tensor([0]), allowed, 0.3).item(), 4)
    0.8318
    >>> soft = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # 0.5 · 0.6931 + 0.5 · 1.0397
    >>> round(smoothed_span_nll(logp, torch.tensor([0]), allowed, 0.0, soft, 0.5).item(), 4)
    0.8664
    """
    rows = target != IGNORE
    nll = -logp.gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    if soft is not None and soft_weight > 0:
        nll = (1 - soft_weight) * nll + soft_weight * soft_target_nll(logp, soft)
    if smoothing > 0:
        spread = -(logp.masked_fill(~allowed, 0.0).sum(1)) / allowed.sum(1).clamp(min=1)
        nll = (1 - smoothing) * nll + smoothing * spread
    return nll[rows].mean()


def jaccard_boundary_targets(
    text: str, offsets: list[tuple[int, int]], in_tweet: list[bool], start: int, end: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Jaccard-shaped start and end target distributions for the gold token span ``(start, end)``.

    The start target over tweet tokens ``i <= end`` is proportional to ``J_i + J_i²``, ``J_i`` being
    the word Jaccard of the span ``(i, end)`` with the gold span's text; the end target over
    ``j >= start`` likewise with ``(start, j)``. A near-miss boundary thus keeps some of the mass it
    would earn in the metric (the 1st-place Kaggle team reported +0.003 for every model with such
    targets). Both sum to 1 and peak at the gold boundary.

    >>> offsets = [(0, 0), (0, 2), (3, 8), (9, 14)]  # [CLS] so happy today
    >>> s, e = jaccard_boundary_targets("so happy today", offsets, [False, True, True, True], 1, 2)
    >>> [round(x, 3) for x in s.tolist()]  # J = 1, 1/2 → weights 2, 3/4 over 11/4
    [0.0, 0.727, 0.273, 0.0]
    >>> [round(x, 3) for x in e.tolist()]  # J = 1/2, 1, 2/3 → weights 3/4, 2, 10/9
    [0.0, 0.194, 0.518, 0.288]
    """
    gold = text[offsets[start][0] : offsets[end][1]]
    n = len(offsets)
    start_w, end_w = torch.zeros(n), torch.zeros(n)
    for i in range(n):
        if not in_tweet[i] or offsets[i][1] <= offsets[i][0]:
            continue
        if i <= end:
            j = jaccard(text[offsets[i][0] : offsets[end][1]], gold)
            start_w[i] = j + j * j
        if i >= start:
            j = jaccard(text[offsets[start][0] : offsets[i][1]], gold)
            end_w[i] = j + j * j
    return start_w / start_w.sum(), end_w / end_w.sum()


def soft_target_nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` cross-entropy ``-Σ_i t_i log p_i`` of each row's target distribution (KL plus a constant).

    >>> logp = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    >>> round(soft_target_nll(logp, torch.tensor([[0.5, 0.5, 0.0]])).item(), 4)  # (0.6931 + 1.3863) / 2
    1.0397
    """
    return -(targets * logp.masked_fill(targets == 0, 0.0)).sum(-1)


def joint_span_nll(span_logp: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Mean ``-log p(span)`` of the gold spans under a joint :func:`pair_log_probs` matrix.

    Rows whose gold span is ``IGNORE`` or outside the valid pairs (longer than ``max_span``) are
    skipped; with no such row left the result is a zero that keeps the graph.

    >>> lp = torch.log(torch.tensor([[[0.5, 0.5], [0.0, 0.0]]]))
    >>> round(joint_span_nll(lp, torch.tensor([[0, 1]])).item(), 4)
    0.6931
    """
    picked = gather_spans(span_logp, spans)
    rows = (spans != IGNORE).all(dim=1) & torch.isfinite(picked)
    if not rows.any():
        return span_logp.masked_fill(~torch.isfinite(span_logp), 0.0).sum() * 0.0
    return -picked[rows].mean()


def span_entropy(span_logp: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` entropy (nats) of each row's distribution over valid spans (``-inf`` entries excluded).

    >>> round(span_entropy(torch.log(torch.full((1, 2, 2), 0.25))).item(), 4)  # log 4
    1.3863
    """
    p = span_logp.exp()
    return -(p * span_logp.masked_fill(~torch.isfinite(span_logp), 0.0)).flatten(1).sum(1)


def normalize_spans(span_scores: torch.Tensor) -> torch.Tensor:
    """Log-softmax of a :func:`pair_log_probs` matrix over its finite entries: a distribution over valid spans.

    Joint scores are already one; independent ``log p(start) + log p(end)`` scores become one.

    >>> s = torch.log(torch.tensor([[[0.2, 0.2], [float("nan"), 0.1]]])).nan_to_num(nan=float("-inf"))
    >>> [round(x, 3) for x in normalize_spans(s).exp().flatten().tolist()]
    [0.4, 0.4, 0.0, 0.2]
    """
    return F.log_softmax(span_scores.flatten(1), dim=-1).view_as(span_scores)


def mean_span_distribution(member_log_probs: list[torch.Tensor]) -> torch.Tensor:
    """Log of the average of the members' span distributions (each a :func:`normalize_spans` matrix).

    >>> a = torch.log(torch.tensor([[[0.5, 0.5]]])); b = torch.log(torch.tensor([[[1.0, 0.0]]]))
    >>> [round(x, 3) for x in mean_span_distribution([a, b]).exp().flatten().tolist()]
    [0.75, 0.25]
    """
    stacked = torch.stack(member_log_probs)
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(member_log_probs))))


def boundary_marginals(span_log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, tokens)`` probabilities that a token starts / ends the answer, from a span distribution.

    >>> lp = torch.log(torch.tensor([[[0.5, 0.25], [0.0, 0.25]]]))
    >>> [x.tolist() for x in boundary_marginals(lp)]
    [[[0.75, 0.25]], [[0.5, 0.5]]]
    """
    p = span_log_probs.exp()
    return p.sum(2), p.sum(1)


def span_jaccards(text: str, offsets: list[tuple[int, int]], valid: torch.Tensor, gold: str) -> torch.Tensor:
    """``(tokens, tokens)`` Jaccard with ``gold`` of the phrase each valid span ``(i, j)`` decodes to (0 elsewhere).

    >>> offsets = [(0, 0), (0, 2), (3, 8), (9, 14)]  # [CLS] so happy today
    >>> valid = torch.tensor([[False] * 4, [False, True, True, True], [False, False, True, True], [False] * 3 + [True]])
    >>> [round(x, 4) for x in span_jaccards("so happy today", offsets, valid, "so happy")[1].tolist()]
    [0.0, 0.5, 1.0, 0.6667]
    """
    out = torch.zeros(valid.shape, dtype=torch.float32)
    for i, j in valid.nonzero().tolist():
        out[i, j] = jaccard(text[offsets[i][0] : offsets[j][1]], gold)
    return out
