"""Preference pairs for DPO: ``(text, sentiment, chosen, rejected)``, built or read from JSONL.

``chosen`` is the gold phrase. ``rejected`` comes from one of these *kinds*:

* ``whole_tweet`` / ``grow`` — over-extraction (the whole tweet; gold plus 1-3 neighbouring words);
* ``cut`` — under-extraction (gold minus 1-2 words at an end);
* ``other_span`` — a wrong phrase: words of the tweet that do not overlap the gold;
* ``empty`` — the empty answer (a span model cannot express it; it filters it out);
* ``on_policy`` — the SFT model's own answer where its Jaccard to gold is below 1, the mistakes
  DPO should move away from (https://arxiv.org/abs/2305.18290, section 6: on-policy data matters);
* ``graded`` — pairs among the SFT model's own top-k answers and the gold, the one with the higher
  Jaccard to gold chosen (:func:`graded_pairs`), length-balanced over the whole set
  (:func:`balance_lengths`) so that "longer" or "shorter" alone never predicts "chosen".

Every generated ``rejected`` except ``empty`` is an exact substring of the tweet, so a span model
can score it. Building is seeded, de-duplicated, never yields ``chosen == rejected`` (compared as
lower-cased words), and fills each kind's share of ``count`` as far as the tweets allow.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sentex.data.tweets import SENTIMENTS
from sentex.errors import DataError
from sentex.io.atomic import atomic_path
from sentex.metrics import jaccard

log = logging.getLogger(__name__)

SYNTHETIC_KINDS = ("whole_tweet", "grow", "cut", "other_span", "empty")
MINED_KINDS = ("on_policy", "graded")  # need the SFT model's answers
KINDS = (*SYNTHETIC_KINDS, *MINED_KINDS)
FIELDS = ("text", "sentiment", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One preference: ``chosen`` is better than ``rejected`` as the phrase of ``text``."""

    textID: str
    text: str
    sentiment: str
    chosen: str
    rejected: str
    source: str = "user"


def normalize(phrase: str) -> str:
    """What "the same answer" means: the lower-cased words (the metric ignores case and spacing).

    >>> normalize("  Sooo  SAD ")
    'sooo sad'
    """
    return " ".join(phrase.lower().split())


# --- synthetic rejections --------------------------------------------------------------------
Words = list[tuple[int, int]]


def word_spans(text: str) -> Words:
    """Character ``(start, end)`` of every whitespace-separated word.

    >>> word_spans(" hi  there")
    [(1, 3), (5, 10)]
    """
    return [m.span() for m in re.finditer(r"\S+", text)]


def gold_words(words: Words, text: str, chosen: str) -> tuple[int, int] | None:
    """First and last word index overlapping the gold phrase, or ``None`` if it is not in ``text``."""
    start = text.find(chosen)
    if start < 0 or not chosen.strip():
        return None
    end = start + len(chosen)
    hits = [i for i, (a, b) in enumerate(words) if a < end and b > start]
    return (hits[0], hits[-1]) if hits else None


def _phrase(text: str, words: Words, first: int, last: int) -> str:
    return text[words[first][0] : words[last][1]]


def reject_whole_tweet(text: str, chosen: str, rng: random.Random) -> str | None:
    """The whole tweet (stripped): the over-extraction of a model that gives up."""
    return text.strip()


def reject_grow(text: str, chosen: str, rng: random.Random) -> str | None:
    """The gold phrase plus 1-3 words on its left and/or right."""
    words = word_spans(text)
    span = gold_words(words, text, chosen)
    if span is None:
        return None
    first, last = span
    room_left, room_right = first, len(words) - 1 - last
    if room_left + room_right == 0:
        return None
    left, right = rng.randint(0, min(3, room_left)), rng.randint(0, min(3, room_right))
    if left + right == 0:  # grow by at least one word, on a side that has one
        left, right = (1, 0) if room_left and (not room_right or rng.random() < 0.5) else (0, 1)
    return _phrase(text, words, first - left, last + right)


def reject_cut(text: str, chosen: str, rng: random.Random) -> str | None:
    """The gold phrase minus 1-2 words at its start or end (needs two or more gold words)."""
    words = word_spans(text)
    span = gold_words(words, text, chosen)
    if span is None or span[1] == span[0]:
        return None
    first, last = span
    cut = rng.randint(1, min(2, last - first))
    return _phrase(text, words, first + cut, last) if rng.random() < 0.5 else _phrase(text, words, first, last - cut)


def reject_other_span(text: str, chosen: str, rng: random.Random) -> str | None:
    """A run of the tweet's words, about as long as the gold, that shares no word position with it."""
    words = word_spans(text)
    span = gold_words(words, text, chosen)
    if span is None:
        return None
    outside = [(0, span[0] - 1), (span[1] + 1, len(words) - 1)]
    outside = [(a, b) for a, b in outside if b >= a]
    if not outside:
        return None
    a, b = rng.choice(outside)
    length = rng.randint(1, min(b - a + 1, span[1] - span[0] + 2))
    first = rng.randint(a, b - length + 1)
    return _phrase(text, words, first, first + length - 1)


