"""What ``sentex serve`` takes from LitServe beyond its public API, checked against the installed release.

``sentex/deploy/serve.py`` imports no private LitServe name, but its :class:`BlockingBatchLoop` overrides the
batched loop's ``get_batch_requests`` hook (LitServe's own loop polls the request queue every millisecond when
idle) and reads the queue's items, which LitServe does not document. pyproject.toml pins the releases this was
tested on (``LITSERVE_RANGE``); the contract test below drives the loop with LitServe's own request handler,
callback runner and response statuses, so a release that changes any of them fails here, with a message that
says what to re-check, rather than somewhere inside a served request.
"""

from __future__ import annotations

import ast
import asyncio
import queue
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from sentex.deploy import serve
from sentex.deploy.serve import LITSERVE_RANGE, BlockingBatchLoop, is_request
from sentex.errors import SentexError
from tests.conftest import require_module

ROOT = Path(__file__).resolve().parents[1]
SERVE_MODULES = [ROOT / "sentex" / "deploy" / "serve.py", ROOT / "sentex" / "deploy" / "serve_requests.py"]


@pytest.fixture(scope="module")
def litserve() -> Any:
    return require_module("litserve", "sentex serve needs LitServe (pip install -e .)")


@contextmanager
def litserve_internal(what: str) -> Iterator[None]:
    """Turn a failure inside the block into one message naming the LitServe internal that changed."""
    try:
        yield
    except (AssertionError, AttributeError, ImportError, TypeError, ValueError) as err:
        import litserve

        pytest.fail(
            f"litserve {litserve.__version__}: {what} changed ({type(err).__name__}: {err}). sentex serve's"
            f" BlockingBatchLoop (sentex/deploy/serve.py) relies on it: adapt the loop, then move the tested range"
            f" (LITSERVE_RANGE, now {LITSERVE_RANGE!r}, and the litserve line of pyproject.toml)",
            pytrace=False,
        )


def test_serve_imports_no_private_litserve_name() -> None:
    private = []
    for path in SERVE_MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "litserve":
                parts = node.module.split(".") + [alias.name for alias in node.names]
                private += [f"{path.name}: {node.module}.{part}" for part in parts if part.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and "litserve" in ast.unparse(node):
                private.append(f"{path.name}: {ast.unparse(node)}")
    assert not private, f"private LitServe names: {private}"


def test_the_tested_litserve_range_is_pinned_and_installed(litserve: Any) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pinned = re.findall(r'^\s*"litserve([^"]*)"', pyproject, flags=re.MULTILINE)
    assert pinned == [LITSERVE_RANGE], f"pyproject.toml pins litserve{pinned}, serve.py says {LITSERVE_RANGE!r}"
    lower = re.search(r"^litserve==(\S+)$", (ROOT / "constraints" / "lower-bounds.txt").read_text(), re.MULTILINE)
    assert lower and f">={lower.group(1)}" in LITSERVE_RANGE.split(","), "lower-bounds.txt: not the range's bound"
    assert Version(litserve.__version__) in SpecifierSet(LITSERVE_RANGE), (
        f"litserve {litserve.__version__} is installed, outside the tested {LITSERVE_RANGE}: run this module and"
        " tests/test_serve*.py on it, then move the pin"
    )


def test_serve_without_litserve_says_which_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "LitServer", None)  # as when ``import litserve`` failed
    with pytest.raises(SentexError, match=re.escape(f"pip install 'litserve{LITSERVE_RANGE}'")):
        serve.main(["--model", "model.ckpt"])


class CountingQueue(queue.Queue):
    """The request queue, counting how often the loop asks it for an item."""

    gets = 0

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self.gets += 1
        return super().get(block, timeout)


def test_the_blocking_loop_batches_what_litserve_queues_and_waits_when_idle(litserve: Any) -> None:
    """LitServe's HTTP handler queues the requests; the loop batches them (``max_batch_size``), answers a
    request that waited past the server's timeout with 504 through LitServe's loop, waits without polling
    when idle, and stops on anything that is not a request."""
    with litserve_internal("the LitAPI hooks and LitServer's timeout"):

        class Doubler(litserve.LitAPI):
            def setup(self, device: str) -> None:
                self.batches: list[list[int]] = []

            def decode_request(self, request):
                return request["x"]

            def predict(self, xs: list[int]) -> list[int]:
                self.batches.append(list(xs))
                return [2 * x for x in xs]

            def encode_response(self, output):
                return {"y": output}

        loop = BlockingBatchLoop()
        api = Doubler(max_batch_size=3, batch_timeout=0.3, loop=loop)
        server = litserve.LitServer(api, timeout=30, accelerator="cpu")
        api.setup("cpu")
        assert api.request_timeout == 30, "LitServer(timeout=...) no longer sets LitAPI.request_timeout"
    with litserve_internal("how the HTTP side queues a request (server.RegularRequestHandler._submit_request)"):
        from litserve.server import RegularRequestHandler

        requests = CountingQueue()
        server.litapi_request_queues = {api.api_path: requests}
        server.app.response_queue_id = 7
        handler = RegularRequestHandler(api, server)

        def submit(*xs: int) -> list[str]:
            async def all_of() -> list[str]:
                return [(await handler._submit_request({"x": x}))[0] for x in xs]

            return asyncio.run(all_of())

        late = submit(0)
        queued = list(requests.queue)
        assert [is_request(item) for item in queued] == [True], f"queued {queued!r}"
    with litserve_internal("the batched loop's hooks and responses (loops.BatchedLoop.run_batched_loop)"):
        from litserve.callbacks import CallbackRunner
        from litserve.transport.base import MessageTransport
        from litserve.utils import LitAPIStatus

        class Recorder(MessageTransport):
            def __init__(self) -> None:
                self.sent: dict[str, tuple[Any, Any]] = {}

            def send(self, item: Any, consumer_id: int) -> None:
                uid, (data, status, *_) = item
                assert consumer_id == 7, f"answered to response queue {consumer_id}"
                self.sent[uid] = (data, status)

            async def areceive(self, timeout: int | None = None, consumer_id: int | None = None) -> dict:
                raise NotImplementedError

        transport = Recorder()
        api.request_timeout = 0.1
        time.sleep(0.3)  # the first request waits past the timeout before the loop starts
        exits: list[Any] = []

        def work() -> None:
            try:
                loop.run_batched_loop(api, requests, transport, CallbackRunner())
            except SystemExit as stop:  # what ends the worker process, as SIGTERM's handler does
                exits.append(stop.code)

        worker = threading.Thread(target=work, daemon=True)  # a failed test leaves no loop holding pytest
        worker.start()
        wait_for(lambda: late[0] in transport.sent)
        data, status = transport.sent[late[0]]
        assert status == LitAPIStatus.ERROR and getattr(data, "status_code", None) == 504, transport.sent

        api.request_timeout = 30
        uids = submit(1, 2, 3, 4)
        wait_for(lambda: all(uid in transport.sent for uid in uids))
        assert api.batches == [[1, 2, 3], [4]]
        assert [transport.sent[uid] for uid in uids] == [({"y": 2 * x}, LitAPIStatus.OK) for x in (1, 2, 3, 4)]

        before = requests.gets
        time.sleep(1.5)
        assert requests.gets - before <= 3, f"{requests.gets - before} polls of an idle queue in 1.5 s"
        requests.put((None, None, None, None))  # the stop value LitServe's own loops know
        worker.join(timeout=5)
        assert not worker.is_alive() and exits == [0], "the loop did not stop on a queue item that is not a request"


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    """Return once ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "no answer from the loop within 10 s"
        time.sleep(0.02)
