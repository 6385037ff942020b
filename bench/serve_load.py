"""Load-test ``sentex serve`` over real HTTP: throughput, latency percentiles and failures at several concurrencies.

    python bench/serve_load.py --model models/sentex-int8                  # starts the server itself
    python bench/serve_load.py --url http://127.0.0.1:8000 --requests 5000  # or targets a running one
    python bench/serve_load.py --model models/sentex-int8 --sentiment_model models/sentiment --no_sentiment

Each request is one validation tweet (``{"text", "sentiment"}``, or ``{"text"}`` with ``--no_sentiment``, which
measures a server started with ``--sentiment_model``: its sentiment model predicts every request's sentiment;
the seeded 10% split that training holds out, ``TweetDataModule(split_seed=42, val_fraction=0.1)``, cycled),
sent by ``concurrency`` clients that each send their next request as soon as the last one is answered
(``httpx.AsyncClient``). A failure is a transport error, a status other than 200, or an answer that is not the
request's own tweet with a ``selected_text`` (with a predicted sentiment under ``--no_sentiment``) or, from a
classifier server, a ``label``. Latency is the wall time of one request as the client sees it. Then the
bad-request checks: malformed JSON, a missing field, an unknown sentiment and a 1 MB text must each get a 4xx
(those the server accepts by design are left out: a missing sentiment where it has a sentiment model, both
sentiment checks for a classifier, as its ``/info`` says), and the good request after each must succeed.
The output is Markdown (for the README). Only this machine's loopback address is ever sent anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"
SAMPLE_DATA = "sentex:sample.csv"
GOOD = {"text": "my phone died again, worst day", "sentiment": "negative"}
BAD_REQUESTS = {
    "malformed JSON": b'{"text": "so happy", "sentiment": ',
    "missing `sentiment`": json.dumps({"text": "so happy"}).encode(),
    "unknown sentiment": json.dumps({"text": "so happy", "sentiment": "glad"}).encode(),
    "1 MB text": json.dumps({"text": "a" * 1_000_000, "sentiment": "positive"}).encode(),
}


def validation_rows(data: str, with_sentiment: bool = True) -> list[dict[str, str]]:
    """``{"text", "sentiment"}`` (or ``{"text"}``) of the held-out validation split of a Kaggle-format CSV."""
    from sentex.data import TweetDataModule

    dm = TweetDataModule(train_path=data, split_seed=42, val_fraction=0.1)
    dm.setup("validate")
    keys = ("text", "sentiment") if with_sentiment else ("text",)
    return [{k: r[k] for k in keys} for r in dm.datasets["val"]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, extra: list[str], timeout: float) -> subprocess.Popen:
    """``sentex serve`` in its own process group; returns once ``/health`` answers 200."""
    cmd = [sys.executable, "-m", "sentex", "serve", "--model", model, "--port", str(port), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"server: OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {' '.join(cmd[1:])}", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve_load: the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit(f"serve_load: the server was not ready after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (``sentex serve`` stops its workers), then SIGKILL to its process group if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group is the server's own (start_new_session)
    except ProcessLookupError:
        pass
    proc.wait()


async def run_level(url: str, rows: list[dict[str, str]], concurrency: int, total: int) -> dict[str, float]:
    """``total`` single-tweet requests from ``concurrency`` clients; req/s, latency percentiles, failures."""
    latencies: list[float] = []
    failures = 0
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal failures, next_index
        while next_index < total:
            row = rows[next_index % len(rows)]
            next_index += 1
            start = time.perf_counter()
            try:
                response = await client.post(url, json=row)
                ok = response.status_code == 200 and is_answer(response.json(), row)
            except (httpx.HTTPError, ValueError):
                ok = False
            latencies.append(time.perf_counter() - start)
            failures += not ok

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "concurrency": concurrency,
        "requests": total,
        "failures": failures,
        "rps": total / elapsed,
        "p50": cuts[49] * 1000,
        "p95": cuts[94] * 1000,
        "p99": cuts[98] * 1000,
    }


def is_answer(body: object, row: dict[str, str]) -> bool:
    """Whether a response body is the answer to ``row``: its phrase (sentiment predicted where none was sent),
    or a classifier's label."""
    if not isinstance(body, dict) or body.get("text") != row["text"]:
        return False
    if isinstance(body.get("label"), str):
        return True
    predicted = "sentiment" in row or body.get("sentiment_source") == "predicted"
    return isinstance(body.get("selected_text"), str) and predicted


