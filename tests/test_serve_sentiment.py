"""``sentex serve`` with a sentiment model (automatic sentiment) and with a classifier as the model.

Two real servers in subprocesses, started together once for the module: the untrained span checkpoint with
``--sentiment_model`` the untrained sentiment classifier (random adapters, so its labels differ from tweet to
tweet), and that classifier, exported, as the model. Their answers must equal ``sentex.load``'s on the same rows
(one item, a list, concurrent requests that LitServe batches); bad requests get a one-line 4xx and the next good
request its answer. A sentiment model that is not a tweet-sentiment classifier stops ``sentex serve`` at start
with one line.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from sentex.data.tweets import SENTIMENTS as TWEET_SENTIMENTS
from sentex.deploy.load import Extractor, load
from sentex.deploy.sentiment import Classifier, missing_sentiment
from sentex.deploy.serve import SentexAPI
from sentex.deploy.serve import main as serve_main
from sentex.deploy.serve_requests import Limits, Schema
from sentex.errors import SentexError
from tests.conftest import SENTIMENTS, TEXTS, classifier_checkpoint, require_module, sentex
from tests.helpers import free_port
from tests.test_serve import expected, get, post, serving

MISSING = object()  # an item without a "sentiment" key
# How each item of :func:`auto_items` gives its sentiment, in turn.
VARIANTS: list[Any] = [MISSING, None, "", "auto", " Auto ", "given"]


def auto_items(texts: list[str] = TEXTS) -> list[dict[str, Any]]:
    """Items with every way of leaving the sentiment out, and some with it given."""
    items = []
    for i, text in enumerate(texts):
        variant = VARIANTS[i % len(VARIANTS)]
        item: dict[str, Any] = {"text": text}
        if variant is not MISSING:
            item["sentiment"] = SENTIMENTS[i % len(SENTIMENTS)] if variant == "given" else variant
        items.append(item)
    return items


def expected_auto(extractor: Extractor, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers of ``load(span, sentiment_model=clf)`` to ``items``, with the sentiment it used and its source."""
    texts, given = [item["text"] for item in items], [item.get("sentiment") for item in items]
    used = extractor.sentiments_for(texts, given)
    out = expected(extractor, texts, used)  # offsets as the pipeline decodes them, for the sentiments used
    assert [a["selected_text"] for a in out] == extractor.extract(texts, given)  # extract's own auto path
    for row, sentiment in zip(out, given):
        row["sentiment_source"] = "predicted" if missing_sentiment(sentiment) else "given"
    return out


