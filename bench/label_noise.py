"""How well each variant of the extra-space label-shift rule explains the Kaggle labels; a Markdown table.

    python bench/label_noise.py                       # ../shared/data/tweet-sentiment-extraction/train.csv

For every positive/negative row, a variant *reproduces* the label when some word-aligned phrase of
the tweet, shifted by the variant, is exactly the label. ``identity`` (no shift) is the baseline.
The last columns are what a perfect model of the meant phrase would score against the labels with
and without re-applying the chosen rule (:mod:`sentex.data.label_noise`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from sentex.data.label_noise import MIN_EXTRA, extra_spaces_before, recover_phrase, shift_like_labels, shift_span
from sentex.data.tweets import read_tweets
from sentex.metrics import jaccard

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"
Rule = Callable[[str, int, int], tuple[int, int]]


def fixed_growth(grow: int, min_extra: int = MIN_EXTRA) -> Rule:
    """Start moves left by ``n`` extra spaces, end by ``n - grow`` (then stripped)."""
    return lambda text, a, b: shift_span(text, a, b, grow, min_extra)


VARIANTS: dict[str, Rule] = {
    "identity": lambda text, a, b: (a, b),
    "start -n, end -n": fixed_growth(0),
    "start -n, end -(n-1)": fixed_growth(1),
    "start -n, end -(n-2)": fixed_growth(2),
    "start -n, end -(n-2), also n=1": fixed_growth(2, min_extra=1),
    "sentex: end -(n-1) after punctuation, else -(n-2)": shift_like_labels,
}


def reproduces(rule: Rule, text: str, label: str) -> bool:
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    for i, (a, _) in enumerate(words):
        for _, b in words[i:]:
            s, e = rule(text, a, b)
            if text[s:e].strip() == label:
                return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED))
    args = parser.parse_args()
    table = read_tweets(args.data, require_labels=True)
    cols = table.columns
    rows = [(t, g) for t, g, s in zip(cols["text"], cols["selected_text"], cols["sentiment"]) if s != "neutral"]
    shifted = sum(extra_spaces_before(t, t.find(g)) >= MIN_EXTRA for t, g in rows)
    print(f"\n## Label-shift rule variants on {args.data}: {len(rows)} positive/negative rows, "
          f"{shifted} with >= {MIN_EXTRA} extra spaces before the label\n")  # fmt: skip
    print("| variant | labels reproduced | share |\n|---|---:|---:|")
    for name, rule in VARIANTS.items():
        hit = sum(reproduces(rule, t, g) for t, g in rows)
        print(f"| {name} | {hit} | {hit / len(rows):.4f} |")
    meant, relabelled = 0.0, 0.0
    for text, gold in rows:
        start = text.find(gold)
        a, b = recover_phrase(text, start, start + len(gold))
        meant += jaccard(text[a:b], gold)
        s, e = shift_like_labels(text, a, b)
        relabelled += jaccard(text[s:e], gold)
    print(f"\nJaccard against the labels of the recovered meant phrase: {meant / len(rows):.4f}; "
          f"with the shift re-applied: {relabelled / len(rows):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
