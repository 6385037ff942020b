"""The span model's pre- and post-processing: rows → tensors (and gold token spans), scores → phrases.

One object serves training (:class:`sentex.models.SpanExtractor`), DPO, and exported models, so an
export tokenizes and decodes exactly like the model that was validated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sentex.data.label_noise import recover_phrase, shift_like_labels
from sentex.models.components.span_math import (
    IGNORE,
    best_spans,
    char_span_to_tokens,
    mean_span_distribution,
    normalize_spans,
    pair_log_probs,
)
from sentex.models.components.span_network import SpanLogits, SpanNetwork

Batch = dict[str, Any]
NETWORK_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class SpanCodec:
    """Tokenizes ``(sentiment, tweet)`` sentence pairs and maps the best span back to the tweet's characters.

    Args:
        tokenizer: a fast tokenizer (character offsets are needed).
        max_length: maximum tokens of sentiment + tweet (the tweet is truncated).
        max_span_tokens: longest span considered (decoding, and the joint distribution's support).
        neutral_full_tweet: answer neutral tweets with the whole tweet.
        recover_shifted_labels: train on the phrase a shifted Kaggle label meant
            (:func:`~sentex.data.label_noise.recover_phrase`).
        reapply_label_shift: shift answers the way the Kaggle labels are shifted
            (:func:`~sentex.data.label_noise.shift_like_labels`).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 128,
        max_span_tokens: int = 64,
        neutral_full_tweet: bool = True,
        recover_shifted_labels: bool = False,
        reapply_label_shift: bool = False,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("span extraction needs a fast tokenizer (character offsets)")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_span_tokens = max_span_tokens
        self.neutral_full_tweet = neutral_full_tweet
        self.recover_shifted_labels = recover_shifted_labels
        self.reapply_label_shift = reapply_label_shift

    def settings(self) -> dict[str, Any]:
        """The constructor arguments besides the tokenizer (an export's ``settings``)."""
        return {
            "max_length": self.max_length,
            "max_span_tokens": self.max_span_tokens,
            "neutral_full_tweet": self.neutral_full_tweet,
            "reapply_label_shift": self.reapply_label_shift,
        }

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        """Rows (dicts of CSV fields) → a batch with the raw fields, tensors, offsets and gold ``span``."""
        batch: Batch = {k: [r[k] for r in rows] for k in rows[0]}
        enc = self.tokenizer(
            batch["sentiment"],
            batch["text"],
            truncation="only_second",
            max_length=self.max_length,
            padding=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        in_tweet = torch.tensor([[s == 1 for s in enc.sequence_ids(i)] for i in range(len(rows))])
        batch.update(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            offsets=enc["offset_mapping"].tolist(),
            in_tweet=in_tweet,
        )
        if "token_type_ids" in enc:
            batch["token_type_ids"] = enc["token_type_ids"]
        if "selected_text" in batch:
            batch["span"] = self.phrase_spans(batch, batch["selected_text"])
        return batch

    def phrase_spans(self, batch: Batch, phrases: list[str]) -> torch.Tensor:
        """``(batch, 2)`` token ``(start, end)`` of each row's phrase (its first occurrence in the tweet).

        ``(IGNORE, IGNORE)`` where the phrase is empty, not in the tweet, or truncated away. With
        ``recover_shifted_labels``, a shifted label is replaced by the phrase it meant.
        """
        spans = []
        for i, (text, phrase) in enumerate(zip(batch["text"], phrases)):
            start = text.find(phrase) if phrase.strip() else -1
            if start < 0:
                spans.append((IGNORE, IGNORE))
                continue
            end = start + len(phrase)
            if self.recover_shifted_labels:
                start, end = recover_phrase(text, start, end)
            spans.append(char_span_to_tokens(batch["offsets"][i], batch["in_tweet"][i].tolist(), start, end))
        return torch.tensor(spans, dtype=torch.long).reshape(-1, 2)

    def logits(self, net: SpanNetwork, batch: Batch) -> SpanLogits:
        """Run ``net`` on a collated batch."""
        return net(**{k: batch[k] for k in NETWORK_INPUTS if k in batch})

    def span_log_probs(self, logits: SpanLogits, batch: Batch) -> torch.Tensor:
        """``(batch, tokens, tokens)`` span scores (see :func:`~sentex.models.components.span_math.pair_log_probs`)."""
        return pair_log_probs(logits.start, logits.end, logits.pair, batch["in_tweet"], self.max_span_tokens)

    def span_scores(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        """Span scores of a network, or the log of the members' mean span distribution for a :class:`SpanEnsemble`."""
        members = getattr(net, "members", None)
        if members is None:
            return self.span_log_probs(self.logits(net, batch), batch)
        return mean_span_distribution(
            [normalize_spans(self.span_log_probs(self.logits(m, batch), batch)) for m in members]
        )

    def decode_spans(self, batch: Batch, span_scores: torch.Tensor) -> list[tuple[int, int]]:
        """Character ``(start, end)`` in its tweet of each row's best span (the stripped tweet for neutral, if set)."""
        out = []
        spans = best_spans(span_scores).tolist()
        for (s, e), offsets, text, sentiment in zip(spans, batch["offsets"], batch["text"], batch["sentiment"]):
            if self.neutral_full_tweet and sentiment == "neutral":
                start = len(text) - len(text.lstrip())
                out.append((start, start + len(text.strip())))
                continue
            start, end = offsets[s][0], offsets[e][1]
            if self.reapply_label_shift:
                start, end = shift_like_labels(text, start, end)
            out.append((start, end))
        return out

    def decode(self, batch: Batch, span_scores: torch.Tensor) -> list[str]:
        """The best span of each row as the tweet's own substring (whole tweet for neutral, if set)."""
        return [text[s:e] for text, (s, e) in zip(batch["text"], self.decode_spans(batch, span_scores))]

    @torch.no_grad()
    def extract(self, net: SpanNetwork, batch: Batch) -> list[str]:
        """The predicted phrase of each row of a collated batch."""
        return self.decode(batch, self.span_scores(net, batch))

    @torch.no_grad()
    def extract_spans(self, net: SpanNetwork, batch: Batch) -> list[tuple[str, int, int]]:
        """The predicted phrase of each row with its character offsets in the tweet."""
        spans = self.decode_spans(batch, self.span_scores(net, batch))
        return [(text[s:e], s, e) for text, (s, e) in zip(batch["text"], spans)]
