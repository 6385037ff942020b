"""Character offsets in a tweet for a phrase found without regard to case.

Shared by every family that maps an answer back onto the tweet (the causal and seq2seq codecs) and by
the demo app's highlighting, so it lives apart from any one family.
"""

from __future__ import annotations


def find_ignoring_case(text: str, phrase: str) -> tuple[int, int] | None:
    """Character span in ``text`` of the first occurrence of ``phrase``, ignoring case.

    The search runs on ``str.lower()`` of both, but the span is in ``text``'s own characters:
    lowering can lengthen a string (``"İ"`` becomes ``"i"`` + a combining dot), so an offset in
    the lowered tweet is not one in the tweet. Each lowered character is traced back to the
    character it came from; a match that starts or ends inside such a pair takes the whole character.

    >>> find_ignoring_case("İstanbul is GREAT", "great")
    (12, 17)
    >>> find_ignoring_case("so happy", "sad") is None, find_ignoring_case("so happy", "") is None
    (True, True)
    """
    needle = phrase.lower()
    start = text.lower().find(needle) if needle else -1
    if start < 0:
        return None
    # str.lower maps each character on its own except for the final sigma, which keeps its length,
    # so the lowered text is the characters' lowerings end to end.
    source = [i for i, char in enumerate(text) for _ in char.lower()]
    return source[start], source[start + len(needle) - 1] + 1
