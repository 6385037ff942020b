"""``sentex serve``: a real server in a subprocess answering real HTTP requests, good and bad.

One server (an untrained span checkpoint on the packaged MiniLM, small limits so the over-limit cases stay
small) serves every request test; its answers must equal ``sentex.load(...).extract`` on the same rows, one
item, a list, and many concurrent requests (which LitServe batches). Bad requests (a missing sentiment included:
this server has no sentiment model; JSON nested too deeply; a body over the size limit, whether it declares its
length or comes in chunks, refused before the rest of it arrives) must get a 4xx with a one-line ``error`` and
leave the server serving.
Stopping it with SIGTERM must stop every process it started. ``tests/test_serve_sentiment.py`` starts servers
with a sentiment model and with a classifier through :func:`serving`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from sentex.deploy.serve import check_port, choose_accelerator
from sentex.deploy.serve import main as serve_main
from sentex.deploy.serve_requests import Limits
from sentex.errors import SentexError
from tests.conftest import SENTIMENTS, TEXTS, require_module, sentex, sentex_command, sentex_env
from tests.helpers import free_port

MAX_TEXT_CHARS, MAX_ITEMS = 300, 8
GOOD = {"text": "my phone died again, worst day", "sentiment": "negative"}


def post(url: str, body: Any, raw: bool = False) -> tuple[int, Any]:
    """POST ``body`` (JSON-encoded unless ``raw`` bytes) to ``url``; the status and the decoded JSON answer."""
    data = body if raw else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def expected(extractor: Any, texts: list[str], sentiments: list[str]) -> list[dict[str, Any]]:
    """The answers ``sentex.load(...).extract`` gives, with the offsets its pipeline decoded."""
    rows = [{"textID": str(i), "text": t, "sentiment": s} for i, (t, s) in enumerate(zip(texts, sentiments))]
    found = extractor.pipeline.extract_spans(extractor.pipeline.collate(rows))
    assert [phrase for phrase, _, _ in found] == extractor.extract(texts, sentiments)
    out = []
    for (text, sentiment), (phrase, start, end) in zip(zip(texts, sentiments), found):
        assert text[start:end] == phrase, "a span model answers with the tweet's own substring"
        out.append({"text": text, "sentiment": sentiment, "selected_text": phrase, "start": start, "end": end})
    return out


def server_processes(pid: int) -> list[Any]:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while they are picked, so none comes twice)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def wait_until_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sentex serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if get(f"{url}/health") == (200, "ok"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"sentex serve was not ready within {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.25)


@contextmanager
def serving(*commands: list[str], logdir: Path) -> Iterator[list[str]]:
    """``sentex serve`` once per argument list, all started at once on free ports; their URLs, until the block
    ends; then SIGTERM must stop each server and every process it started, with no traceback in its log."""
    require_module("litserve", "sentex serve needs LitServe (pip install litserve)")
    import psutil

    procs: list[subprocess.Popen] = []
    logs = [logdir / f"server{n}.log" for n in range(len(commands))]
    urls = [f"http://127.0.0.1:{port}" for port in free_ports(len(commands))]
    try:
        for args, url, log in zip(commands, urls, logs):
            with open(log, "w") as out:
                procs.append(
                    subprocess.Popen(
                        sentex_command("serve", *args, "--port", url.rsplit(":", 1)[1]), cwd=logdir,
                        env=sentex_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    )
                )  # fmt: skip
        for proc, url, log in zip(procs, urls, logs):
            wait_until_ready(proc, url, log)
        children = [server_processes(proc.pid) for proc in procs]
        yield urls
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, kids, log in zip(procs, children, logs):
            assert proc.wait(timeout=60) == 0, log.read_text()
            _, alive = psutil.wait_procs(kids, timeout=15)
            assert not alive, f"still running after SIGTERM: {[p.cmdline() for p in alive]}"
            assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the server's own group (start_new_session): nothing else
            except ProcessLookupError:
                pass
            proc.wait()


@pytest.fixture(scope="module")
def server(untrained_span_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``sentex serve`` on a free port, until the module's tests are done; then SIGTERM must stop it all."""
    args = ["--model", str(untrained_span_ckpt), "--max_batch_size", "8", "--batch_timeout", "0.05"]
    args += ["--max_text_chars", str(MAX_TEXT_CHARS), "--max_items", str(MAX_ITEMS)]
    with serving(args, logdir=tmp_path_factory.mktemp("serve")) as (url,):
        yield url


def test_health_and_info_once_the_model_is_loaded(server: str) -> None:
    assert get(f"{server}/health") == (200, "ok")
    status, info = get(f"{server}/info")
    assert status == 200 and json.loads(info)["model"]["family"] == "span"
    assert json.loads(info)["model"]["sentiment_model"] is None


