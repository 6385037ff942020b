"""``sentex serve``: an HTTP model server on LitServe (FastAPI and uvicorn underneath)::

    sentex serve --model models/sentex-int8 --port 8000
    curl -s localhost:8000/predict -d '{"text": "my phone died again, worst day", "sentiment": "negative"}'
    sentex serve --model models/sentex-int8 --sentiment_model models/sentiment   # sentiment may be left out
    sentex serve --model models/sentiment                                          # a classifier: text -> label

``POST /predict`` takes one item or a list of them and answers one object or a list of them, in order
(the items are checked by :mod:`sentex.deploy.serve_requests`). For an extractor an item is ``{"text",
"sentiment"}`` and its answer ``{"text", "sentiment", "selected_text", "start", "end"}``; ``text[start:end]`` is
``selected_text``: where a span model decoded it, a seq2seq answer's first occurrence, or ``start``/``end`` are
``null`` where a generated answer is no substring of the tweet. With ``--sentiment_model`` (a classifier of the
three tweet sentiments) the sentiment may be absent, ``null``, ``""`` or ``"auto"``: the classifier predicts it,
and the answer says which sentiment was used and ``"sentiment_source": "given"`` or ``"predicted"``. For a
classifier ``--model`` an item is ``{"text"}`` and its answer ``{"text", "label", "probs": {label: p}}``.

Batching: an HTTP request, whatever number of items it holds, is one unit of LitServe's dynamic batching.
``predict`` gets up to ``--max_batch_size`` requests (waiting at most ``--batch_timeout`` s for more once the
first arrived), runs all their rows through the model in length-sorted chunks of ``max(16, --max_batch_size)``
rows (as ``Extractor.extract`` does; the batch's rows without a sentiment go through the sentiment model in one
call first) and splits the answers back per request.

Errors: LitServe fails every request of a batch when one of them raises, so bad requests never reach a worker:
a middleware in the HTTP process checks each one (size, JSON, fields) and answers ``{"error": "<one line>"}``
with 400 (malformed JSON, or nested too deeply to parse), 413 (over a limit; a body over the size limit is
refused before the rest of it is read) or 422 (wrong shape, missing field, unknown sentiment, a missing
sentiment on a server without sentiment model). The models are loaded once before anything starts, so a bad
``--model`` or ``--sentiment_model`` ends ``sentex serve`` with a one-line error; ``/health`` answers 200 once
every worker has loaded them too, and ``/info`` shows them. LitServe makes no network calls of its own (no
telemetry) in the releases read for it, 0.2.17 and 0.2.19 (:data:`LITSERVE_RANGE` is the tested range); its
``client.py`` generation is off.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
from pathlib import Path
from time import monotonic as now
from typing import Any

from sentex.deploy.serve_requests import (
    Limits,
    RequestError,
    RequestGate,
    Schema,
    answer,
    class_answer,
    error_json,
    rows_of,
)
from sentex.errors import SentexError

try:
    from fastapi import HTTPException
    from litserve import LitAPI, LitServer
    from litserve.loops import BatchedLoop
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # main() says how to install it; the module stays importable (doctests, `sentex --help`)
    LitAPI = BatchedLoop = object  # type: ignore[assignment,misc]
    LitServer = None  # type: ignore[assignment,misc]

# The LitServe releases sentex serve is tested on, as pyproject.toml pins them (a test keeps the two equal):
# BlockingBatchLoop relies on how these queue requests, which LitServe does not promise to keep.
LITSERVE_RANGE = ">=0.2.17,<0.2.20"
HOSTS = ("127.0.0.1", "0.0.0.0", "::", "localhost")
MAIN_PID = [0]  # the process of ``main``, set when it starts serving
STOPPING = [False]  # set when SIGTERM or Ctrl-C asks the main process to stop
INFO_KEYS = ("family", "dtype", "base_model", "sentex_version")


# --- the worker side -------------------------------------------------------------------------
def is_request(item: Any) -> bool:
    """Whether a request-queue item is a request, ``(response_queue_id, uid, timestamp, payload)``, as
    LitServe's HTTP side queues it; anything else (LitServe's loops know a ``(None,) * 4`` stop value) is not."""
    return isinstance(item, tuple) and len(item) == 4 and item[1] is not None


class BlockingBatchLoop(BatchedLoop):
    """LitServe's batched loop, except that it blocks until a request arrives, then waits at most
    ``batch_timeout`` for more.

    LitServe's own loop polls the queue every millisecond even when idle, and the queue lives in a
    ``multiprocessing`` Manager, so each poll is a round trip to another process: both stay busy. LitServe
    has no public setting for this, so this overrides the loop's public ``get_batch_requests`` hook, and
    relies on the queue's items being :func:`is_request` tuples (``tests/test_serve_litserve.py`` checks
    both against the installed LitServe; pyproject.toml pins the releases it passed on).
    """

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list, list]:
        """Up to ``max_batch_size`` requests ``(response_queue_id, uid, payload)``, and the ``(response_queue_id,
        uid)`` of those that waited longer than the server's timeout; both empty after a second without any."""
        first = self.get_request(request_queue, timeout=1.0)
        if first is None:
            return [], []
        batch, timed_out, item = [], [], first
        deadline = now() + lit_api.batch_timeout
        while item is not None:
            if not is_request(item):
                # A stop value (LitServe 0.2.17-0.2.19 stop workers with SIGTERM instead): stop as SIGTERM does.
                raise SystemExit(0)
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
    """The model behind ``POST /predict``: loads ``model_path`` (and ``sentiment_path``) in each worker and
    answers batches of requests, as extractions or classifications (``schema.task``)."""

    def __init__(
        self, model_path: str, limits: Limits, schema: Schema, sentiment_path: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.model_path, self.limits, self.schema, self.sentiment_path = model_path, limits, schema, sentiment_path

    def setup(self, device: str) -> None:
        from sentex.deploy.load import load

        signal.signal(signal.SIGTERM, exit_quietly)  # LitServe stops workers with SIGTERM: exit, cleaning up

        self.model = load(self.model_path, sentiment_model=self.sentiment_path)
        if self.schema.task == "classify":
            self.model.net.to(device)
        else:
            self.model.pipeline.to(device)
            if self.model.sentiment_model is not None:
                self.model.sentiment_model.net.to(device)
        self.run_device = device
        self.forward_rows = max(16, self.max_batch_size)

    # No annotations on ``request`` or the return of ``encode_response``: LitServe reads them as the endpoint's types.
    def decode_request(self, request):
        try:
            return rows_of(request, self.limits, self.schema)  # already checked by RequestGate: this cannot fail
        except RequestError as err:
            raise HTTPException(err.status, str(err)) from None

    def predict(self, requests: list[tuple[list[dict[str, Any]], bool]]) -> list[Any]:
        rows = [row for request_rows, _ in requests for row in request_rows]
        answers = self.classify(rows) if self.schema.task == "classify" else self.answer_rows(rows)
        out, i = [], 0
        for request_rows, single in requests:
            mine = answers[i : i + len(request_rows)]
            i += len(request_rows)
            out.append(mine[0] if single else mine)
        return out

    def classify(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each row's label and probabilities (``Classifier.classify``'s labels; it batches by length too)."""
        texts = [row["text"] for row in rows]
        probs = self.model.predict_proba(texts, batch_size=self.forward_rows)
        labels, names = self.model.codec.decode(probs), self.model.labels
        return [class_answer(text, label, names, p) for text, label, p in zip(texts, labels, probs.tolist())]

    def answer_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each row's answer; rows without a sentiment (``None``) get the sentiment model's first, in one call."""
        if self.schema.auto_sentiment:
            texts, given = [row["text"] for row in rows], [row["sentiment"] for row in rows]
            filled = self.model.sentiments_for(texts, given, batch_size=self.forward_rows)
            rows = [
                {"text": text, "sentiment": used, "sentiment_source": "predicted" if wanted is None else "given"}
                for text, wanted, used in zip(texts, given, filled)
            ]
        return [answer(row, *found) for row, found in zip(rows, self.extract(rows))]

    def extract(self, rows: list[dict[str, Any]]) -> list[tuple[str, int | None, int | None]]:
        """Each row's phrase and offsets, shortest texts batched together (``Extractor.extract``'s order)."""
        import torch

        pipeline, out = self.model.pipeline, [("", None, None)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["text"]))
        with torch.inference_mode():
            for start in range(0, len(order), self.forward_rows):
                idx = order[start : start + self.forward_rows]
                batch = pipeline.collate(
                    [{"textID": str(i), "text": rows[i]["text"], "sentiment": rows[i]["sentiment"]} for i in idx]
                )
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
    p.add_argument("--model", required=True, help="exported model folder or sentex .ckpt (an extractor or classifier)")
    p.add_argument(
        "--sentiment_model",
        default=None,
        help="sentiment classifier (folder or .ckpt) that predicts the sentiment of items sent without one",
    )
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
        STOPPING[0] = True
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def note_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C: Python's own handling (KeyboardInterrupt, in every process as before), noted in the main one."""
    if os.getpid() == MAIN_PID[0]:
        STOPPING[0] = True
    signal.default_int_handler(signum, frame)