def reject_empty(text: str, chosen: str, rng: random.Random) -> str | None:
    """The empty answer."""
    return ""


GENERATORS: dict[str, Callable[[str, str, random.Random], str | None]] = {
    "whole_tweet": reject_whole_tweet,
    "grow": reject_grow,
    "cut": reject_cut,
    "other_span": reject_other_span,
    "empty": reject_empty,
}


# --- building --------------------------------------------------------------------------------
def quotas(mix: dict[str, float], count: int) -> dict[str, int]:
    """Split ``count`` pairs over kinds in proportion to ``mix`` (largest remainders, then mix order, get the rest).

    >>> quotas({"grow": 1, "cut": 1, "whole_tweet": 2}, 10)
    {'grow': 3, 'cut': 2, 'whole_tweet': 5}
    """
    unknown = sorted(set(mix) - set(KINDS))
    if unknown:
        raise DataError(f"pair mix: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise DataError(f"pair mix: weights must be >= 0 and not all 0, got {mix}")
    total = sum(mix.values())
    exact = {k: count * w / total for k, w in mix.items()}
    out = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(mix, key=lambda k: (-(exact[k] - out[k]), list(mix).index(k)))
    for k in by_remainder[: count - sum(out.values())]:
        out[k] += 1
    return out


def is_valid(pair: PreferencePair) -> bool:
    """A pair is usable when the two answers differ as word sequences and ``chosen`` has words."""
    return bool(normalize(pair.chosen)) and normalize(pair.chosen) != normalize(pair.rejected)


def mine_on_policy(rows: Iterable[dict[str, str]], predictions: Sequence[str]) -> list[PreferencePair]:
    """The model's own imperfect answers (Jaccard < 1 to gold) as ``rejected``, one per row at most.

    >>> rows = [{"textID": "1", "text": "so happy now", "selected_text": "happy", "sentiment": "positive"}]
    >>> [p.rejected for p in mine_on_policy(rows * 2, ["so happy now", "happy"])]
    ['so happy now']
    """
    out = []
    for row, pred in zip(rows, predictions, strict=True):
        if jaccard(pred, row["selected_text"]) < 1.0:
            out.append(_pair(row, pred, "on_policy"))
    return out


def graded_pairs(
    row: dict[str, str], candidates: Sequence[str], margin: float = 0.1, per_tweet: int = 4, seed: int = 0
) -> list[PreferencePair]:
    """Pairs among ``candidates`` and the gold phrase, the higher Jaccard to gold chosen, gap ≥ ``margin``.

    Args:
        row: the labelled tweet.
        candidates: the model's own answers for it (e.g. its top-k spans).
        margin: smallest Jaccard difference between chosen and rejected.
        per_tweet: at most this many pairs from one tweet (drawn at random, seeded).
        seed: seed of that draw.

    >>> row = {"textID": "t", "text": "so happy today yay", "selected_text": "so happy", "sentiment": "positive"}
    >>> pairs = graded_pairs(row, ["so happy today", "happy", "yay"], per_tweet=10)
    >>> [(p.chosen, p.rejected) for p in pairs][:3]
    [('so happy', 'so happy today'), ('so happy', 'happy'), ('so happy', 'yay')]
    >>> all(normalize(p.chosen) != normalize(p.rejected) for p in pairs)
    True
    """
    gold = row["selected_text"]
    pool: dict[str, str] = {}
    for answer in (gold, *candidates):
        if answer.strip():
            pool.setdefault(normalize(answer), answer)
    scored = sorted(((jaccard(a, gold), a) for a in pool.values()), key=lambda x: -x[0])
    pairs = [
        _pair(row, rejected, "graded", chosen=chosen)
        for i, (hi, chosen) in enumerate(scored)
        for lo, rejected in scored[i + 1 :]
        if hi - lo >= margin
    ]
    if len(pairs) > per_tweet:
        keep = sorted(random.Random(f"{seed}:{row['textID']}").sample(range(len(pairs)), per_tweet))
        pairs = [pairs[i] for i in keep]
    return pairs


def length_gap(pair: PreferencePair) -> int:
    """Words of ``chosen`` minus words of ``rejected``.

    >>> length_gap(PreferencePair("t", "a b c", "positive", "a b", "c"))
    1
    """
    return len(pair.chosen.split()) - len(pair.rejected.split())


def balance_lengths(pairs: Sequence[PreferencePair], seed: int = 0) -> list[PreferencePair]:
    """Keep as many chosen-longer as chosen-shorter pairs (a seeded sample of the larger side) and all ties.

    >>> mk = lambda c, r: PreferencePair("t", "a b c d", "positive", c, r)
    >>> out = balance_lengths([mk("a b", "a"), mk("a b c", "a"), mk("a", "a b"), mk("a", "b")])
    >>> sorted((length_gap(p) > 0) - (length_gap(p) < 0) for p in out)  # one longer, one tie, one shorter
    [-1, 0, 1]
    """
    gaps = [length_gap(p) for p in pairs]
    longer = [i for i, g in enumerate(gaps) if g > 0]
    shorter = [i for i, g in enumerate(gaps) if g < 0]
    n = min(len(longer), len(shorter))
    rng = random.Random(seed)
    keep = set(rng.sample(longer, n)) | set(rng.sample(shorter, n))
    return [p for i, p in enumerate(pairs) if gaps[i] == 0 or i in keep]


def _pair(row: dict[str, str], rejected: str, source: str, chosen: str | None = None) -> PreferencePair:
    chosen = row["selected_text"] if chosen is None else chosen
    return PreferencePair(row["textID"], row["text"], row["sentiment"], chosen, rejected, source)


def build_pairs(
    rows: Sequence[dict[str, str]],
    mix: dict[str, float],
    count: int,
    seed: int = 0,
    mined: dict[str, Sequence[PreferencePair]] | None = None,
    accept: Callable[[PreferencePair], bool] | None = None,
) -> list[PreferencePair]:
    """Draw up to ``count`` distinct pairs, each kind filling its share of the mix.

    Args:
        rows: labelled tweets (``textID``, ``text``, ``selected_text``, ``sentiment``).
        mix: kind → weight (kinds: :data:`KINDS`).
        count: pairs wanted in total; a kind that runs out of usable rows leaves its share unfilled.
        seed: seed of row order and of the random edits.
        mined: kind → pairs made from the SFT model's answers (:func:`mine_on_policy`,
            :func:`graded_pairs`), to draw those kinds' shares from.
        accept: extra filter, e.g. a span model's "both answers are spans of the tweet".

    Returns:
        The pairs, shuffled; never ``chosen == rejected``, never the same (text, chosen, rejected) twice.
    """
    rng = random.Random(seed)
    want = quotas(mix, count)
    seen: set[tuple[str, str, str]] = set()
    out: list[PreferencePair] = []
    for kind, quota in want.items():
        if quota == 0:
            continue
        if kind in MINED_KINDS:
            pool = list((mined or {}).get(kind, ()))
            candidates = iter(rng.sample(pool, len(pool)))
        else:
            candidates = _synthetic(rows, kind, rng)
        taken = 0
        for pair in candidates:
            key = (pair.text, normalize(pair.chosen), normalize(pair.rejected))
            if key in seen or not is_valid(pair) or (accept is not None and not accept(pair)):
                continue
            seen.add(key)
            out.append(pair)
            taken += 1
            if taken == quota:
                break
        if taken < quota:
            log.warning("preference pairs: only %d of %d '%s' pairs could be built", taken, quota, kind)
    rng.shuffle(out)
    return out


def _synthetic(rows: Sequence[dict[str, str]], kind: str, rng: random.Random) -> Iterable[PreferencePair]:
    make = GENERATORS[kind]
    for i in rng.sample(range(len(rows)), len(rows)):
        rejected = make(rows[i]["text"], rows[i]["selected_text"], rng)
        if rejected is not None:
            yield _pair(rows[i], rejected, kind)


# --- JSONL -----------------------------------------------------------------------------------
def write_pairs(path: str | Path, pairs: Iterable[PreferencePair]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Read pairs from JSONL: ``text``, ``sentiment``, ``chosen``, ``rejected`` (strings) per line;
    ``textID`` and ``source`` are optional.

    Raises:
        DataError: naming the file, line and field of the first problem.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: pairs file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read pairs file: {err}") from None
    pairs = [_parse_line(path, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not pairs:
        raise DataError(f"{path}: no preference pairs in file")
    return pairs


def _parse_line(path: str | Path, n: int, line: str) -> PreferencePair:
    where = f"{path}:{n}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object")
    for name in FIELDS:
        if not isinstance(obj.get(name), str):
            raise DataError(f"{where}: field '{name}' is missing or not a string")
    if obj["sentiment"] not in SENTIMENTS:
        raise DataError(f"{where}: field 'sentiment': unknown value {obj['sentiment']!r} (expected {SENTIMENTS})")
    pair = PreferencePair(
        str(obj.get("textID", f"line{n}")), obj["text"], obj["sentiment"], obj["chosen"], obj["rejected"],
        str(obj.get("source", "user")),
    )  # fmt: skip
    if not is_valid(pair):
        raise DataError(f"{where}: field 'rejected' is the same answer as 'chosen' (or 'chosen' is empty)")
    return pair