@pytest.fixture(scope="module")
def classifier_folder(sentiment_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sentiment classifier exported (fp32), so the classifier server loads a folder."""
    from sentex.deploy.export import export

    out = tmp_path_factory.mktemp("serve-clf") / "clf-fp32"
    export(sentiment_ckpt, out, "fp32")
    return out


@pytest.fixture(scope="module")
def servers(
    untrained_span_ckpt: Path, sentiment_ckpt: Path, classifier_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """``auto``: span + ``--sentiment_model``; ``classifier``: the exported classifier as the model."""
    batching = ["--max_batch_size", "8", "--batch_timeout", "0.05"]
    auto = ["--model", str(untrained_span_ckpt), "--sentiment_model", str(sentiment_ckpt), *batching]
    clf = ["--model", str(classifier_folder), *batching]
    with serving(auto, clf, logdir=tmp_path_factory.mktemp("serve-sentiment")) as (auto_url, clf_url):
        yield {"auto": auto_url, "classifier": clf_url}


@pytest.fixture(scope="module")
def auto_extractor(untrained_span_ckpt: Path, sentiment_ckpt: Path) -> Extractor:
    return load(untrained_span_ckpt, sentiment_model=sentiment_ckpt)


@pytest.fixture(scope="module")
def classifier(classifier_folder: Path) -> Classifier:
    return load(classifier_folder)


# --- automatic sentiment ------------------------------------------------------------------------
def test_info_says_which_sentiment_model_is_loaded(servers: dict[str, str], sentiment_ckpt: Path) -> None:
    assert get(f"{servers['auto']}/health") == (200, "ok")
    model = json.loads(get(f"{servers['auto']}/info")[1])["model"]
    assert model["family"] == "span"
    assert model["sentiment_model"]["path"] == str(sentiment_ckpt)
    assert model["sentiment_model"]["family"] == "classifier"
    assert sorted(model["sentiment_model"]["labels"]) == sorted(TWEET_SENTIMENTS)


def test_items_without_sentiment_get_the_classifiers(servers: dict[str, str], auto_extractor: Extractor) -> None:
    items = auto_items()
    want = expected_auto(auto_extractor, items)
    predicted = {a["sentiment"] for a in want if a["sentiment_source"] == "predicted"}
    assert len(predicted) > 1, "the classifier gives these tweets different sentiments, so the test can tell"
    status, body = post(f"{servers['auto']}/predict", items)
    assert status == 200 and body == want
    status, body = post(f"{servers['auto']}/predict", {"text": TEXTS[1]})
    assert status == 200 and body == expected_auto(auto_extractor, [{"text": TEXTS[1]}])[0]
    assert body["sentiment_source"] == "predicted"


def test_a_given_sentiment_is_used_even_where_the_classifier_disagrees(
    servers: dict[str, str], auto_extractor: Extractor
) -> None:
    text = TEXTS[0]
    other = next(s for s in TWEET_SENTIMENTS if s != auto_extractor.sentiment_model.classify([text])[0])
    status, body = post(f"{servers['auto']}/predict", {"text": text, "sentiment": other})
    assert status == 200 and body["sentiment"] == other and body["sentiment_source"] == "given"
    assert body == expected_auto(auto_extractor, [{"text": text, "sentiment": other}])[0]


def test_concurrent_requests_with_and_without_sentiment(servers: dict[str, str], auto_extractor: Extractor) -> None:
    """15 requests at once, batched by LitServe: each gets its own answers, sentiments predicted or given."""
    items = auto_items()
    chunks = [(0, 3), (3, 6), (6, 9), (8, 11)]
    requests: list[Any] = items + [items[i:j] for i, j in chunks]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda body: post(f"{servers['auto']}/predict", body), requests))
    want = expected_auto(auto_extractor, items)
    assert [a[0] for a in answers] == [200] * len(requests)
    assert [a[1] for a in answers[: len(items)]] == want
    assert [a[1] for a in answers[len(items) :]] == [want[i:j] for i, j in chunks]


def test_a_batch_classifies_its_missing_sentiments_in_one_call(
    auto_extractor: Extractor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's ``predict`` on a batch of two requests (in this process, the server's loaded model)."""
    calls: list[list[str]] = []
    classify = auto_extractor.sentiment_model.classify

    def counted(texts: list[str], batch_size: int = 32) -> list[str]:
        calls.append(list(texts))
        return classify(texts, batch_size)

    monkeypatch.setattr(auto_extractor.sentiment_model, "classify", counted)
    api = SentexAPI("unused", Limits(), Schema(auto_sentiment=True), "unused", max_batch_size=8)
    api.model, api.run_device, api.forward_rows = auto_extractor, "cpu", 16
    items = auto_items()
    want = expected_auto(auto_extractor, items)
    calls.clear()
    first, second = api.decode_request(items[0]), api.decode_request(items[1:])
    one, many = api.predict([first, second])
    assert one == want[0] and many == want[1:]
    missing = [item["text"] for item in items if missing_sentiment(item.get("sentiment"))]
    assert calls == [missing], "one classifier call for the batch's rows without sentiment"
    calls.clear()
    given = api.decode_request([{"text": t, "sentiment": s} for t, s in zip(TEXTS, SENTIMENTS)])
    api.predict([given])
    assert calls == [], "no classifier call when every sentiment is given"


AUTO_BAD_REQUESTS = {
    "unknown sentiment": ({"text": "so happy", "sentiment": "glad"}, 422, "'glad' is not one of"),
    "sentiment not a string": ([{"text": "ok"}, {"text": "ok", "sentiment": 1}], 422, "item 1: sentiment must be"),
    "missing text": ({"sentiment": "auto"}, 422, "missing 'text'"),
}


@pytest.mark.parametrize("case", AUTO_BAD_REQUESTS, ids=list(AUTO_BAD_REQUESTS))
def test_a_bad_request_to_the_auto_server_gets_a_4xx(servers: dict[str, str], case: str) -> None:
    body, status, reason = AUTO_BAD_REQUESTS[case]
    got_status, got = post(f"{servers['auto']}/predict", body)
    assert got_status == status, got
    assert set(got) == {"error"} and reason in got["error"] and "\n" not in got["error"]
    assert post(f"{servers['auto']}/predict", {"text": "so happy"})[0] == 200


# --- a classifier as the model ------------------------------------------------------------------
def expected_classes(classifier: Classifier, texts: list[str]) -> tuple[list[str], torch.Tensor]:
    return classifier.classify(texts), classifier.predict_proba(texts)


def check_class_answers(body: list[dict[str, Any]], classifier: Classifier, texts: list[str]) -> None:
    labels, probs = expected_classes(classifier, texts)
    assert [a["text"] for a in body] == texts
    assert [a["label"] for a in body] == labels
    assert all(list(a["probs"]) == classifier.labels for a in body)
    got = torch.tensor([[a["probs"][name] for name in classifier.labels] for a in body])
    assert torch.allclose(got, probs, atol=1e-5)


def test_a_classifier_server_answers_like_load_classify(servers: dict[str, str], classifier: Classifier) -> None:
    url = servers["classifier"]
    info = json.loads(get(f"{url}/info")[1])["model"]
    assert info["family"] == "classifier" and info["labels"] == classifier.labels and info["sentiment_model"] is None
    assert len(set(classifier.classify(TEXTS))) > 1, "the labels differ from tweet to tweet, so the test can tell"
    status, body = post(f"{url}/predict", [{"text": t} for t in TEXTS])
    assert status == 200
    check_class_answers(body, classifier, TEXTS)
    status, body = post(f"{url}/predict", {"text": TEXTS[3], "sentiment": "glad"})  # other keys are ignored
    assert status == 200 and isinstance(body, dict)
    check_class_answers([body], classifier, [TEXTS[3]])
    requests: list[Any] = [{"text": t} for t in TEXTS] + [[{"text": t} for t in TEXTS[i : i + 3]] for i in (0, 4, 8)]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda body: post(f"{url}/predict", body), requests))
    assert [a[0] for a in answers] == [200] * len(requests)
    check_class_answers([a[1] for a in answers[: len(TEXTS)]], classifier, TEXTS)
    for (_, body), i in zip(answers[len(TEXTS) :], (0, 4, 8)):
        check_class_answers(body, classifier, TEXTS[i : i + 3])


