"""The Kaggle tweet data set's "extra-space" label shift, as pure functions on character spans.

Specific to the Kaggle "Tweet Sentiment Extraction" data (and data labelled the same way); both
uses are options that are off by default.

In that data, a ``selected_text`` that follows *extra* whitespace in its tweet (leading spaces, or
runs of more than one space) is not the phrase the annotator meant: it starts ``n`` characters too
early, ``n`` being the number of extra spaces before the phrase, and ends ``n - 2`` characters too
early (``n - 1`` when the phrase ends in punctuation), so ``" hey mia!  totally adore your music."``
with the meant phrase ``adore`` is labelled ``y adore``. The labels were evidently cut from the raw
tweet with character indices counted on a whitespace-normalised copy; the 5th, 7th, 10th and
21st-place write-ups of the competition describe the effect. The rule here was fitted on the
training file by counting, over every rule variant tried, how many non-neutral labels some
word-aligned phrase reproduces exactly (``bench/label_noise.py`` prints that table).

A word-piece model cannot learn the shift (its tokenizer drops whitespace), so sentex can
(1) train on the phrase the annotator meant (:func:`recover_phrase`), and (2) re-apply the
shift to a predicted phrase (:func:`shift_like_labels`) so its answers follow the labels' convention.
"""

from __future__ import annotations

import re

MIN_EXTRA = 2  # one extra space (a double space, or a single leading space) leaves labels unshifted
_WORD = re.compile(r"\S+")


def extra_spaces_before(text: str, index: int) -> int:
    """Whitespace characters before ``index`` that are leading or follow another whitespace character.

    >>> extra_spaces_before("a b", 2), extra_spaces_before("  a   b", 6), extra_spaces_before(" a", 1)
    (0, 4, 1)
    """
    return sum(1 for k in range(min(index, len(text))) if text[k].isspace() and (k == 0 or text[k - 1].isspace()))


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def shift_span(text: str, start: int, end: int, grow: int, min_extra: int = MIN_EXTRA) -> tuple[int, int]:
    """Move ``[start, end)`` left by ``n`` extra spaces before it at the start and ``n - grow`` at the end, then strip.

    Unchanged when ``n < min_extra``, and when the shift would leave nothing.

    >>> text = "a   bc de"  # n = 2 extra spaces before "de" (7, 9): it becomes "c de"
    >>> shift_span(text, 7, 9, grow=2), text[5:9]
    ((5, 9), 'c de')
    """
    n = extra_spaces_before(text, start)
    if n < min_extra or end <= start:
        return start, end
    new_start, new_end = _strip(text, max(start - n, 0), min(max(end - n + grow, 0), len(text)))
    return (new_start, new_end) if new_end > new_start else (start, end)


def shift_like_labels(text: str, start: int, end: int) -> tuple[int, int]:
    """The character span the data set's labels give for the meant phrase ``text[start:end]``.

    Unchanged with fewer than two extra spaces before the phrase; otherwise moved left by ``n``
    extra spaces at the start and ``n - 2`` (``n - 1`` after a final punctuation mark) at the end,
    then stripped of whitespace. A shift that would leave nothing keeps the phrase as it is.

    >>> tweet = "is back home now      gonna miss every one"
    >>> s, e = shift_like_labels(tweet, tweet.find("miss"), tweet.find("miss") + 4)
    >>> tweet[s:e]
    'onna m'
    >>> tweet = " hey mia!  totally adore your music."
    >>> s, e = shift_like_labels(tweet, tweet.find("adore"), tweet.find("adore") + 5)
    >>> tweet[s:e]
    'y adore'
    >>> tweet = "so happy today"  # no extra spaces: no shift
    >>> shift_like_labels(tweet, 3, 8)
    (3, 8)
    """
    grow = 1 if end > start and not text[end - 1].isalnum() else 2
    return shift_span(text, start, end, grow)


def recover_phrase(text: str, start: int, end: int) -> tuple[int, int]:
    """The meant phrase of a label ``text[start:end]``: the word-aligned span whose shift reproduces it.

    A label that already starts and ends on word boundaries is kept; so is one no word-aligned
    phrase reproduces (other annotation noise). Among several candidates the shortest wins.

    >>> tweet = " hey mia!  totally adore your music."
    >>> s, e = recover_phrase(tweet, tweet.find("y adore"), tweet.find("y adore") + 7)
    >>> tweet[s:e]
    'adore'
    >>> tweet = "  Yes, you should go see Star Trek!  It`s sooooo much fun!"
    >>> s, e = recover_phrase(tweet, tweet.find("ch fu"), tweet.find("ch fu") + 5)
    >>> tweet[s:e]
    'fun!'
    >>> recover_phrase("so happy today", 3, 8)  # word-aligned: kept
    (3, 8)
    """
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts, ends = {a for a, _ in words}, {b for _, b in words}
    if start in starts and end in ends:
        return start, end
    best: tuple[int, int] | None = None
    # The meant phrase starts at most a few characters after the label (the shift is the extra
    # spaces before it, rarely more than 6) and ends near the label's end.
    for a, _ in words:
        if not start < a <= start + extra_spaces_before(text, a):
            continue
        for _, b in words:
            if b > a and shift_like_labels(text, a, b) == (start, end) and (best is None or b - a < best[1] - best[0]):
                best = (a, b)
    return best or (start, end)
