"""What ``sentex serve`` accepts: a ``POST /predict`` body checked into rows, before LitServe queues it.

The checks run twice: in the HTTP process (:class:`RequestGate`, which answers a bad request with a 4xx and a
one-line ``{"error"}`` so it never reaches a model worker, where LitServe would fail the whole batch with it) and
in the worker (``decode_request``, which cannot fail then). The gate reads a body only up to the size limit
(:attr:`Limits.max_body_bytes`): a body over it is refused with a 413 and never stored; up to
:data:`DRAIN_BYTES` of it are read and dropped first, so that a client still sending can read the answer, and a
longer ``Content-Length`` is refused unread (the connection is cut). It refuses JSON nested too deeply to
parse with a 400, and hands LitServe the checked rows alone, so nothing a client adds beside them reaches a
worker. What an item must hold depends on the model served (:class:`Schema`): an extractor takes
``{"text", "sentiment"}``, where the sentiment may be left to the server's sentiment model if it has one; a
classifier takes ``{"text"}``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from sentex.data.tweets import SENTIMENTS
from sentex.deploy.sentiment import missing_sentiment

try:
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import JSONResponse
except ImportError:  # sentex serve says how to install LitServe; the module stays importable (doctests)
    StarletteHTTPException = Exception  # type: ignore[assignment,misc]

JSON_TYPES = {"dict": "an object", "list": "a list", "str": "a string", "NoneType": "null", "bool": "a boolean"}
TASKS = ("extract", "classify")
# Appended where an item lacks a sentiment and nothing can predict it.
NO_SENTIMENT_MODEL = "this server has no sentiment model to predict it; start it with --sentiment_model"


@dataclass(frozen=True)
class Limits:
    """What one request may hold.

    Attributes:
        max_text_chars: characters per ``text``.
        max_items: items per request (a single object counts as one).
    """

    max_text_chars: int = 5000
    max_items: int = 64

    @property
    def max_body_bytes(self) -> int:
        """The largest body that can hold ``max_items`` texts of ``max_text_chars`` (6 bytes a ``\\uXXXX`` char)."""
        return self.max_items * (6 * self.max_text_chars + 256) + 1024


@dataclass(frozen=True)
class Schema:
    """What an item holds for the model being served.

    Attributes:
        task: ``extract`` (``{"text", "sentiment"}`` → the sentiment phrase) or ``classify`` (``{"text"}`` → a label).
        auto_sentiment: (extract) the server has a sentiment model, so an item's ``sentiment`` may be absent,
            ``null``, ``""`` or ``"auto"``: the model predicts it.
    """

    task: str = "extract"
    auto_sentiment: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")

    @property
    def fields(self) -> str:
        """The fields an item must have, as an error message names them."""
        return "text" if self.task == "classify" else "text and sentiment"


# The schema of a server without a sentiment model: text and sentiment, both required.
EXTRACT = Schema()


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error message."""
    return JSON_TYPES.get(type(value).__name__, "a number" if isinstance(value, (int, float)) else "?")


