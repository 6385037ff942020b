"""Other ways to pick the answer from a span model's distribution, scored on the same out-of-fold rows.

    python bench/span_decoding.py --root runs/folds/span --folds 0 1 2

``--root`` is a ``bench/folds.py`` run: each ``fold<k>/result.json`` names the fold's best
checkpoint, which answers its validation fold (the rows of the split it trained with, read from the
checkpoint as ``bench/folds.py`` reads them) once; every decoding rule below then picks from the
same top-``K`` spans of that distribution (longest span ``--max_span`` tokens), to which each row
adds the most probable span within each rule's cap (so the argmax rules are exact, and no rule is
left without a span that fits), so the rules are compared paired, row by row, with the model's own
rule (the most probable span of at most ``max_span_tokens``, then the label shift) as the baseline:

* ``argmax, span cap N``: the most probable span of at most ``N`` tokens.
* ``expected Jaccard (K, a)``: minimum Bayes risk: the span whose expected word Jaccard against
  the model's distribution (the ``K`` most probable spans, probabilities raised to ``a``) is highest.
* ``length bonus b``: the span maximising ``log p + b * tokens`` (``b < 0`` prefers shorter ones).
* ``whole tweet up to n words``: positive/negative tweets of at most ``n`` words answered whole.

Neutral rows follow the model's rule throughout where the checkpoint answers them with the whole
tweet (``neutral_full_tweet``, the default), so differences come from positive/negative rows;
where it does not, they are decoded by each rule like the others.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from sentex.data.label_noise import shift_like_labels
from sentex.deploy.load import module_from_checkpoint
from sentex.metrics import jaccard, paired_bootstrap
from sentex.models.components.span_math import normalize_spans

try:
    from bench.folds import validation_data
except ModuleNotFoundError:  # run as `python bench/span_decoding.py`: bench/ is on sys.path, the repository is not
    from folds import validation_data

# A candidate: character start, end, token length, probability.
Candidate = tuple[int, int, int, float]


@dataclass(frozen=True)
class Decoding:
    """How a checkpoint's own rule decodes, as its span codec was saved.

    Attributes:
        cap: longest span it answers (``max_span_tokens``).
        shift: whether it re-applies the label shift to its answers (``reapply_label_shift``).
        neutral_full_tweet: whether it answers neutral tweets with the whole tweet.
    """

    cap: int
    shift: bool
    neutral_full_tweet: bool


def row_candidates(
    log_p: torch.Tensor, offsets: list[list[tuple[int, int]]], top_k: int, caps: Iterable[int]
) -> list[list[Candidate]]:
    """Each row's ``top_k`` most probable spans, plus its most probable span within each of ``caps``.

    The top ``K`` alone can hold no span short enough for a small cap (a long tweet whose mass is on
    long spans), which would leave a capped rule nothing to pick; the added spans make the argmax of
    every cap exact.

    Args:
        log_p: ``(batch, tokens, tokens)`` span log-probabilities, ``-inf`` where no span is allowed.
        offsets: each row's token character offsets.
        top_k: spans kept per row by probability alone.
        caps: span caps (tokens) whose best span each row must hold.

    Returns:
        Each row's candidates, most probable first, without repeats or impossible spans.
    """
    tokens = log_p.shape[1]
    flat = log_p.flatten(1)
    picks = [flat.topk(min(top_k, flat.shape[1]), dim=1).indices]
    position = torch.arange(tokens)
    length = (position[None, :] - position[:, None] + 1).flatten()  # end - start + 1 of each (start, end)
    for cap in sorted(set(caps)):
        picks.append(flat.masked_fill(length > cap, -math.inf).argmax(dim=1, keepdim=True))
    indices = torch.cat(picks, dim=1)
    out = []
    for row_offsets, row_indices, row_log_p in zip(offsets, indices.tolist(), flat.gather(1, indices).tolist()):
        found: dict[int, Candidate] = {}
        for k, v in zip(row_indices, row_log_p):
            s, e = divmod(k, tokens)
            if v > -math.inf and k not in found:
                found[k] = (row_offsets[s][0], row_offsets[e][1], e - s + 1, math.exp(v))
        # Stable: spans of equal probability keep topk's order.
        out.append(sorted(found.values(), key=lambda c: -c[3]))
    return out


@torch.no_grad()
def fold_candidates(checkpoint: str, args: argparse.Namespace, fold: int) -> tuple[list[dict], Decoding]:
    """Each validation row of a fold with its candidate spans, and how the fold's model decodes."""
    model, ckpt = module_from_checkpoint(checkpoint)
    model.eval()
    codec = model.codec
    decoding = Decoding(codec.max_span_tokens, codec.reapply_label_shift, codec.neutral_full_tweet)
    caps = [cap for _, cap, _ in rules(decoding.cap).values()]
    codec.max_span_tokens = args.max_span
    rows = validation_data(ckpt, Path(checkpoint), fold, args.num_folds).datasets["val"].to_list()
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        batch = model.collate(chunk)
        scores = normalize_spans(codec.span_scores(model.net, batch))
        for row, candidates in zip(chunk, row_candidates(scores, batch["offsets"], args.top_k, caps)):
            row["candidates"] = candidates
    return rows, decoding