def test_one_item_gets_the_answer_of_sentex_load(server: str, untrained_extractor: Any) -> None:
    status, body = post(f"{server}/predict", GOOD)
    assert status == 200
    assert body == expected(untrained_extractor, [GOOD["text"]], [GOOD["sentiment"]])[0]
    assert body["text"][body["start"] : body["end"]] == body["selected_text"]


def test_a_list_gets_a_list_of_answers_in_order(server: str, untrained_extractor: Any) -> None:
    items = [{"text": t, "sentiment": s} for t, s in zip(TEXTS[:MAX_ITEMS], SENTIMENTS)]
    status, body = post(f"{server}/predict", items)
    assert status == 200
    assert body == expected(untrained_extractor, TEXTS[:MAX_ITEMS], SENTIMENTS[:MAX_ITEMS])
    status, body = post(f"{server}/predict", [GOOD])  # a list of one is still a list
    assert status == 200 and isinstance(body, list) and len(body) == 1


def test_concurrent_requests_are_answered_like_sentex_load(server: str, untrained_extractor: Any) -> None:
    """15 requests at once (single items and lists): LitServe batches them; each gets its own answers."""
    singles = [{"text": t, "sentiment": s} for t, s in zip(TEXTS, SENTIMENTS)]
    chunks = [(0, 3), (3, 6), (6, 9), (8, 11)]
    requests = singles + [singles[i:j] for i, j in chunks]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda body: post(f"{server}/predict", body), requests))
    want = expected(untrained_extractor, TEXTS, SENTIMENTS)
    assert [a[0] for a in answers] == [200] * len(requests)
    assert [a[1] for a in answers[: len(singles)]] == want
    assert [a[1] for a in answers[len(singles) :]] == [want[i:j] for i, j in chunks]


BAD_REQUESTS = {
    "malformed JSON": (b'{"text": "so happy", "sentiment": ', 400, "malformed JSON"),
    "not UTF-8": (b'{"text": "\xff", "sentiment": "positive"}', 400, "not UTF-8"),
    "missing text": (json.dumps({"sentiment": "positive"}).encode(), 422, "missing 'text'"),
    "missing sentiment in a list": (json.dumps([GOOD, {"text": "ok"}]).encode(), 422, "item 1: missing 'sentiment'"),
    "unknown sentiment": (json.dumps({**GOOD, "sentiment": "glad"}).encode(), 422, "'glad' is not one of"),
    "no sentiment, no sentiment model": (
        json.dumps({"text": "ok"}).encode(),
        422,
        "missing 'sentiment' (this server has no sentiment model",
    ),
    "null sentiment, no sentiment model": (
        json.dumps({**GOOD, "sentiment": None}).encode(),
        422,
        "sentiment null is not one of",
    ),
    "auto sentiment, no sentiment model": (
        json.dumps([GOOD, {**GOOD, "sentiment": "auto"}]).encode(),
        422,
        "item 1: sentiment 'auto' is not one of",
    ),
    "sentiment not a string": (json.dumps({**GOOD, "sentiment": 1}).encode(), 422, "must be a string, got a number"),
    "text not a string": (json.dumps({**GOOD, "text": 7}).encode(), 422, "text must be a string, got a number"),
    "a string, not an object": (json.dumps("so happy").encode(), 422, "got a string"),
    "empty list": (b"[]", 422, "empty list"),
    "text over the limit": (json.dumps({**GOOD, "text": "a" * 301}).encode(), 413, "the limit is 300"),
    "1 MB text": (json.dumps({**GOOD, "text": "a" * 1_000_000}).encode(), 413, "request body is"),
    "too many items": (json.dumps([GOOD] * (MAX_ITEMS + 1)).encode(), 413, "9 items; the limit is 8"),
    "JSON nested too deeply": (b"[" * 10_000, 400, "JSON nested too deeply"),  # 10 kB: under the size limit
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_and_the_next_good_one_works(server: str, case: str) -> None:
    body, status, reason = BAD_REQUESTS[case]
    got_status, got = post(f"{server}/predict", body, raw=True)
    assert got_status == status, got
    assert set(got) == {"error"} and reason in got["error"] and "\n" not in got["error"]
    if "sentiment model" in case:
        assert "start it with --sentiment_model" in got["error"]
    assert post(f"{server}/predict", GOOD)[0] == 200


def test_deep_json_beside_the_fields_does_not_reach_the_worker(server: str) -> None:
    """JSON parses 500 levels, which LitServe's pickling to a worker could not send (a 500): the server
    answers from the checked fields alone."""
    deep = json.dumps({**GOOD, "note": json.loads("[" * 500 + "]" * 500)}).encode()
    assert post(f"{server}/predict", deep, raw=True) == post(f"{server}/predict", GOOD)


def raw_post(url: str, head: list[str], body: bytes) -> tuple[int, Any]:
    """Send ``POST /predict`` with the header lines ``head`` and the bytes ``body`` on a socket, which stays
    open as a client's still sending would; the status and JSON of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall("\r\n".join(["POST /predict HTTP/1.1", f"Host: {host}", *head, "", ""]).encode() + body)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except TimeoutError:
            pytest.fail("no answer within 20 s: the server waits for the rest of the body", pytrace=False)
        return response.status, json.loads(response.read())


def chunked(*parts: bytes) -> bytes:
    """``parts`` as the chunks of a ``Transfer-Encoding: chunked`` body, without the closing empty chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)


