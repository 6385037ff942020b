"""Several span networks that answer as one: their span distributions are averaged.

Members must share the tokenizer (the codec tokenizes once for all of them); they may differ in
everything else (scoring, dtype, quantization). K-fold models of one recipe are the usual members.
"""

from __future__ import annotations

from torch import nn

from sentex.models.components.span_network import SpanNetwork


class SpanEnsemble(nn.Module):
    """A list of :class:`SpanNetwork` members; :meth:`SpanCodec.span_scores` averages their span probabilities.

    Args:
        members: the member networks (at least one).
    """

    def __init__(self, members: list[SpanNetwork]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)
