"""sentex model families: each is an :class:`~sentex.models.base.ExtractorModule`."""

from sentex.models.base import ExtractorModule
from sentex.models.exported import ExportedExtractor
from sentex.models.seq2seq import Seq2SeqExtractor
from sentex.models.span import SpanExtractor

__all__ = ["ExportedExtractor", "ExtractorModule", "Seq2SeqExtractor", "SpanExtractor"]