def expected_jaccard(top_k: int, power: float) -> Callable[[str, list[Candidate]], Candidate]:
    def pick(text: str, candidates: list[Candidate]) -> Candidate:
        pool = candidates[:top_k]
        words = [set(text[s:e].lower().split()) for s, e, _, _ in pool]
        weights = [p**power for _, _, _, p in pool]

        def risk(a: set[str]) -> float:
            return sum(w * (len(a & b) / len(a | b) if a | b else 0.0) for w, b in zip(weights, words))

        return max(zip(pool, words), key=lambda cw: risk(cw[1]))[0]

    return pick


def length_bonus(bonus: float) -> Callable[[str, list[Candidate]], Candidate]:
    return lambda text, candidates: max(candidates, key=lambda c: math.log(c[3]) + bonus * c[2])


def rules(cap: int) -> dict[str, tuple[Callable[[str, list[Candidate]], Candidate], int, int]]:
    """Name → (pick, span cap, whole-tweet word limit)."""
    argmax = length_bonus(0.0)
    out = {f"argmax, span cap {cap} (the model's rule)": (argmax, cap, 0)}
    out |= {f"argmax, span cap {n}": (argmax, n, 0) for n in (32, 64) if n != cap}
    for k, a in ((10, 1), (40, 1), (40, 2)):
        out[f"expected Jaccard (K={k}, a={a})"] = (expected_jaccard(k, a), cap, 0)
    out |= {f"length bonus {b:+}": (length_bonus(b), cap, 0) for b in (-0.1, 0.05, 0.1)}
    out |= {f"whole tweet up to {n} words": (argmax, cap, n) for n in (2, 3)}
    return out


def answer(row: dict, pick: Callable, cap: int, whole_words: int, decoding: Decoding) -> str:
    """A row's answer by one rule: ``pick`` among its candidates of at most ``cap`` tokens.

    Args:
        row: a validation row with its ``candidates`` (:func:`row_candidates`).
        pick: the rule's choice among candidates.
        cap: the rule's span cap (tokens).
        whole_words: tweets of at most this many words are answered whole (0: none).
        decoding: the model's own rule, for what every rule keeps from it (neutral tweets, the shift).

    Returns:
        The answer, a substring of the tweet.
    """
    text = row["text"]
    if (decoding.neutral_full_tweet and row["sentiment"] == "neutral") or len(text.split()) <= whole_words:
        return text.strip()
    pool = [c for c in row["candidates"] if c[2] <= cap]
    if not pool:
        # Only a row with no span at all (no tweet token scored) gets here; the model answers "" too.
        return ""
    s, e, _, _ = pick(text, pool)
    if decoding.shift:
        s, e = shift_like_labels(text, s, e)
    return text[s:e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a bench/folds.py --root whose folds are trained")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_folds", type=int, default=5, help="the folds' number of folds (checked)")
    parser.add_argument("--top_k", type=int, default=40, help="spans kept per row")
    parser.add_argument("--max_span", type=int, default=64, help="longest span (tokens) any rule may pick")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folds = []
    for k in args.folds:
        result = json.loads((Path(args.root) / f"fold{k}" / "result.json").read_text())
        folds.append(fold_candidates(result["best_checkpoint"], args, k))
    caps = {decoding.cap for _, decoding in folds}
    if len(caps) != 1:
        raise SystemExit(f"the folds' models decode with different span caps {sorted(caps)}: compare like with like")
    table = {}
    for name, (pick, cap, whole) in rules(caps.pop()).items():
        table[name] = [
            [jaccard(answer(r, pick, cap, whole, decoding), r["selected_text"]) for r in rows]
            for rows, decoding in folds
        ]
    baseline = [x for fold in next(iter(table.values())) for x in fold]
    spans = f"top {args.top_k} spans of <= {args.max_span} tokens"
    print(f"\n## Decoding rules on {args.root}, folds {args.folds} ({spans})\n")
    print("| rule | " + " | ".join(f"fold {k}" for k in args.folds) + " | mean | paired vs the model's rule (95% CI) |")
    print("|---|" + "---:|" * (len(args.folds) + 2))
    for name, per_fold in table.items():
        means = [statistics.fmean(scores) for scores in per_fold]
        d, lo, hi = paired_bootstrap([a - b for a, b in zip((x for f in per_fold for x in f), baseline)])
        cells = " | ".join(f"{m:.4f}" for m in means)
        print(f"| {name} | {cells} | {statistics.fmean(means):.4f} | {d:+.4f} ({lo:+.4f} .. {hi:+.4f}) |")


if __name__ == "__main__":
    main()
