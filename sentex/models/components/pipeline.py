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
