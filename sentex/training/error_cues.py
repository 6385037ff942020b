"""Error analysis of a classifier: tag each text with simple textual cues, then compare error rates per tag.

A tag says a text *has* a cue, not that the cue caused an error: the table shows whether rows with
a cue are misclassified more often than rows in general. The cues, matched on the lower-cased text:

* ``negation``: a negator word: no, not, never, nothing, nobody, none, nowhere, neither, nor,
  cannot, without, or a ``n't`` contraction, with a straight, curly or backtick apostrophe or
  without one, as tweets write them (don`t, dont, cant, wont, isnt, didnt, ...);
* ``contrast``: but, however, although, though, yet, except, whereas, nevertheless, nonetheless,
  otherwise, instead;
* ``intensifier``: very, really, so, too, extremely, totally, absolutely, completely, super,
  incredibly, utterly, highly, such, most, quite; or a word with a letter stretched to 3+
  ("sooo", "loooove"); or "!!";
* ``question``: a question mark;
* ``emoji``: an emoji code point (the pictographic blocks, dingbats, flags) or an ASCII
  emoticon (``:)``, ``:-(``, ``:D``, ``;)``, ``:P``, ``<3``, ``xD``, ...);
* ``sarcasm``: a marker phrase (yeah right, as if, oh great, oh joy, thanks a lot, just what i
  needed, big surprise, what a surprise, #sarcasm, /s) or scare quotes: one to three words inside
  double quotes (straight or curly).

``none`` is a row with no cue.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

CUES = ("negation", "contrast", "intensifier", "question", "emoji", "sarcasm")

_NEGATORS = r"no|not|never|nothing|nobody|none|nowhere|neither|nor|cannot|without"
_APOSTROPHE = "['`\u2019]"  # the Kaggle tweets write "won`t"; phones write a curly one
_CONTRACTED = rf"(?:do|does|did|is|are|was|were|has|have|had|ca|wo|would|could|should|must|need|ai)n{_APOSTROPHE}?t"
_CONTRAST = r"but|however|although|though|yet|except|whereas|nevertheless|nonetheless|otherwise|instead"
_INTENSIFIERS = (
    r"very|really|so|too|extremely|totally|absolutely|completely|super|incredibly|utterly|highly|such|most|quite"
)
_EMOJI = "[\U0001f1e6-\U0001f1ff\U0001f300-\U0001faff\u2600-\u27bf\u2b50\u2764]"
_EMOTICON = r"(?:^|\s)(?:[:;=8][-o*']?[)(\]\[dDpP/\\|3*]+|<3+|x[dD]+|[)(][-o*']?[:;=])(?=\s|$|[.!?,])"
_SARCASM = (
    r"yeah,? right|as if|oh,? great|oh,? joy|thanks a lot|just what i needed|big surprise|what a surprise"
    r"|#sarcasm|(?:^|\s)/s\b"
)

PATTERNS: dict[str, re.Pattern[str]] = {
    "negation": re.compile(rf"\b(?:{_NEGATORS}|{_CONTRACTED})\b|n{_APOSTROPHE}t\b"),
    "contrast": re.compile(rf"\b(?:{_CONTRAST})\b"),
    "intensifier": re.compile(rf"\b(?:{_INTENSIFIERS})\b|([a-z])\1\1|!!"),
    "question": re.compile(r"\?"),
    "emoji": re.compile(f"{_EMOJI}|{_EMOTICON}"),
    "sarcasm": re.compile(rf"{_SARCASM}|[\"“”]\s*[^\s\"“”]+(?:\s+[^\s\"“”]+){{0,2}}\s*[\"“”]"),
}


def text_cues(text: str) -> list[str]:
    """The cues of :data:`CUES` found in ``text``, in that order.

    >>> text_cues("I don't like it, but it's ok")
    ['negation', 'contrast']
    >>> text_cues("sooo good!! :)")
    ['intensifier', 'emoji']
    >>> text_cues('yeah right, "great" service?')
    ['question', 'sarcasm']
    >>> text_cues("dont care 😀"), text_cues("won`t sleep"), text_cues("a plain sentence")
    (['negation', 'emoji'], ['negation'], [])
    """
    lowered = text.lower()
    return [name for name in CUES if PATTERNS[name].search(lowered)]


def cue_table(rows: Iterable[dict[str, Any]]) -> str:
    """A Markdown table of error rate per cue from report rows with ``cues`` (``;``-joined) and ``correct``.

    Per cue (and ``none``, then ``all rows``): rows with it, errors among them, their error rate, and
    the rate relative to the overall rate (``x1.50`` = half as many errors again as average).

    >>> rows = [{"cues": "negation", "correct": False}, {"cues": "", "correct": True},
    ...         {"cues": "negation;question", "correct": True}, {"cues": "", "correct": True}]
    >>> print(cue_table(rows))
    | cue | rows | errors | error rate | vs all rows |
    |---|---:|---:|---:|---:|
    | negation | 2 | 1 | 0.500 | x2.00 |
    | question | 1 | 0 | 0.000 | x0.00 |
    | none | 2 | 0 | 0.000 | x0.00 |
    | all rows | 4 | 1 | 0.250 | x1.00 |
    """
    rows = list(rows)
    overall_errors = sum(not _truthy(r["correct"]) for r in rows)
    overall = overall_errors / len(rows) if rows else 0.0
    lines = ["| cue | rows | errors | error rate | vs all rows |", "|---|---:|---:|---:|---:|"]
    for name in (*CUES, "none"):
        hit = [r for r in rows if (name in _split(r["cues"])) or (name == "none" and not _split(r["cues"]))]
        if hit:
            lines.append(_rate_line(name, hit, overall))
    lines.append(_rate_line("all rows", rows, overall) if rows else "| all rows | 0 | 0 | - | - |")
    return "\n".join(lines)


def _rate_line(name: str, rows: Sequence[dict[str, Any]], overall: float) -> str:
    errors = sum(not _truthy(r["correct"]) for r in rows)
    rate = errors / len(rows)
    relative = f"x{rate / overall:.2f}" if overall else "-"
    return f"| {name} | {len(rows)} | {errors} | {rate:.3f} | {relative} |"


def _split(cues: str | Sequence[str]) -> list[str]:
    return [c for c in (cues.split(";") if isinstance(cues, str) else cues) if c]


def _truthy(value: Any) -> bool:
    """A ``correct`` field as written to / read from CSV (``True``/``true``/``1``) or a bool."""
    return value is True or str(value).strip().lower() in ("true", "1")