def shown(value: Any) -> str:
    """A sentiment as an error message quotes it: a string's repr (cut at 40 characters) or ``null``."""
    if not isinstance(value, str):
        return json_type(value) if value is not None else "null"
    return repr(value if len(value) <= 40 else value[:40] + "...")


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body.

    >>> parse_json(b'{"text": "hi"')
    Traceback (most recent call last):
    ...
    sentex.deploy.serve_requests.RequestError: malformed JSON: Expecting ',' delimiter at line 1 column 14
    >>> parse_json(b"[" * 100_000)
    Traceback (most recent call last):
    ...
    sentex.deploy.serve_requests.RequestError: JSON nested too deeply: an item is an object of strings
    """
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "malformed JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise RequestError(400, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:  # ``[[[[...`` deeper than the interpreter's recursion limit (about 1,000 levels)
        raise RequestError(400, "JSON nested too deeply: an item is an object of strings") from None


def rows_of(payload: Any, limits: Limits, schema: Schema = EXTRACT) -> tuple[list[dict[str, Any]], bool]:
    """The rows of a request's JSON, and whether it was a single item (not a list).

    >>> rows_of({"text": "so happy", "sentiment": "positive", "id": 7}, Limits())
    ([{'text': 'so happy', 'sentiment': 'positive'}], True)
    >>> rows_of([{"text": "ok", "sentiment": "glad"}], Limits())
    Traceback (most recent call last):
    ...
    sentex.deploy.serve_requests.RequestError: item 0: sentiment 'glad' is not one of negative, neutral, positive
    >>> rows_of([{"text": "ok"}, {"text": "sad", "sentiment": "auto"}], Limits(), Schema(auto_sentiment=True))
    ([{'text': 'ok', 'sentiment': None}, {'text': 'sad', 'sentiment': None}], False)
    >>> rows_of({"text": "ok", "sentiment": "glad"}, Limits(), Schema("classify"))
    ([{'text': 'ok'}], True)
    """
    single = isinstance(payload, dict)
    items = [payload] if single else payload
    if not isinstance(items, list):
        raise RequestError(422, f"expected an object with {schema.fields}, or a list; got {json_type(items)}")
    if not items:
        raise RequestError(422, "empty list: send at least one item")
    if len(items) > limits.max_items:
        raise RequestError(413, f"{len(items)} items; the limit is {limits.max_items} per request (--max_items)")
    return [check_item(item, "" if single else f"item {i}: ", limits, schema) for i, item in enumerate(items)], single


def check_item(item: Any, where: str, limits: Limits, schema: Schema = EXTRACT) -> dict[str, Any]:
    """One item as a row (other keys are ignored); ``where`` prefixes the error.

    A row is ``{"text"}`` for a classifier, ``{"text", "sentiment"}`` for an extractor, where the sentiment is
    ``None`` when the sentiment model is to predict it.
    """
    if not isinstance(item, dict):
        raise RequestError(422, f"{where}expected an object with {schema.fields}, got {json_type(item)}")
    if "text" not in item:
        raise RequestError(422, f"{where}missing 'text'")
    text = item["text"]
    if not isinstance(text, str):
        raise RequestError(422, f"{where}text must be a string, got {json_type(text)}")
    if len(text) > limits.max_text_chars:
        raise RequestError(
            413, f"{where}text is {len(text)} characters; the limit is {limits.max_text_chars} (--max_text_chars)"
        )
    if schema.task == "classify":
        return {"text": text}
    return {"text": text, "sentiment": check_sentiment(item, where, schema.auto_sentiment)}


def check_sentiment(item: dict[str, Any], where: str, auto: bool) -> str | None:
    """An item's sentiment, or ``None`` where the server's sentiment model is to predict it (``auto``)."""
    value = item.get("sentiment")
    if value is not None and not isinstance(value, str):
        kind = "a string or null" if auto else "a string"
        raise RequestError(422, f"{where}sentiment must be {kind}, got {json_type(value)}")
    if missing_sentiment(value):
        if auto:
            return None
        if "sentiment" not in item:
            raise RequestError(422, f"{where}missing 'sentiment' ({NO_SENTIMENT_MODEL})")
        raise RequestError(
            422, f"{where}sentiment {shown(value)} is not one of {', '.join(SENTIMENTS)} ({NO_SENTIMENT_MODEL})"
        )
    if value not in SENTIMENTS:
        hint = ' (or "auto", or none, for the sentiment model\'s)' if auto else ""
        raise RequestError(422, f"{where}sentiment {shown(value)} is not one of {', '.join(SENTIMENTS)}{hint}")
    return value


def answer(row: dict[str, Any], phrase: str, start: int | None, end: int | None) -> dict[str, Any]:
    """The answer object of an extractor's row: its phrase and the phrase's character offsets in the text.

    >>> answer({"text": "so so happy", "sentiment": "positive"}, "so", 3, 5)
    {'text': 'so so happy', 'sentiment': 'positive', 'selected_text': 'so', 'start': 3, 'end': 5}
    """
    return {**row, "selected_text": phrase, "start": start, "end": end}


def class_answer(text: str, label: str, labels: list[str], probs: list[float]) -> dict[str, Any]:
    """The answer object of a classifier's row: its label and every label's probability.

    >>> class_answer("so happy", "positive", ["negative", "positive"], [0.25, 0.75])
    {'text': 'so happy', 'label': 'positive', 'probs': {'negative': 0.25, 'positive': 0.75}}
    """
    return {"text": text, "label": label, "probs": dict(zip(labels, map(float, probs)))}


# --- the HTTP side: checks before LitServe queues a request ------------------------------------
def declared_length(scope: dict) -> int | None:
    """The request's ``Content-Length``, or ``None`` (a chunked body declares none).

    >>> declared_length({"headers": [(b"host", b"x"), (b"content-length", b"17")]})
    17
    >>> declared_length({"headers": [(b"transfer-encoding", b"chunked")]}) is None
    True
    """
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn refuses a malformed length before the app sees the request
    return None


# An over-limit body is read and dropped up to this many bytes before the 413, so that a client still sending it
# (urllib, requests) can read the answer: answered unread, the connection closes under the sender, which then
# sees a broken pipe instead of the 413 (seen with a 1 MB body against a 17 kB limit). Dropping costs the HTTP
# process no memory and never holds a model worker; a longer declared body is cut off unread.
DRAIN_BYTES = 8 * 1024 * 1024


DRAIN_SECONDS = 2.0  # ... and for at most this long: a client that stops sending gets its 413 then


async def drain(receive: Any, budget: int) -> None:
    """Read and drop what the client still sends of its body: up to ``budget`` bytes, for :data:`DRAIN_SECONDS`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    dropped = 0
    while dropped <= budget:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            return
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        dropped += len(message.get("body", b""))


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The request body, read message by message; ``None`` if the client went away.

    Raises:
        RequestError: 413 as soon as more than ``limit`` bytes arrived; the rest is dropped up to
            :data:`DRAIN_BYTES`, never stored.
    """
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            if more:
                await drain(receive, DRAIN_BYTES - len(body))
            raise RequestError(413, f"request body is over {limit} bytes (the limit); it was not read further")
    return bytes(body)


def checked_body(rows: list[dict[str, Any]], single: bool) -> bytes:
    """The body LitServe gets: the checked rows only, as JSON.

    Whatever else the client sent (other keys, however deeply nested) stays out of LitServe, which would
    parse it again and pickle it to a worker; pickle gives up on a few hundred nesting levels (a 500).

    >>> checked_body([{"text": "ok", "sentiment": None}], True)
    b'{"text": "ok", "sentiment": null}'
    """
    return json.dumps(rows[0] if single else rows).encode()


class RequestGate:
    """ASGI middleware in front of ``POST <path>``: the body is read up to the size limit (a larger
    ``Content-Length`` is refused before anything is read), checked, and handed on as its checked rows,
    or refused with a 4xx and a one-line ``{"error"}``."""

    def __init__(self, app: Any, limits: Limits, schema: Schema = EXTRACT, path: str = "/predict") -> None:
        self.app, self.limits, self.schema, self.path = app, limits, schema, path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        try:
            declared = declared_length(scope)
            if declared is not None and declared > limit:
                if declared <= DRAIN_BYTES:
                    await drain(receive, declared)
                raise RequestError(413, f"request body is {declared} bytes; the limit is {limit}")
            body = await read_body(receive, limit)
            if body is None:
                return
            checked = checked_body(*rows_of(parse_json(body), self.limits, self.schema))
        except RequestError as err:
            await JSONResponse({"error": str(err)}, err.status)(scope, receive, send)
            return
        # The body is JSON whatever the client said (``curl -d`` says form data, which LitServe would parse as such).
        replaced = (b"content-type", b"content-length", b"transfer-encoding")  # they described the client's body
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in replaced]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(checked)).encode())]
        scope = {**scope, "headers": headers}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": checked, "more_body": False}

        await self.app(scope, replay, send)


async def error_json(request: Any, exc: StarletteHTTPException) -> JSONResponse:
    """LitServe's and FastAPI's HTTP errors as ``{"error": "<one line>"}`` (instead of ``{"detail": ...}``)."""
    return JSONResponse({"error": str(exc.detail).splitlines()[0] if exc.detail else ""}, exc.status_code)
