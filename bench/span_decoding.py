"""Other ways to pick the answer from a span model's distribution, scored on the same out-of-fold rows.

    python bench/span_decoding.py --root runs/folds/span --folds 0 1 2

``--root`` is a ``bench/folds.py`` run: each ``fold<k>/result.json`` names the fold's best
checkpoint, which answers its validation fold once; every decoding rule below then picks from the
same top-``K`` spans of that distribution (longest span ``--max_span`` tokens), so the rules are
compared paired, row by row, with the model's own rule (the most probable span of at most
``max_span_tokens``, then the label shift) as the baseline:

* ``argmax, span cap N``: the most probable span of at most ``N`` tokens.
* ``expected Jaccard (K, a)``: minimum Bayes risk: the span whose expected word Jaccard against
  the model's distribution (the ``K`` most probable spans, probabilities raised to ``a``) is highest.
* ``length bonus b``: the span maximising ``log p + b * tokens`` (``b < 0`` prefers shorter ones).
* ``whole tweet up to n words``: positive/negative tweets of at most ``n`` words answered whole.

Neutral rows follow the model's rule throughout, so differences come from positive/negative rows.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from sentex.data import TweetDataModule
from sentex.data.label_noise import shift_like_labels
from sentex.deploy.load import module_from_checkpoint
from sentex.metrics import jaccard, paired_bootstrap
from sentex.models.components.span_math import normalize_spans

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"

# A candidate: character start, end, token length, probability.
Candidate = tuple[int, int, int, float]


@torch.no_grad()
def fold_candidates(checkpoint: str, args: argparse.Namespace, fold: int) -> tuple[list[dict], int, bool]:
    """Each validation row with its top-K spans, plus the model's span cap and whether it re-applies the shift."""
    model, _ = module_from_checkpoint(checkpoint)
    model.eval()
    codec = model.codec
    cap, shift = codec.max_span_tokens, codec.reapply_label_shift
    codec.max_span_tokens = args.max_span
    dm = TweetDataModule(train_path=args.data, num_folds=args.num_folds, fold=fold, split_seed=args.split_seed)
    dm.setup("validate")
    val = dm.datasets["val"]
    rows = val.to_list()
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        batch = model.collate(chunk)
        scores = normalize_spans(codec.span_scores(model.net, batch))
        tokens, log_p = scores.shape[1], scores.flatten(1)
        top = log_p.topk(min(args.top_k, log_p.shape[1]), dim=1)
        for row, offsets, values, indices in zip(chunk, batch["offsets"], top.values.tolist(), top.indices.tolist()):
            row["candidates"] = [
                (offsets[s][0], offsets[e][1], e - s + 1, math.exp(v))
                for v, (s, e) in ((v, divmod(k, tokens)) for v, k in zip(values, indices))
                if v > -math.inf
            ]
    return rows, cap, shift


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


def answer(row: dict, pick: Callable, cap: int, whole_words: int, shift: bool) -> str:
    text = row["text"]
    if row["sentiment"] == "neutral" or len(text.split()) <= whole_words:
        return text.strip()
    s, e, _, _ = pick(text, [c for c in row["candidates"] if c[2] <= cap])
    if shift:
        s, e = shift_like_labels(text, s, e)
    return text[s:e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a bench/folds.py --root whose folds are trained")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=str(SHARED), help="Kaggle train.csv (the folds' data)")
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--split_seed", type=int, default=42)
    parser.add_argument("--top_k", type=int, default=40, help="spans kept per row")
    parser.add_argument("--max_span", type=int, default=64, help="longest span (tokens) any rule may pick")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folds = []
    for k in args.folds:
        result = json.loads((Path(args.root) / f"fold{k}" / "result.json").read_text())
        folds.append(fold_candidates(result["best_checkpoint"], args, k))
    caps = {cap for _, cap, _ in folds}
    if len(caps) != 1:
        raise SystemExit(f"the folds' models decode with different span caps {sorted(caps)}: compare like with like")
    table = {}
    for name, (pick, cap, whole) in rules(caps.pop()).items():
        table[name] = [
            [jaccard(answer(r, pick, cap, whole, shift), r["selected_text"]) for r in rows] for rows, _, shift in folds
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
