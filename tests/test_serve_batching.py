"""``sentex serve`` answers a request the same whether it arrives alone or batched with other users' requests.

LitServe batches concurrent requests and the server runs their rows through the model together, padded to
the longest. A span model with the BiLSTM head (``configs/span.yaml``'s) once read that padding: the backward
direction started at the last padded position, so one user's answer depended on what others sent at the same
moment (issue #24). Here a request of short tweets is sent alone, then among 31 concurrent requests of much
longer tweets, and must get the same answers.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import SENTIMENTS, TEXTS, span_checkpoint
from tests.test_serve import post, serving

OTHERS = 31
# The short tweets of one request; neutral ones are answered with the whole tweet whatever the model says.
PROBE = [{"text": t, "sentiment": s} for t, s in zip(TEXTS, SENTIMENTS) if t and s != "neutral"]
WORDS = (
    "the a my this sunny rainy morning evening phone battery store line game night friends coffee work train"
    " late early again never always really so very love hate miss waiting happy sad tired great worst day"
).split()


def long_tweets(n: int, words: int = 40) -> list[str]:
    """``n`` different tweets of ``words`` words each (longer than ``max_length``: truncated to its 32 tokens)."""
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def loud_lstm_checkpoint(path: Path) -> Path:
    """A span checkpoint with the BiLSTM head whose LSTM speaks up in the answers.

    Two training steps leave the LSTM's contribution small, so that reading padding shifted the scores
    (by up to 0.04 here) without changing any answer: the test would have passed with the defect. Its
    weights x10 and the head's weights on its features x10 make the answers follow what it reads.
    """
    state = torch.load(span_checkpoint(path, head_lstm=True), map_location="cpu", weights_only=False)
    weights = state["state_dict"]
    for name in [name for name in weights if name.startswith("net.lstm.weight")]:
        weights[name] = weights[name] * 10
    features = 2 * weights["net.lstm.weight_hh_l0"].shape[1]  # both directions' outputs, last in the head's input
    weights["net.head.weight"][:, -features:] *= 10
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def lstm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``sentex serve`` of :func:`loud_lstm_checkpoint`, batching up to 32 requests within a second."""
    folder = tmp_path_factory.mktemp("serve-lstm")
    ckpt = loud_lstm_checkpoint(folder / "span-lstm.ckpt")
    args = ["--model", str(ckpt), "--max_batch_size", str(OTHERS + 1), "--batch_timeout", "1.0"]
    with serving(args, logdir=folder) as (url,):
        yield url


def test_a_request_gets_the_same_answers_alone_and_among_31_concurrent_others(lstm_server: str) -> None:
    url = f"{lstm_server}/predict"
    status, alone = post(url, PROBE)
    assert status == 200 and len(alone) == len(PROBE)
    others = [{"text": text, "sentiment": "positive"} for text in long_tweets(OTHERS)]
    start = threading.Barrier(OTHERS + 1)  # all sent at once: one batch, padded to the longest tweets

    def send(body: Any) -> tuple[int, Any]:
        start.wait(timeout=60)
        return post(url, body)

    with ThreadPoolExecutor(OTHERS + 1) as pool:
        answers = list(pool.map(send, [PROBE, *others]))
    assert [status for status, _ in answers] == [200] * (OTHERS + 1)
    crowded = answers[0][1]
    changed = [(a["text"], a["selected_text"], c["selected_text"]) for a, c in zip(alone, crowded) if a != c]
    assert not changed, f"answers that changed with the other requests (text, alone, among others): {changed}"
    assert post(url, PROBE) == (200, alone)