class MonitorShutdownRace(logging.Filter):
    """Drop LitServe's "Monitoring worker crashed" traceback once sentex is stopping the server.

    LitServe's worker-monitoring thread polls an event held by a multiprocessing Manager every 2 s. On
    Ctrl-C, LitServe shuts the Manager down without stopping that thread first, so a poll that lands in
    between raises ``ConnectionResetError`` and is logged with a traceback, although every process then
    stops cleanly (seen once in CI on a loaded machine). Before a stop was asked for, the record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (STOPPING[0] and record.getMessage().startswith("Monitoring worker crashed"))


def load_models(model_path: str, sentiment_path: str | None) -> tuple[Schema, dict[str, Any]]:
    """Load the model (and sentiment model) once, to fail before anything starts; what to serve, and ``/info``'s model.

    Raises:
        SentexError: a model that does not load, or a sentiment model that is not a tweet-sentiment classifier
            or comes with a classifier ``--model``, as one line naming the option and path.
    """
    from sentex.deploy.load import load_model
    from sentex.deploy.sentiment import check_sentiment_classifier

    model = load_model(Path(model_path))  # a bad model ends here with sentex predict's one-line CheckpointError
    info = {k: model.info.get(k) for k in INFO_KEYS}
    if model.family == "classifier":
        info["labels"] = model.labels
    sentiment_info = None
    if sentiment_path is not None:
        if model.family == "classifier":
            raise SentexError(
                f"--sentiment_model {sentiment_path}: a sentiment model goes with an extractor,"
                f" and --model {model_path} is a classifier"
            )
        try:
            classifier = check_sentiment_classifier(load_model(Path(sentiment_path)), sentiment_path)
        except SentexError as err:
            raise SentexError(f"--sentiment_model {err}") from None
        sentiment_info = {"path": sentiment_path, **{k: classifier.info.get(k) for k in INFO_KEYS}}
        sentiment_info["labels"] = classifier.labels
        del classifier
    del model
    gc.collect()
    schema = Schema("classify" if info["family"] == "classifier" else "extract", sentiment_info is not None)
    return schema, {"path": str(model_path), **info, "sentiment_model": sentiment_info}


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``sentex serve``: check, load the models once, then serve until stopped."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    if LitServer is None:
        raise SentexError(f"sentex serve needs LitServe: pip install 'litserve{LITSERVE_RANGE}'")
    host = "127.0.0.1" if args.host == "localhost" else args.host
    check_port(host, args.port)
    schema, info = load_models(args.model, args.sentiment_model)
    accelerators = {choose_accelerator(args.accelerator, info["dtype"])}
    if info["sentiment_model"]:  # both run in one worker: a CPU-only sentiment model keeps the extractor on CPU
        accelerators.add(choose_accelerator(args.accelerator, info["sentiment_model"]["dtype"]))
    accelerator = "cpu" if "cpu" in accelerators else accelerators.pop()
    limits = Limits(args.max_text_chars, args.max_items)
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    api = SentexAPI(args.model, limits, schema, args.sentiment_model, **batching, loop=BlockingBatchLoop())
    server = LitServer(
        api,
        accelerator=accelerator,
        workers_per_device=args.workers,
        timeout=args.timeout,
        middlewares=[(RequestGate, {"limits": limits, "schema": schema})],
        model_metadata=info,
    )
    server.app.add_exception_handler(StarletteHTTPException, error_json)
    MAIN_PID[0] = os.getpid()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    signal.signal(signal.SIGINT, note_sigint)
    logging.getLogger("litserve.server").addFilter(MonitorShutdownRace())
    extra = f" + sentiment model {args.sentiment_model}" if args.sentiment_model else ""
    print(
        f"sentex serve: {args.model} ({info['family']}, {info['dtype']}){extra} on http://{args.host}:{args.port}"
        f" (POST /predict, GET /health); {args.workers} worker(s) on {accelerator}",
        flush=True,
    )
    try:
        server.run(host, args.port, log_level=args.log_level, generate_client_file=False, access_log=args.access_log)
    except KeyboardInterrupt:
        pass
    except RuntimeError as err:  # LitServe: "One or more workers failed to start"
        raise SentexError(f"{args.model}: the model workers failed to start ({err}); see the log above") from None
