"""Extraction with automatic sentiment against extraction with the gold sentiment, on the same rows.

    python bench/auto_sentiment.py --extractor runs/span/best.ckpt --classifier runs/classify/best.ckpt

The rows are the seeded validation split of ``--data`` (``--val_fraction``, ``--split_seed``: the
split ``sentex fit`` holds out by default, on which both models should have been validated and not
trained). Every row is answered twice by the same extractor: with its gold sentiment, and with the
sentiment the classifier predicts from the text alone (``sentex.load(extractor,
sentiment_model=classifier)``, sentiments left out). Printed: the classifier's accuracy, the mean
Jaccard of each run overall and per gold sentiment, and the paired difference (auto - gold) with a
bootstrap 95% interval. ``--out`` also writes the per-row answers as CSV.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import sentex
from sentex.data import TweetDataModule
from sentex.data.tweets import SENTIMENTS
from sentex.metrics import jaccard, paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


def validation_rows(data: str, val_fraction: float, split_seed: int) -> dict[str, list[str]]:
    """The held-out rows of ``sentex fit``'s default split, as columns."""
    module = TweetDataModule(train_path=data, val_fraction=val_fraction, split_seed=split_seed)
    module.setup("validate")
    val = module.datasets["val"]
    return {c: list(val[c]) for c in ("textID", "text", "sentiment", "selected_text")}


def mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", required=True, help="extractor: exported folder or .ckpt")
    parser.add_argument("--classifier", required=True, help="3-sentiment classifier: exported folder or .ckpt")
    parser.add_argument("--data", default=str(SHARED), help="labelled Kaggle train.csv")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--split_seed", type=int, default=42)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--out", default=None, help="CSV of per-row answers")
    args = parser.parse_args()

    rows = validation_rows(args.data, args.val_fraction, args.split_seed)
    texts, gold_sentiments, golds = rows["text"], rows["sentiment"], rows["selected_text"]
    extractor = sentex.load(args.extractor, sentiment_model=args.classifier)
    start = time.perf_counter()
    with_gold = extractor.extract(texts, gold_sentiments, batch_size=args.batch_size)
    gold_s = time.perf_counter() - start
    start = time.perf_counter()
    predicted = extractor.sentiments_for(texts, None, batch_size=args.batch_size)
    with_auto = extractor.extract(texts, predicted, batch_size=args.batch_size)
    auto_s = time.perf_counter() - start

    j_gold = [jaccard(p, g) for p, g in zip(with_gold, golds)]
    j_auto = [jaccard(p, g) for p, g in zip(with_auto, golds)]
    accuracy = mean([float(p == g) for p, g in zip(predicted, gold_sentiments)])
    diff, lo, hi = paired_bootstrap([a - g for a, g in zip(j_auto, j_gold)])
    print(f"{len(texts)} validation rows (seeded split: val_fraction {args.val_fraction}, seed {args.split_seed})")
    print(f"extractor {args.extractor}; classifier {args.classifier}: sentiment accuracy {accuracy:.4f}\n")
    print("| sentiment | rows | classifier accuracy | Jaccard, gold sentiment | Jaccard, auto | auto - gold |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in (*SENTIMENTS, "all"):
        idx = [i for i, s in enumerate(gold_sentiments) if name in (s, "all")]
        acc = mean([float(predicted[i] == gold_sentiments[i]) for i in idx])
        jg, ja = mean([j_gold[i] for i in idx]), mean([j_auto[i] for i in idx])
        print(f"| {name} | {len(idx)} | {acc:.4f} | {jg:.4f} | {ja:.4f} | {ja - jg:+.4f} |")
    print(f"\npaired difference auto - gold: {diff:+.4f} (95% bootstrap interval {lo:+.4f} .. {hi:+.4f})")
    print(f"time: gold {gold_s:.1f} s, auto (classify + extract) {auto_s:.1f} s")
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["textID", "sentiment", "predicted_sentiment", "gold", "with_gold", "with_auto"])
            writer.writerows(zip(rows["textID"], gold_sentiments, predicted, golds, with_gold, with_auto))


if __name__ == "__main__":
    main()
