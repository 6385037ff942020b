"""Stage 2, models: the LightningModules of each family (``span``, ``seq2seq``, ``classifier``) over the plain
networks and codecs of :mod:`sentex.models.components`, with what the modules themselves use: the optimizer and
schedules (:mod:`~sentex.models.optim`), the classifier's metrics and confusion-matrix picture."""

from sentex.models.base import ExtractorModule
from sentex.models.causal import CausalExtractor
from sentex.models.classifier import SentimentClassifier
from sentex.models.seq2seq import Seq2SeqExtractor
from sentex.models.span import SpanExtractor

__all__ = ["CausalExtractor", "ExtractorModule", "Seq2SeqExtractor", "SentimentClassifier", "SpanExtractor"]
