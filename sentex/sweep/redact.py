"""Storage URLs with their credentials hidden, for everything ``sentex sweep`` prints or writes.

``--storage postgresql://user:password@host/db`` carries a database password; ``results.md`` and error
messages show where the study lives without it. The user name and everything else stay, so a reader can
still tell which database and account a sweep used.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

HIDDEN = "***"
# Query parameters that carry a secret (libpq and the MySQL drivers take ``?password=``).
SECRET_KEY = re.compile(r"pass(word|wd)?|pwd|secret|token", re.IGNORECASE)
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def split_userinfo(url: str) -> tuple[int, int] | None:
    """Where the password of ``url``'s ``user:password@`` part starts and ends, or ``None`` if it has none.

    The password ends at the last ``@`` before the query (so an unescaped ``@`` in it is hidden too), and
    the user name holds no ``/`` (SQLAlchemy's rule), so a file path with an ``@`` is no user part.
    """
    scheme = SCHEME.match(url)
    if scheme is None:
        return None
    start = scheme.end()
    first_at = url.find("@", start)
    if first_at < 0:
        return None
    query = url.find("?", first_at)
    at = url.rfind("@", start, query if query >= 0 else len(url))
    colon = url.find(":", start, at)
    if colon < 0 or "/" in url[start:colon]:
        return None  # a user name only (no secret), or a path such as sqlite:////data/a@b.db
    return colon + 1, at


def redact_url(url: str) -> str:
    """``url`` with its password (and secret query parameters) replaced by ``***``; otherwise unchanged.

    >>> redact_url("postgresql://sweeper:s3cr%40t@db.example.com:5432/optuna")
    'postgresql://sweeper:***@db.example.com:5432/optuna'
    >>> redact_url("postgresql://sweeper@db.example.com/optuna?password=hunter2&sslmode=require")
    'postgresql://sweeper@db.example.com/optuna?password=***&sslmode=require'
    >>> redact_url("sqlite:////home/me/sweeps/a@b/study.db")
    'sqlite:////home/me/sweeps/a@b/study.db'
    """
    span = split_userinfo(url)
    if span is not None:
        url = url[: span[0]] + HIDDEN + url[span[1] :]
    base, sep, query = url.partition("?")
    if not sep:
        return url
    params = [hide_param(param) for param in query.split("&")]
    return base + sep + "&".join(params)


def hide_param(param: str) -> str:
    """One ``key=value`` of a query string, its value hidden where the key names a secret."""
    key, sep, _ = param.partition("=")
    return f"{key}={HIDDEN}" if sep and SECRET_KEY.fullmatch(unquote(key)) else param


def url_secrets(url: str) -> list[str]:
    """The secrets of ``url`` as they may appear in a driver's message: as written, decoded and encoded."""
    found = []
    span = split_userinfo(url)
    if span is not None:
        found.append(url[span[0] : span[1]])
    _, _, query = url.partition("?")
    for param in query.split("&") if query else []:
        key, sep, value = param.partition("=")
        if sep and SECRET_KEY.fullmatch(unquote(key)):
            found.append(value)
    forms = {form for secret in found for form in (secret, unquote(secret), quote(unquote(secret), safe=""))}
    return sorted((form for form in forms if form), key=len, reverse=True)  # longest first: no partial leftovers


def redact_text(text: str, url: str) -> str:
    """``text`` (say, a database driver's error) with ``url`` and each of its secrets hidden.

    >>> redact_text("cannot log in as sweeper with pass word!", "postgresql://sweeper:pass%20word%21@h/db")
    'cannot log in as sweeper with ***'
    """
    text = text.replace(url, redact_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, HIDDEN)
    return text
