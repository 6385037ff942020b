"""``sentex serve``: an HTTP model server on LitServe (FastAPI and uvicorn underneath)::

    sentex serve --model models/sentex-int8 --port 8000
    curl -s localhost:8000/predict -d '{"text": "my phone died again, worst day", "sentiment": "negative"}'

``POST /predict`` takes one item ``{"text", "sentiment"}`` or a list of them and answers one object
``{"text", "sentiment", "selected_text", "start", "end"}`` or a list of them, in order; ``text[start:end]`` is
``selected_text``: where a span model decoded it, a seq2seq answer's first occurrence, or ``start``/``end``
are ``null`` where a generated answer is no substring of the tweet.

Batching: an HTTP request, whatever number of items it holds, is one unit of LitServe's dynamic batching.
``predict`` gets up to ``--max_batch_size`` requests (waiting at most ``--batch_timeout`` s for more once the
first arrived), runs all their rows through the model's ``InferencePipeline`` in length-sorted chunks of
``max(16, --max_batch_size)`` rows (as ``Extractor.extract`` does) and splits the answers back per request.

Errors: LitServe fails every request of a batch when one of them raises, so bad requests never reach a worker:
a middleware in the HTTP process checks each one (size, JSON, fields) and answers ``{"error": "<one line>"}``
with 400 (malformed JSON), 413 (over a limit) or 422 (wrong shape, missing field, unknown sentiment). The model
is loaded once before anything starts, so a bad ``--model`` ends ``sentex serve`` with the one-line error of
``sentex predict``; ``/health`` answers 200 once every worker has loaded it too. LitServe 0.2.19 makes no
network calls of its own (no telemetry); its ``client.py`` generation is off.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import socket
from dataclasses import dataclass
from time import monotonic as now
from typing import Any

from sentex.data.tweets import SENTIMENTS
from sentex.errors import SentexError

try:
    from fastapi import HTTPException
    from litserve import LitAPI, LitServer
    from litserve.loops import BatchedLoop
    from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import JSONResponse
except ImportError:  # main() says how to install it; the module stays importable (doctests, `sentex --help`)
    LitAPI = BatchedLoop = object  # type: ignore[assignment,misc]
    LitServer = None  # type: ignore[assignment,misc]

HOSTS = ("127.0.0.1", "0.0.0.0", "::", "localhost")
MAIN_PID = [0]  # the process of ``main``, set when it starts serving
JSON_TYPES = {"dict": "an object", "list": "a list", "str": "a string", "NoneType": "null", "bool": "a boolean"}


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


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error message."""
    return JSON_TYPES.get(type(value).__name__, "a number" if isinstance(value, (int, float)) else "?")


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body.

    >>> parse_json(b'{"text": "hi"')
    Traceback (most recent call last):
    ...
    sentex.deploy.serve.RequestError: malformed JSON: Expecting ',' delimiter at line 1 column 14
    """
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "malformed JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise RequestError(400, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None


def rows_of(payload: Any, limits: Limits) -> tuple[list[dict[str, str]], bool]:
    """The rows of a request's JSON, and whether it was a single item (not a list).

    >>> rows_of({"text": "so happy", "sentiment": "positive", "id": 7}, Limits())
    ([{'text': 'so happy', 'sentiment': 'positive'}], True)
    >>> rows_of([{"text": "ok", "sentiment": "glad"}], Limits())
    Traceback (most recent call last):
    ...
    sentex.deploy.serve.RequestError: item 0: sentiment 'glad' is not one of negative, neutral, positive
    """
    single = isinstance(payload, dict)
    items = [payload] if single else payload
    if not isinstance(items, list):
        raise RequestError(422, f"expected an object with text and sentiment, or a list; got {json_type(items)}")
    if not items:
        raise RequestError(422, "empty list: send at least one item")
    if len(items) > limits.max_items:
        raise RequestError(413, f"{len(items)} items; the limit is {limits.max_items} per request (--max_items)")
    return [check_item(item, "" if single else f"item {i}: ", limits) for i, item in enumerate(items)], single


def check_item(item: Any, where: str, limits: Limits) -> dict[str, str]:
    """One item as a row ``{"text", "sentiment"}`` (other keys are ignored); ``where`` prefixes the error."""
    if not isinstance(item, dict):
        raise RequestError(422, f"{where}expected an object with text and sentiment, got {json_type(item)}")
    for key in ("text", "sentiment"):
        if key not in item:
            raise RequestError(422, f"{where}missing '{key}'")
        if not isinstance(item[key], str):
            raise RequestError(422, f"{where}{key} must be a string, got {json_type(item[key])}")
    text, sentiment = item["text"], item["sentiment"]
    if len(text) > limits.max_text_chars:
        raise RequestError(
            413, f"{where}text is {len(text)} characters; the limit is {limits.max_text_chars} (--max_text_chars)"
        )
    if sentiment not in SENTIMENTS:
        shown = repr(sentiment if len(sentiment) <= 40 else sentiment[:40] + "...")
        raise RequestError(422, f"{where}sentiment {shown} is not one of {', '.join(SENTIMENTS)}")
    return {"text": text, "sentiment": sentiment}


def answer(row: dict[str, str], phrase: str, start: int | None, end: int | None) -> dict[str, Any]:
    """The answer object of a row: its phrase and the phrase's character offsets in the text.

    >>> answer({"text": "so so happy", "sentiment": "positive"}, "so", 3, 5)
    {'text': 'so so happy', 'sentiment': 'positive', 'selected_text': 'so', 'start': 3, 'end': 5}
    """
    return {**row, "selected_text": phrase, "start": start, "end": end}


# --- the HTTP side: checks before LitServe queues a request ------------------------------------
class RequestGate:
    """ASGI middleware in front of ``POST <path>``: the whole body is read (what is over the limit is
    discarded, so the client gets its answer), checked, and handed on unchanged, or refused."""

    def __init__(self, app: Any, limits: Limits, path: str = "/predict") -> None:
        self.app, self.limits, self.path = app, limits, path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, size, more = bytearray(), 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.limits.max_body_bytes:
                body += chunk
            more = message.get("more_body", False)
        try:
            if size > self.limits.max_body_bytes:
                raise RequestError(413, f"request body is {size} bytes; the limit is {self.limits.max_body_bytes}")
            rows_of(parse_json(bytes(body)), self.limits)
        except RequestError as err:
            await JSONResponse({"error": str(err)}, err.status)(scope, receive, send)
            return
        # The body is JSON whatever the client said (``curl -d`` says form data, which LitServe would parse as such).
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


async def error_json(request: Any, exc: StarletteHTTPException) -> JSONResponse:
    """LitServe's and FastAPI's HTTP errors as ``{"error": "<one line>"}`` (instead of ``{"detail": ...}``)."""
    return JSONResponse({"error": str(exc.detail).splitlines()[0] if exc.detail else ""}, exc.status_code)


# --- the worker side -------------------------------------------------------------------------
class BlockingBatchLoop(BatchedLoop):
    """LitServe's batched loop, except that it blocks until a request arrives, then waits at most
    ``batch_timeout`` for more (LitServe's polls the queue every millisecond, busy even when idle)."""

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list, list]:
        first = self.get_request(request_queue, timeout=1.0)
        if first is None:
            return [], []
        batch, timed_out, item = [], [], first
        deadline = now() + lit_api.batch_timeout
        while item is not None:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, payload = item
            if lit_api.request_timeout not in (-1, False, None) and now() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                batch.append((response_queue_id, uid, payload))
            if len(batch) >= lit_api.max_batch_size:
                break
            remaining = deadline - now()
            item = self.get_request(request_queue, block=remaining > 0, timeout=max(remaining, 0.0))
        return batch, timed_out


