"""Where the DPO modules lived in sentex 0.1: configs and checkpoints that name
``sentex.models.dpo.DPOSpanExtractor`` / ``DPOSeq2SeqExtractor`` keep working. New code imports
:mod:`sentex.alignment`."""

from sentex.alignment.seq2seq import DPOSeq2SeqExtractor
from sentex.alignment.span import DPOSpanExtractor

__all__ = ["DPOSeq2SeqExtractor", "DPOSpanExtractor"]
