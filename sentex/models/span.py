"""Span extraction on an encoder: predict the first and last token of the phrase.

This is the formulation that won the Kaggle competition: the answer is always an exact substring
of the tweet. The sentiment is the first segment and the tweet the second of a sentence pair;
a linear head scores every tweet token as start and as end; decoding picks the best
``start <= end`` pair and maps it back through the tokenizer's character offsets, so an uncased
model still answers in the tweet's own case.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from sentex.models.base import Batch, ExtractorModule
from sentex.models.lora import apply_lora
from sentex.optim import SCHEDULES
from sentex.pretrained import resolve_model_path

IGNORE = -100


def char_span_to_tokens(offsets: list[tuple[int, int]], in_tweet: list[bool], start: int, end: int) -> tuple[int, int]:
    """First and last tweet token overlapping characters ``[start, end)``; ``(IGNORE, IGNORE)`` if none.

    >>> offsets = [(0, 0), (0, 1), (2, 6), (7, 11), (0, 0)]
    >>> char_span_to_tokens(offsets, [False, True, True, True, False], 2, 11)
    (2, 3)
    >>> char_span_to_tokens(offsets, [False, True, True, True, False], 3, 5)
    (2, 2)
    """
    hits = [i for i, ((a, b), ok) in enumerate(zip(offsets, in_tweet)) if ok and b > a and a < end and b > start]
    return (hits[0], hits[-1]) if hits else (IGNORE, IGNORE)


def smoothed_span_nll(
    logp: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor, smoothing: float
) -> torch.Tensor:
    """Mean NLL of ``target`` positions with label smoothing spread over the ``allowed`` positions only.

    ``(1 - ε)·(-log p[target]) + ε·mean_{allowed}(-log p)``, averaged over rows whose target is not
    ``IGNORE``. ``F.cross_entropy(label_smoothing=ε)`` would spread ε over every position, including
    the sentiment, special and padding tokens that can never be an answer.

    >>> logp = torch.log(torch.tensor([[0.5, 0.25, 0.25, 1e-9]]))
    >>> allowed = torch.tensor([[True, True, True, False]])
    >>> round(smoothed_span_nll(logp, torch.tensor([0]), allowed, 0.0).item(), 4)  # -log 0.5
    0.6931
    >>> # 0.7 · 0.6931 + 0.3 · (0.6931 + 2 · 1.3863) / 3
    >>> round(smoothed_span_nll(logp, torch.tensor([0]), allowed, 0.3).item(), 4)
    0.8318
    """
    rows = target != IGNORE
    nll = -logp.gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    if smoothing > 0:
        spread = -(logp.masked_fill(~allowed, 0.0).sum(1)) / allowed.sum(1).clamp(min=1)
        nll = (1 - smoothing) * nll + smoothing * spread
    return nll[rows].mean()


def best_spans(start_logp: torch.Tensor, end_logp: torch.Tensor, allowed: torch.Tensor, max_span: int) -> torch.Tensor:
    """Indices ``(start, end)`` maximising ``log p(start) + log p(end)`` with ``start <= end < start + max_span``.

    Args:
        start_logp: ``(batch, tokens)`` start log-probabilities.
        end_logp: ``(batch, tokens)`` end log-probabilities.
        allowed: ``(batch, tokens)`` bool, tokens that may begin/end a span (the tweet's tokens).
        max_span: longest span in tokens.

    Returns:
        ``(batch, 2)`` long tensor.
    """
    n = start_logp.shape[1]
    scores = start_logp[:, :, None] + end_logp[:, None, :]
    idx = torch.arange(n, device=scores.device)
    band = (idx[None, :] >= idx[:, None]) & (idx[None, :] < idx[:, None] + max_span)
    valid = band[None] & allowed[:, :, None] & allowed[:, None, :]
    flat = scores.masked_fill(~valid, float("-inf")).flatten(1).argmax(dim=1)
    return torch.stack([flat // n, flat % n], dim=1)


class SpanExtractor(ExtractorModule):
    """Encoder + start/end head; LoRA or full fine-tuning.

    Args:
        model_name_or_path: encoder id or folder; ``packaged:all-MiniLM-L6-v2`` is the offline default.
        max_length: maximum tokens of sentiment + tweet.
        max_span_tokens: longest phrase considered when decoding.
        lora_r: LoRA rank; ``null`` fine-tunes the whole encoder.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: encoder modules that get adapters (BERT-style: ``query``, ``key``, ``value``, ``dense``).
        head_dropout: dropout before the start/end head.
        head_learning_rate: learning rate of the head (default: ``learning_rate``); a fresh head can learn faster.
        neutral_full_tweet: answer neutral tweets with the whole tweet (their phrase almost always is).
        span_label_smoothing: share of the start/end target mass spread evenly over the tweet's tokens
            (named apart from DPO's ``label_smoothing``, which a DPO span module also takes).
        lr_schedule: decay after warm-up, ``cosine`` or ``linear`` (to 0 at the last step).
        learning_rate: peak AdamW learning rate of the encoder.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before the decay.
    """

    family = "span"

    def __init__(
        self,
        model_name_or_path: str = "packaged:all-MiniLM-L6-v2",
        max_length: int = 128,
        max_span_tokens: int = 64,
        lora_r: int | None = None,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        head_dropout: float = 0.1,
        head_learning_rate: float | None = None,
        neutral_full_tweet: bool = True,
        span_label_smoothing: float = 0.0,
        lr_schedule: str = "cosine",
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_steps)
        self.save_hyperparameters()
        if not 0.0 <= span_label_smoothing < 1.0:
            raise ValueError(f"model.span_label_smoothing must be in [0, 1), got {span_label_smoothing}")
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"model.lr_schedule must be one of {', '.join(SCHEDULES)}, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        path = resolve_model_path(model_name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model_name_or_path}: span extraction needs a fast tokenizer (character offsets)")
        encoder = AutoModel.from_pretrained(path)
        if lora_r is not None:
            encoder = apply_lora(encoder, lora_r, lora_alpha, lora_dropout, lora_target_modules or ["query", "value"])
        # from_pretrained returns eval mode; Lightning keeps submodule modes, so switch dropout on.
        self.encoder = encoder.train()
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.config.hidden_size, 2)

    def lr_overrides(self) -> dict[str, float]:
        lr = self.hparams.head_learning_rate
        return {"head.": lr} if lr else {}

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        batch: Batch = {k: [r[k] for r in rows] for k in rows[0]}
        enc = self.tokenizer(
            batch["sentiment"],
            batch["text"],
            truncation="only_second",
            max_length=self.hparams.max_length,
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
            spans = []
            for i, (text, phrase) in enumerate(zip(batch["text"], batch["selected_text"])):
                start = text.find(phrase)
                spans.append(char_span_to_tokens(batch["offsets"][i], in_tweet[i].tolist(), start, start + len(phrase)))
            batch["span"] = torch.tensor(spans)
        return batch

    def span_log_probs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end log-probabilities over tokens; non-tweet tokens get ``-inf``-like mass."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        hidden = self.encoder(**inputs).last_hidden_state
        logits = self.head(self.dropout(hidden)).float()
        logits = logits.masked_fill(~batch["in_tweet"][..., None], -1e4)
        return F.log_softmax(logits[..., 0], dim=-1), F.log_softmax(logits[..., 1], dim=-1)

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        start_logp, end_logp = self.span_log_probs(batch)
        span = batch["span"]
        if (span[:, 0] == IGNORE).all():
            # Every phrase was cut off by max_length: nothing to learn, and nll_loss would be 0/0.
            return start_logp.sum() * 0.0
        allowed, eps = batch["in_tweet"], self.hparams.get("span_label_smoothing", 0.0)
        return 0.5 * (
            smoothed_span_nll(start_logp, span[:, 0], allowed, eps)
            + smoothed_span_nll(end_logp, span[:, 1], allowed, eps)
        )

    @torch.no_grad()
    def extract(self, batch: Batch) -> list[str]:
        start_logp, end_logp = self.span_log_probs(batch)
        spans = best_spans(start_logp, end_logp, batch["in_tweet"], self.hparams.max_span_tokens).tolist()
        out = []
        for (s, e), offsets, text, sentiment in zip(spans, batch["offsets"], batch["text"], batch["sentiment"]):
            if self.hparams.neutral_full_tweet and sentiment == "neutral":
                out.append(text.strip())
            else:
                out.append(text[offsets[s][0] : offsets[e][1]])
        return out

    def phrase_spans(self, batch: Batch, phrases: list[str]) -> torch.Tensor:
        """Token ``(start, end)`` of each row's phrase (its first occurrence in the tweet).

        ``(IGNORE, IGNORE)`` where the phrase is empty, not in the tweet, or truncated away.
        """
        spans = []
        for i, (text, phrase) in enumerate(zip(batch["text"], phrases)):
            start = text.find(phrase) if phrase.strip() else -1
            if start < 0:
                spans.append((IGNORE, IGNORE))
            else:
                in_tweet = batch["in_tweet"][i].tolist()
                spans.append(char_span_to_tokens(batch["offsets"][i], in_tweet, start, start + len(phrase)))
        return torch.tensor(spans, dtype=torch.long).reshape(-1, 2)

    def sequence_log_probs(self, batch: Batch, spans: torch.Tensor) -> torch.Tensor:
        """Log-probability of each row's token span, ``log p(start) + log p(end)`` (DPO's sequence score)."""
        start_logp, end_logp = self.span_log_probs(batch)
        return gather_span_log_probs(start_logp, end_logp, spans)


def gather_span_log_probs(start_logp: torch.Tensor, end_logp: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """``log p(start) + log p(end)`` of each row's ``(start, end)`` token span; ``IGNORE`` spans score 0.

    >>> logp = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    >>> round(gather_span_log_probs(logp, logp, torch.tensor([[0, 1]])).exp().item(), 4)
    0.125
    """
    valid = (spans != IGNORE).all(dim=1)
    idx = spans.clamp(min=0)
    picked = start_logp.gather(1, idx[:, :1]).squeeze(1) + end_logp.gather(1, idx[:, 1:]).squeeze(1)
    return picked.masked_fill(~valid, 0.0)
