"""A loaded sentiment classifier, and automatic sentiment for extraction.

``sentex.load`` returns a :class:`Classifier` for a classifier export or checkpoint::

    clf = load("models/sentiment")
    clf.classify(["my phone died again"])         # -> ['negative']
    clf.predict_proba(["my phone died again"])    # (1, 3) probabilities, in the order of clf.labels

Extraction needs each tweet's sentiment; tweets in the wild come without one. An extractor loaded
with ``sentiment_model=`` (``sentex predict --data.sentiment_model``, ``sentex serve/app/bench
--sentiment_model``) asks the classifier for every row whose sentiment is missing
(:func:`fill_sentiments`). Only a classifier whose labels are the three tweet sentiments can do that
(:func:`check_sentiment_classifier`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sentex.data.tweets import SENTIMENTS
from sentex.errors import SentexError
from sentex.models.components.classifier_codec import ClassifierCodec

# What a caller writes for "let the classifier decide" (besides leaving the sentiment out).
AUTO = "auto"


class Classifier:
    """A loaded sequence classifier: texts in, labels and probabilities out.

    The network and codec are those :class:`~sentex.models.classifier.SentimentClassifier` trains
    (merged, cast or int8 for an export), run by the codec's own inference path.

    Attributes:
        family: always ``"classifier"``.
        info: the export manifest (``sentex.json``); for a checkpoint, a minimal one.
    """

    family = "classifier"

    def __init__(self, net: nn.Module, codec: ClassifierCodec, info: dict[str, Any]) -> None:
        self.net = net.eval()
        self.codec = codec
        self.info = info
        self._lock = threading.Lock()  # a web app may call from several threads

    @property
    def labels(self) -> list[str]:
        """Class names, in the order of :meth:`predict_proba`'s columns."""
        return list(self.codec.labels)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """``(len(texts), classes)`` probabilities; rows are batched by length, returned in input order.

        Raises:
            SentexError: a text that is not a string, or a batch size below 1.
        """
        if batch_size < 1:
            raise SentexError(f"batch_size must be at least 1, got {batch_size}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise SentexError(f"row {i}: text must be a string, got {type(text).__name__}")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock, torch.inference_mode():
            probs = self.codec.predict_proba(self.net, [texts[i] for i in order], batch_size)
        out = torch.empty_like(probs)
        out[torch.tensor(order, dtype=torch.long)] = probs
        return out

    def classify(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        """The most probable label of each text."""
        return self.codec.decode(self.predict_proba(texts, batch_size))


def check_sentiment_classifier(classifier: Any, name: str) -> Classifier:
    """``classifier`` if it can give tweets their sentiment, else a one-line :class:`SentexError` naming ``name``."""
    if getattr(classifier, "family", None) != "classifier":
        family = getattr(classifier, "family", type(classifier).__name__)
        raise SentexError(f"{name}: a sentiment model must be a classifier export or checkpoint, not a {family} model")
    if sorted(classifier.labels) != sorted(SENTIMENTS):
        raise SentexError(
            f"{name}: a sentiment model must classify into {', '.join(SENTIMENTS)};"
            f" this one has the labels {', '.join(classifier.labels)}"
        )
    return classifier


def missing_sentiment(value: Any) -> bool:
    """Whether a row's sentiment is left to the classifier: absent, empty or ``"auto"``.

    >>> [missing_sentiment(v) for v in (None, "", " auto ", "negative")]
    [True, True, True, False]
    """
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO))


def fill_sentiments(
    texts: Sequence[str], sentiments: Sequence[Any] | None, classifier: Classifier | None, batch_size: int = 32
) -> list[Any]:
    """Each row's sentiment: the given one, or the classifier's where it is missing (see :func:`missing_sentiment`).

    Without a classifier, missing sentiments stay as they are (the caller's checks name the row).
    """
    given = list(sentiments) if sentiments is not None else [None] * len(texts)
    todo = [i for i, s in enumerate(given) if missing_sentiment(s)]
    if classifier is None or not todo:
        return given
    for i, label in zip(todo, classifier.classify([texts[i] for i in todo], batch_size)):
        given[i] = label
    return given
