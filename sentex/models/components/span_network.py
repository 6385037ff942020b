"""The span network: an encoder and the heads that score start, end and (joint scoring) the pair.

A plain ``nn.Module``: the LightningModule that trains it (:class:`sentex.models.SpanExtractor`),
the frozen DPO reference and an exported model all run this same class.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

SCORINGS = ("independent", "joint")


class SpanLogits(NamedTuple):
    """Raw scores of one batch: ``start``/``end`` ``(batch, tokens)``, ``pair`` ``(batch, tokens, tokens)`` or None."""

    start: torch.Tensor
    end: torch.Tensor
    pair: torch.Tensor | None


class SpanNetwork(nn.Module):
    """Encoder + linear start/end head, plus a low-rank bilinear pair term for joint scoring.

    The pair term ``pair(i, j) = <U h_i, V h_j> / sqrt(d)`` lets the score of a span depend on both
    ends together (a biaffine scorer as in RaSoR-style span models), at ``2·hidden·d`` parameters.

    Args:
        encoder: a transformers encoder (``AutoModel``), optionally LoRA-wrapped.
        head_dropout: dropout on the hidden states before the heads.
        scoring: ``independent`` (start and end only) or ``joint`` (adds the pair term).
        pair_dim: width ``d`` of the pair term's projections.
    """

    def __init__(
        self, encoder: nn.Module, head_dropout: float = 0.1, scoring: str = "independent", pair_dim: int = 64
    ) -> None:
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"span scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden, 2)
        self.scoring = scoring
        if scoring == "joint":
            self.pair_start = nn.Linear(hidden, pair_dim)
            self.pair_end = nn.Linear(hidden, pair_dim)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> SpanLogits:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.dropout(self.encoder(**inputs).last_hidden_state)
        logits = self.head(hidden).float()
        pair = None
        if self.scoring == "joint":
            u, v = self.pair_start(hidden).float(), self.pair_end(hidden).float()
            pair = u @ v.transpose(1, 2) / u.shape[-1] ** 0.5
        return SpanLogits(logits[..., 0], logits[..., 1], pair)

    def head_state(self) -> dict[str, torch.Tensor]:
        """Every weight outside the encoder (what an export stores beside the encoder), float32."""
        state = self.state_dict()
        return {k: v.detach().float().contiguous() for k, v in state.items() if not k.startswith("encoder.")}