def test_a_body_over_the_limit_is_refused_before_it_is_read(server: str) -> None:
    """A 1 GB ``Content-Length`` with 4 kB sent: the 413 comes at once, not after the gigabyte."""
    limit = Limits(MAX_TEXT_CHARS, MAX_ITEMS).max_body_bytes
    head = ["Content-Type: application/json", "Content-Length: 1000000000"]
    status, got = raw_post(server, head, b'{"text": "' + b"a" * 4096)
    assert (status, got) == (413, {"error": f"request body is 1000000000 bytes; the limit is {limit}"})
    assert post(f"{server}/predict", GOOD)[0] == 200


def test_a_chunked_body_is_cut_off_at_the_limit(server: str) -> None:
    """Chunks without a length read one by one: a whole body under the limit is answered; one that passes
    the limit gets its 413 as soon as it does, while the client still has more to send."""
    head = ["Content-Type: application/json", "Transfer-Encoding: chunked"]
    good, want = json.dumps(GOOD).encode(), post(f"{server}/predict", GOOD)
    assert raw_post(server, head, chunked(good[:10], good[10:20], good[20:]) + b"0\r\n\r\n") == want
    limit = Limits(MAX_TEXT_CHARS, MAX_ITEMS).max_body_bytes
    status, got = raw_post(server, head, chunked(*[b"[" * 1000] * (limit // 1000 + 2)))
    assert status == 413 and got["error"].startswith(f"request body is over {limit} bytes"), got
    assert post(f"{server}/predict", GOOD)[0] == 200


def test_a_form_encoded_body_is_read_as_json(server: str) -> None:
    """``curl -d`` sends JSON labelled as form data; the body is what counts."""
    request = urllib.request.Request(f"{server}/predict", data=json.dumps(GOOD).encode(), method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read())["text"] == GOOD["text"]


@pytest.mark.parametrize("bad", ["missing.ckpt", "corrupt.ckpt"])
def test_a_bad_model_stops_serve_at_start_with_one_line(tmp_path: Path, bad: str) -> None:
    """No server starts: the model is loaded before anything listens, and fails like ``sentex predict``'s."""
    require_module("litserve", "sentex serve needs LitServe (pip install litserve)")
    model = tmp_path / bad
    if bad == "corrupt.ckpt":
        model.write_bytes(b"not a checkpoint")
    port = free_port()
    started = time.monotonic()
    result = sentex("serve", "--model", str(model), "--port", str(port), cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sentex: error: {model}"), result.stderr
    assert time.monotonic() - started < 60
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing may be listening"


@pytest.mark.parametrize(
    "args",
    [["--port", "80"], ["--max_items", "0"], ["--batch_timeout", "-1"], ["--accelerator", "tpu"]],
    ids=["port", "max_items", "batch_timeout", "accelerator"],
)
def test_out_of_range_options_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--model", "m.ckpt", *args])
    assert exit_info.value.code == 2
    assert "sentex serve: error:" in capsys.readouterr().err


def test_a_taken_port_or_an_impossible_accelerator_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SentexError, match=f"cannot serve on 127.0.0.1:{port}"):
            check_port("127.0.0.1", port)
    with pytest.raises(SentexError, match="int8 export runs on CPU only"):
        choose_accelerator("cuda", "int8")
    assert choose_accelerator("auto", "int4") == choose_accelerator("cpu", "fp32") == "cpu"


def test_litserve_monitor_race_is_silenced_only_once_stopping(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from sentex.deploy import serve

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("litserve.server", logging.ERROR, __file__, 1, message, None, None)

    gate = serve.MonitorShutdownRace()
    monkeypatch.setattr(serve, "STOPPING", [False])
    assert gate.filter(record("Monitoring worker crashed"))  # a real crash while serving is shown
    monkeypatch.setattr(serve, "STOPPING", [True])
    assert not gate.filter(record("Monitoring worker crashed"))
    assert gate.filter(record("Worker 0 died; shutting down"))
