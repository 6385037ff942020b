"""Mapping a generated answer back onto the tweet: the causal model's answer is always a substring.

A decoder-only model writes its answer token by token, so it can change case or spacing, drop a
character or paraphrase. The competition scores words of the tweet, so sentex answers with the
tweet's own text: the answer itself where it occurs, else the contiguous run of the tweet's words
closest to it in word Jaccard (the competition metric), on words with their punctuation stripped.
The case-insensitive search is :func:`~sentex.models.components.text_offsets.find_ignoring_case`, whose
spans are the tweet's own, also where lower-casing lengthens it.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from sentex.models.components.text_offsets import find_ignoring_case


@dataclass(frozen=True)
class Match:
    """Where a generated answer lands in its tweet.

    Attributes:
        phrase: the tweet's own substring given as the answer.
        exact: whether the generation was in the tweet as it stands (ignoring case and runs of
            whitespace); ``False`` when it had to be mapped to the closest run of words.
    """

    phrase: str
    exact: bool


def closest_substring(generated: str, text: str) -> Match:
    """The tweet's substring that answers for ``generated``.

    1. ``generated`` (whitespace-trimmed) occurs in ``text`` ignoring case: that occurrence, in the
       tweet's spelling (it may start or end inside a word, as the model wrote it).
    2. Its words occur in ``text`` with other spacing (``"so  happy"`` for ``"so happy"``): that run.
    3. Otherwise the contiguous run of the tweet's words with the highest word Jaccard to
       ``generated``, punctuation at the ends of words ignored (ties: the shortest, then the first);
       if no word is shared (or nothing was generated), the whole stripped tweet: without evidence,
       the answer that scores best on average.

    >>> closest_substring("SOOO sad", " Sooo SAD I will miss you")
    Match(phrase='Sooo SAD', exact=True)
    >>> closest_substring("so happy", "i am so   happy today")
    Match(phrase='so   happy', exact=True)
    >>> closest_substring("happy today!", "i am so happy today")
    Match(phrase='happy today', exact=False)
    >>> closest_substring("wonderful", " nothing in common")
    Match(phrase='nothing in common', exact=False)
    """
    cleaned = " ".join(generated.split())
    words = [m.span() for m in re.finditer(r"\S+", text)]  # the metric's words (models never import alignment)
    if cleaned:
        span = find_ignoring_case(text, cleaned)
        if span is not None:
            return Match(text[span[0] : span[1]], True)
        target = cleaned.lower().split()
        lowered = [text[a:b].lower() for a, b in words]
        for first in range(len(words) - len(target) + 1):
            if lowered[first : first + len(target)] == target:
                return Match(text[words[first][0] : words[first + len(target) - 1][1]], True)
    run = _closest_run([_bare(text[a:b]) for a, b in words], _bare(cleaned))
    if run is None:
        return Match(text.strip(), False)
    return Match(text[words[run[0]][0] : words[run[1]][1]], False)


def _closest_run(words: list[str], generated: str) -> tuple[int, int] | None:
    """``(first, last)`` indices of the run of ``words`` with the highest word Jaccard to ``generated``.

    Ties go to the shortest run, then the first; ``None`` when no word is shared. Scoring every run
    from scratch is O(W^3) in the number of words (minutes for a 5,000-character tweet of one-letter
    words); this is O(W x D), D the number of distinct words, and computes each score exactly as
    :func:`~sentex.metrics.jaccard` does.

    For one first word, a run's score changes only where a longer run takes in a word it did not hold
    yet, and of runs with the same score the shortest wins: so the only candidate last words are
    the next occurrence of each distinct word. Walking the first word from the end of the tweet to its
    start, the distinct words ordered by their next occurrence are kept as a list: the word at the
    new first position moves to its front.

    >>> _closest_run(["a", "b", "c", "b"], "b c d")
    (1, 2)
    >>> _closest_run(["a", "b"], "z") is None
    True
    """
    target = set(generated.lower().split())
    tokens = [w.lower() for w in words]  # each bare word is one metric word (see jaccard's lower().split())
    ahead: list[str] = []  # distinct words from position ``first`` on, by next occurrence
    next_at: dict[str, int] = {}
    best: tuple[float, int, int] | None = None  # (score, first - last, -first): the largest wins
    for first in range(len(tokens) - 1, -1, -1):
        token = tokens[first]
        if token in next_at:
            ahead.remove(token)
        ahead.insert(0, token)
        next_at[token] = first
        if token not in target:
            # a run starting at a word the answer lacks scores no better than the run after it, and is longer
            continue
        shared = 0
        for size, word in enumerate(ahead, start=1):
            if word not in target:
                continue  # a longer run with no new shared word: a lower score than the run before it
            shared += 1
            key = (shared / (size + len(target) - shared), first - next_at[word], -first)
            if best is None or key > best:
                best = key
            if shared == len(target):
                break  # every later run only adds words the answer lacks
    return None if best is None else (-best[2], -best[2] - best[1])


def _bare(phrase: str) -> str:
    """``phrase`` with punctuation stripped from both ends of each word (words of only punctuation kept).

    >>> _bare("Happy today!! :)")
    'happy today :)'
    """
    return " ".join(w.strip(string.punctuation) or w for w in phrase.lower().split())
