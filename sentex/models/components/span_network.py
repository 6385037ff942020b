"""The span network: an encoder and the heads that score start, end and (joint scoring) the pair.

A plain ``nn.Module``: the LightningModule that trains it (:class:`sentex.models.SpanExtractor`),
the frozen DPO reference and an exported model all run this same class.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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

    With ``lstm``, a one-layer bidirectional LSTM (``hidden / 2`` units each way) reads the encoder's
    token states and its output is concatenated to them before the heads, so each boundary score
    sees a recurrent summary of the tokens before and after it. It reads each row's real tokens
    only (:meth:`read_tokens`), so an answer does not depend on what it is batched with. Its gain
    over the linear head on MiniLM-L6 and the Kaggle data, folds 0-2, is in the README ("The span
    recipe on the real data").

    Args:
        encoder: a transformers encoder (``AutoModel``), optionally LoRA-wrapped.
        head_dropout: dropout on the hidden states before the heads.
        scoring: ``independent`` (start and end only) or ``joint`` (adds the pair term).
        pair_dim: width ``d`` of the pair term's projections.
        lstm: add the bidirectional LSTM before the heads.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head_dropout: float = 0.1,
        scoring: str = "independent",
        pair_dim: int = 64,
        lstm: bool = False,
    ) -> None:
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"span scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.lstm = nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True) if lstm else None
        features = hidden + 2 * (hidden // 2) if lstm else hidden
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(features, 2)
        self.scoring = scoring
        if scoring == "joint":
            self.pair_start = nn.Linear(features, pair_dim)
            self.pair_end = nn.Linear(features, pair_dim)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> SpanLogits:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        if self.lstm is not None:
            context = self.read_tokens(hidden, attention_mask)
            hidden = torch.cat([hidden, context.to(hidden.dtype)], dim=-1)
        hidden = self.dropout(hidden)
        logits = self.head(hidden).float()
        pair = None
        if self.scoring == "joint":
            u, v = self.pair_start(hidden).float(), self.pair_end(hidden).float()
            pair = u @ v.transpose(1, 2) / u.shape[-1] ** 0.5
        return SpanLogits(logits[..., 0], logits[..., 1], pair)

    def read_tokens(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The BiLSTM's outputs over each row's real tokens only; zeros at padded positions.

        Run over the padded batch, the backward direction would start at the last *padded*
        position, so a tweet's scores would depend on the longest tweet in its batch (issue #24).
        Packing by the attention mask's lengths makes each row's output what it is alone.
        Tokenizers here pad on the right, so a row's real tokens are its first ``length`` positions.
        """
        assert self.lstm is not None
        # The LSTM runs in its own dtype (a bf16 export casts it with the heads).
        states = hidden.to(self.lstm.weight_ih_l0.dtype)
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
        context, _ = self.lstm(packed)
        context, _ = pad_packed_sequence(context, batch_first=True, total_length=hidden.shape[1])
        return context

    def head_state(self) -> dict[str, torch.Tensor]:
        """Every weight outside the encoder (what an export stores beside the encoder), float32."""
        state = self.state_dict()
        return {k: v.detach().float().contiguous() for k, v in state.items() if not k.startswith("encoder.")}
