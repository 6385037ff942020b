"""A network and its codec as one inference object: what an exported model and ``sentex.load`` run."""

from __future__ import annotations

from typing import Any

from torch import nn

Batch = dict[str, Any]


class InferencePipeline(nn.Module):
    """Rows → phrases with a family's network and codec, the same two objects its LightningModule trains.

    Args:
        net: the family's network (:class:`~sentex.models.components.span_network.SpanNetwork`, or
            a transformers seq2seq model).
        codec: the family's codec (``collate(rows)``, ``extract(net, batch)``, ``settings()``).
    """

    def __init__(self, net: nn.Module, codec: Any) -> None:
        super().__init__()
        self.net = net
        self.codec = codec

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        return self.codec.collate(rows)

    def extract(self, batch: Batch) -> list[str]:
        return self.codec.extract(self.net, batch)

    def extract_spans(self, batch: Batch) -> list[tuple[str, int | None, int | None]]:
        """Each row's phrase with its character offsets in the text: where the codec decoded it (span
        models), else the phrase's first occurrence; ``None`` offsets for a phrase that is not in the text."""
        if hasattr(self.codec, "extract_spans"):
            return self.codec.extract_spans(self.net, batch)
        out = []
        for text, phrase in zip(batch["text"], self.extract(batch)):
            start = text.find(phrase)
            out.append((phrase, start, start + len(phrase)) if start >= 0 else (phrase, None, None))
        return out