class SentexAPI(LitAPI):
    """The model behind ``POST /predict``: loads ``model_path`` in each worker and answers batches of requests."""

    def __init__(self, model_path: str, limits: Limits, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_path, self.limits = model_path, limits

    def setup(self, device: str) -> None:
        from sentex.deploy.load import load

        signal.signal(signal.SIGTERM, exit_quietly)  # LitServe stops workers with SIGTERM: exit, cleaning up

        self.extractor = load(self.model_path)
        self.extractor.pipeline.to(device)
        self.run_device = device
        self.forward_rows = max(16, self.max_batch_size)

    # No annotations on ``request`` or the return of ``encode_response``: LitServe reads them as the endpoint's types.
    def decode_request(self, request):
        try:
            return rows_of(request, self.limits)  # already checked by RequestGate: this cannot fail
        except RequestError as err:
            raise HTTPException(err.status, str(err)) from None

    def predict(self, requests: list[tuple[list[dict[str, str]], bool]]) -> list[Any]:
        rows = [row for request_rows, _ in requests for row in request_rows]
        phrases = self.extract(rows)
        out, i = [], 0
        for request_rows, single in requests:
            answers = [answer(row, *found) for row, found in zip(request_rows, phrases[i : i + len(request_rows)])]
            i += len(request_rows)
            out.append(answers[0] if single else answers)
        return out

    def extract(self, rows: list[dict[str, str]]) -> list[tuple[str, int | None, int | None]]:
        """Each row's phrase and offsets, shortest texts batched together (``Extractor.extract``'s order)."""
        import torch

        pipeline, out = self.extractor.pipeline, [("", None, None)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["text"]))
        with torch.inference_mode():
            for start in range(0, len(order), self.forward_rows):
                idx = order[start : start + self.forward_rows]
                batch = pipeline.collate([{"textID": str(i), **rows[i]} for i in idx])
                batch = {k: v.to(self.run_device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                for i, found in zip(idx, pipeline.extract_spans(batch)):
                    out[i] = found
        return out

    def encode_response(self, output):
        return output


# --- the command -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Options of ``sentex serve``."""
    p = argparse.ArgumentParser(prog="sentex serve", description="Serve a model over HTTP: POST /predict, GET /health.")
    p.add_argument("--model", required=True, help="exported model folder or sentex .ckpt")
    p.add_argument("--host", default="127.0.0.1", choices=HOSTS, help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port, 1024-65535 (default: 8000)")
    p.add_argument("--max_batch_size", type=int, default=32, help="requests per model batch (default: 32)")
    p.add_argument(
        "--batch_timeout", type=float, default=0.005, help="seconds to wait for a batch to fill (default: 0.005)"
    )
    p.add_argument("--workers", type=int, default=1, help="model worker processes per device (default: 1)")
    p.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda"), help="(default: auto)")
    p.add_argument("--max_text_chars", type=int, default=Limits.max_text_chars, help="characters per text (5000)")
    p.add_argument("--max_items", type=int, default=Limits.max_items, help="items per request (default: 64)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for a worker (30)")
    p.add_argument("--log_level", default="warning", choices=("debug", "info", "warning", "error"))
    p.add_argument("--access_log", action="store_true", help="log every request (uvicorn's access log)")
    return p


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Exit with argparse's usage error on an out-of-range option."""
    if not 1024 <= args.port <= 65535:
        parser.error(f"--port must be from 1024 to 65535, got {args.port}")
    for name in ("max_batch_size", "workers", "max_text_chars", "max_items"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.batch_timeout < 0 or args.timeout <= args.batch_timeout:
        parser.error("--batch_timeout must be at least 0 and less than --timeout")


def check_port(host: str, port: int) -> None:
    """Fail before loading anything when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise SentexError(f"cannot serve on {host}:{port}: {err.strerror}") from None


def choose_accelerator(wanted: str, dtype: str | None) -> str:
    """``cpu`` or ``cuda``: int8/int4 exports run on sentex's CPU kernels only; ``auto`` takes a GPU if there is one."""
    import torch

    from sentex.deploy.format import QUANTIZED_DTYPES

    if wanted == "cuda" and (dtype in QUANTIZED_DTYPES or not torch.cuda.is_available()):
        reason = f"an {dtype} export runs on CPU only" if dtype in QUANTIZED_DTYPES else "no CUDA device is available"
        raise SentexError(f"--accelerator cuda: {reason}; use --accelerator cpu (or auto)")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() and dtype not in QUANTIZED_DTYPES else "cpu"
    return wanted


def exit_quietly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM takes LitServe's Ctrl-C path, which stops the HTTP servers and model workers it started.

    The HTTP servers are forked and inherit this handler: there the signal gets its default meaning back.
    """
    if os.getpid() == MAIN_PID[0]:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``sentex serve``: check, load the model once, then serve until stopped."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    if LitServer is None:
        raise SentexError("sentex serve needs LitServe: pip install 'litserve>=0.2.19'")
    host = "127.0.0.1" if args.host == "localhost" else args.host
    check_port(host, args.port)
    from sentex.deploy.load import load

    extractor = load(args.model)  # a bad model ends here with sentex predict's one-line CheckpointError
    info = {k: extractor.info.get(k) for k in ("family", "dtype", "base_model", "sentex_version")}
    accelerator = choose_accelerator(args.accelerator, info["dtype"])
    del extractor
    gc.collect()
    limits = Limits(args.max_text_chars, args.max_items)
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    api = SentexAPI(args.model, limits, **batching, loop=BlockingBatchLoop())
    server = LitServer(
        api,
        accelerator=accelerator,
        workers_per_device=args.workers,
        timeout=args.timeout,
        middlewares=[(RequestGate, {"limits": limits})],
        model_metadata={"path": str(args.model), **info},
    )
    server.app.add_exception_handler(StarletteHTTPException, error_json)
    MAIN_PID[0] = os.getpid()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    print(
        f"sentex serve: {args.model} ({info['family']}, {info['dtype']}) on http://{args.host}:{args.port}"
        f" (POST /predict, GET /health); {args.workers} worker(s) on {accelerator}",
        flush=True,
    )
    try:
        server.run(host, args.port, log_level=args.log_level, generate_client_file=False, access_log=args.access_log)
    except KeyboardInterrupt:
        pass
    except RuntimeError as err:  # LitServe: "One or more workers failed to start"
        raise SentexError(f"{args.model}: the model workers failed to start ({err}); see the log above") from None