CLASSIFIER_BAD_REQUESTS = {
    "missing text": ({"sentiment": "positive"}, 422, "missing 'text'"),
    "text not a string": ([{"text": "ok"}, {"text": None}], 422, "item 1: text must be a string, got null"),
    "a string, not an object": ("so happy", 422, "expected an object with text, or a list; got a string"),
    "text over the limit": ({"text": "a" * 5001}, 413, "the limit is 5000"),
}


@pytest.mark.parametrize("case", CLASSIFIER_BAD_REQUESTS, ids=list(CLASSIFIER_BAD_REQUESTS))
def test_a_bad_request_to_the_classifier_server_gets_a_4xx(servers: dict[str, str], case: str) -> None:
    body, status, reason = CLASSIFIER_BAD_REQUESTS[case]
    got_status, got = post(f"{servers['classifier']}/predict", body)
    assert got_status == status, got
    assert set(got) == {"error"} and reason in got["error"] and "\n" not in got["error"]
    assert post(f"{servers['classifier']}/predict", {"text": "so happy"})[0] == 200


# --- a bad sentiment model ----------------------------------------------------------------------
def test_a_two_class_sentiment_model_stops_serve_at_start_with_one_line(
    untrained_span_ckpt: Path, tmp_path: Path
) -> None:
    require_module("litserve", "sentex serve needs LitServe (pip install litserve)")
    two_class = classifier_checkpoint(tmp_path / "two.ckpt", labels=("bad", "good"))
    port, started = free_port(), time.monotonic()
    args = ["serve", "--model", str(untrained_span_ckpt), "--sentiment_model", str(two_class), "--port", str(port)]
    result = sentex(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"sentex: error: --sentiment_model {two_class}: a sentiment model must classify into negative, neutral,"
        " positive; this one has the labels bad, good"
    )
    assert time.monotonic() - started < 60
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing may be listening"


@pytest.mark.parametrize("case", ["missing", "an extractor", "with a classifier model"])
def test_other_bad_sentiment_models_are_one_line_errors(
    case: str, untrained_span_ckpt: Path, sentiment_ckpt: Path, tmp_path: Path
) -> None:
    """``main`` raises before anything listens (the CLI prints the one line, as above)."""
    require_module("litserve", "sentex serve needs LitServe (pip install litserve)")
    model, sentiment, reason = {
        "missing": (untrained_span_ckpt, tmp_path / "nope.ckpt", "nope.ckpt: no such checkpoint"),
        "an extractor": (untrained_span_ckpt, untrained_span_ckpt, "must be a classifier export or checkpoint, not a"),
        "with a classifier model": (sentiment_ckpt, sentiment_ckpt, "goes with an extractor, and --model"),
    }[case]
    with pytest.raises(SentexError) as err:
        serve_main(["--model", str(model), "--sentiment_model", str(sentiment), "--port", str(free_port())])
    message = str(err.value)
    assert message.startswith(f"--sentiment_model {sentiment}") and reason in message and "\n" not in message
