"""Mapping a generated answer back onto the tweet: the causal model's answer is always a substring.

A decoder-only model writes its answer token by token, so it can change case or spacing, drop a
character or paraphrase. The competition scores words of the tweet, so sentex answers with the
tweet's own text: the answer itself where it occurs, else the contiguous run of the tweet's words
closest to it in word Jaccard (the competition metric), on words with their punctuation stripped.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from sentex.metrics import jaccard


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
        start = text.lower().find(cleaned.lower())
        if start >= 0:
            return Match(text[start : start + len(cleaned)], True)
        target = cleaned.lower().split()
        lowered = [text[a:b].lower() for a, b in words]
        for first in range(len(words) - len(target) + 1):
            if lowered[first : first + len(target)] == target:
                return Match(text[words[first][0] : words[first + len(target) - 1][1]], True)
    bare_generated = _bare(cleaned)
    bare_words = [_bare(text[a:b]) for a, b in words]
    best, best_key = text.strip(), (0.0, 0, 0)
    for first in range(len(words)):
        for last in range(first, len(words)):
            key = (jaccard(" ".join(bare_words[first : last + 1]), bare_generated), first - last, -first)
            if key[0] > 0 and key > best_key:
                best, best_key = text[words[first][0] : words[last][1]], key
    return Match(best, False)


def _bare(phrase: str) -> str:
    """``phrase`` with punctuation stripped from both ends of each word (words of only punctuation kept).

    >>> _bare("Happy today!! :)")
    'happy today :)'
    """
    return " ".join(w.strip(string.punctuation) or w for w in phrase.lower().split())