def server_model(base: str) -> dict:
    """The ``model`` part of the server's ``GET /info`` (family, sentiment model), or ``{}``."""
    try:
        return httpx.get(f"{base}/info", timeout=10).json().get("model") or {}
    except (httpx.HTTPError, ValueError, AttributeError):
        return {}


def bad_requests_for(model: dict) -> dict[str, bytes]:
    """The bad requests this server must refuse (a classifier takes no sentiment; auto sentiment, no missing one)."""
    accepted = {"classifier": ("missing `sentiment`", "unknown sentiment")}.get(model.get("family"), ())
    if model.get("sentiment_model"):
        accepted = ("missing `sentiment`",)
    return {name: body for name, body in BAD_REQUESTS.items() if name not in accepted}


def bad_request_checks(url: str, bad: dict[str, bytes], good: dict[str, str]) -> list[tuple[str, int, str, int]]:
    """Each bad request's status and error, and the status of the good request sent right after it."""
    out = []
    with httpx.Client(timeout=60) as client:
        for name, body in bad.items():
            response = client.post(url, content=body, headers={"Content-Type": "application/json"})
            error = (
                response.json().get("error", "") if response.headers.get("content-type", "").endswith("json") else ""
            )
            out.append((name, response.status_code, error, client.post(url, json=good).status_code))
    return out


def markdown(levels: list[dict[str, float]], checks: list[tuple[str, int, str, int]]) -> str:
    lines = [
        "| concurrency | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in levels:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['failures']} | {r['rps']:.1f} "
            f"| {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} |"
        )
    lines += ["", "| bad request | status | error | next good request |", "| --- | ---: | --- | ---: |"]
    for name, status, error, after in checks:
        shown = error if len(error) <= 70 else error[:67] + "..."
        lines.append(f"| {name} | {status} | {shown.replace('|', '/')} | {after} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="exported folder or .ckpt: start `sentex serve` on it (on a free port)")
    target.add_argument("--url", help="base URL of a running server (http://127.0.0.1:PORT)")
    parser.add_argument("--data", default=None, help=f"Kaggle-format CSV (default: {DEFAULT_DATA}, else the sample)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[300, 1000, 5000], help="one per concurrency")
    parser.add_argument("--server_args", default="", help="more `sentex serve` options, e.g. '--max_batch_size 32'")
    parser.add_argument("--sentiment_model", help="with --model: start the server with this --sentiment_model")
    parser.add_argument(
        "--no_sentiment", action="store_true", help="send {text} only: the server's sentiment model predicts it"
    )
    parser.add_argument("--startup_timeout", type=float, default=300.0)
    parser.add_argument("--out", help="also write the Markdown tables here")
    args = parser.parse_args()
    counts = args.requests * len(args.concurrency) if len(args.requests) == 1 else args.requests
    if len(counts) != len(args.concurrency):
        parser.error("--requests takes one count, or one per --concurrency value")
    data = args.data or (str(DEFAULT_DATA) if DEFAULT_DATA.is_file() else SAMPLE_DATA)
    if args.sentiment_model and not args.model:
        parser.error("--sentiment_model goes with --model (a running server has its own)")
    rows = validation_rows(data, with_sentiment=not args.no_sentiment)
    good = {"text": GOOD["text"]} if args.no_sentiment else GOOD
    server_args = args.server_args.split()
    if args.sentiment_model:
        server_args += ["--sentiment_model", args.sentiment_model]
    print(f"{len(rows)} validation tweets from {data}", file=sys.stderr)
    proc, base = None, (args.url or "").rstrip("/")
    if args.model:
        port = free_port()
        proc, base = (
            start_server(args.model, port, server_args, args.startup_timeout),
            f"http://127.0.0.1:{port}",
        )
    try:
        url, model = f"{base}/predict", server_model(base)
        if args.no_sentiment and model.get("family") != "classifier" and not model.get("sentiment_model"):
            raise SystemExit("serve_load: --no_sentiment needs a server with a sentiment model (--sentiment_model)")
        asyncio.run(run_level(url, rows, 4, 40))  # warm-up: connections, first batches
        levels = []
        for concurrency, total in zip(args.concurrency, counts):
            levels.append(asyncio.run(run_level(url, rows, concurrency, total)))
            print(f"concurrency {concurrency}: {levels[-1]['rps']:.1f} req/s", file=sys.stderr)
        table = markdown(levels, bad_request_checks(url, bad_requests_for(model), good))
    finally:
        if proc is not None:
            stop_server(proc)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
