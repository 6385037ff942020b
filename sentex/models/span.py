"""Span extraction on an encoder: predict the first and last token of the phrase.

This is the formulation that won the Kaggle competition: the answer is always an exact substring
of the tweet. The sentiment is the first segment and the tweet the second of a sentence pair;
a linear head scores every tweet token as start and as end; decoding picks the best
``start <= end`` pair and maps it back through the tokenizer's character offsets, so an uncased
model still answers in the tweet's own case.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import AutoModel, AutoTokenizer

from sentex.models.base import Batch, ExtractorModule
from sentex.models.components.lora import apply_lora
from sentex.models.components.pretrained import resolve_model_path
from sentex.models.components.span_codec import SpanCodec
from sentex.models.components.span_math import (
    IGNORE,
    boundary_log_probs,
    boundary_marginals,
    gather_boundaries,
    gather_spans,
    jaccard_boundary_targets,
    joint_span_nll,
    normalize_spans,
    smoothed_span_nll,
)
from sentex.models.components.span_network import SCORINGS, SpanLogits, SpanNetwork

__all__ = ["IGNORE", "SpanExtractor"]


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
        head_lstm: a bidirectional LSTM over the encoder's token states, its output concatenated to
            them before the start/end head (see :class:`SpanNetwork`).
        head_learning_rate: learning rate of the head (default: ``learning_rate``); a fresh head can learn faster.
        neutral_full_tweet: answer neutral tweets with the whole tweet (their phrase almost always is).
        span_label_smoothing: share of the start/end target mass spread evenly over the tweet's tokens
            (named apart from DPO's ``label_smoothing``, which a DPO span module also takes).
        span_soft_targets: weight ``w`` of Jaccard-shaped start/end targets mixed with the one-hot
            ones (see :func:`~sentex.models.components.span_math.jaccard_boundary_targets`); 0 is off.
        recover_shifted_labels: Kaggle tweet data only: train on the phrase a shifted label meant
            (see :mod:`sentex.data.label_noise`).
        reapply_label_shift: Kaggle tweet data only: shift answers the way that data's labels are shifted.
        span_scoring: ``independent`` (start and end softmaxes) or ``joint`` (one softmax over valid
            spans, trained with the compound loss ``(CE_start + CE_end + CE_joint) / 3``).
        lr_schedule: decay after warm-up, ``cosine`` or ``linear`` (to 0 at the last step).
        learning_rate: peak AdamW learning rate of the encoder.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before the decay.
    """

    family = "span"
    # Checkpoints written before the network moved into ``self.net`` (sentex 0.1) name its parts at the top.
    legacy_prefixes: ClassVar[dict[str, str]] = {"encoder.": "net.encoder.", "head.": "net.head."}

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
        head_lstm: bool = False,
        head_learning_rate: float | None = None,
        neutral_full_tweet: bool = True,
        span_label_smoothing: float = 0.0,
        span_soft_targets: float = 0.0,
        recover_shifted_labels: bool = False,
        reapply_label_shift: bool = False,
        span_scoring: str = "independent",
        lr_schedule: str = "cosine",
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_steps, lr_schedule)
        self.save_hyperparameters()
        if not 0.0 <= span_label_smoothing < 1.0:
            raise ValueError(f"model.span_label_smoothing must be in [0, 1), got {span_label_smoothing}")
        if not 0.0 <= span_soft_targets <= 1.0:
            raise ValueError(f"model.span_soft_targets must be in [0, 1], got {span_soft_targets}")
        if span_scoring not in SCORINGS:
            raise ValueError(f"model.span_scoring must be one of {', '.join(SCORINGS)}, got {span_scoring!r}")
        path = resolve_model_path(model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not tokenizer.is_fast:
            raise ValueError(f"{model_name_or_path}: span extraction needs a fast tokenizer (character offsets)")
        self.codec = SpanCodec(
            tokenizer, max_length, max_span_tokens, neutral_full_tweet, recover_shifted_labels, reapply_label_shift
        )
        encoder = AutoModel.from_pretrained(path)
        if lora_r is not None:
            encoder = apply_lora(encoder, lora_r, lora_alpha, lora_dropout, lora_target_modules or ["query", "value"])
        # from_pretrained returns eval mode; Lightning keeps submodule modes, so switch dropout on.
        self.net = SpanNetwork(encoder.train(), head_dropout, span_scoring, lstm=head_lstm)

    def lr_overrides(self) -> dict[str, float]:
        lr = self.hparams.head_learning_rate
        if not lr:
            return {}
        # Everything outside the pretrained encoder is new: the LSTM, the start/end head and the pair term.
        return {f"net.{name}.": lr for name, _ in self.net.named_children() if name not in ("encoder", "dropout")}

    def logits(self, batch: Batch) -> SpanLogits:
        """The network's raw start/end (and pair) scores for a collated batch."""
        return self.codec.logits(self.net, batch)

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        return self.loss_from_logits(self.logits(batch), batch)

    def loss_from_logits(self, logits: SpanLogits, batch: Batch) -> torch.Tensor:
        """The supervised loss of a labelled batch from the network's scores (see ``span_scoring``)."""
        span, allowed = batch["span"], batch["in_tweet"]
        start_logp, end_logp = boundary_log_probs(logits.start, allowed), boundary_log_probs(logits.end, allowed)
        if (span[:, 0] == IGNORE).all():
            # Every phrase was cut off by max_length: nothing to learn, and nll_loss would be 0/0.
            return start_logp.sum() * 0.0
        eps = self.hparams.get("span_label_smoothing", 0.0)
        w = self.hparams.get("span_soft_targets", 0.0)
        soft_start, soft_end = soft_boundary_targets(batch, start_logp.shape[1]) if w > 0 else (None, None)
        start_nll = smoothed_span_nll(start_logp, span[:, 0], allowed, eps, soft_start, w)
        end_nll = smoothed_span_nll(end_logp, span[:, 1], allowed, eps, soft_end, w)
        if logits.pair is None:
            return 0.5 * (start_nll + end_nll)
        # The compound objective of Fajcik et al. (arXiv 2008.12804): boundary and joint terms together.
        return (start_nll + end_nll + joint_span_nll(self.codec.span_log_probs(logits, batch), span)) / 3

    @torch.no_grad()
    def extract(self, batch: Batch) -> list[str]:
        return self.codec.extract(self.net, batch)

    @torch.no_grad()
    def extract_with_scores(self, batch: Batch) -> tuple[list[str], list[dict[str, Any]]]:
        """Predictions plus each row's tweet-token character offsets and start/end probabilities.

        The probabilities are the marginals of the normalised span distribution (what an ensemble
        averages), so out-of-fold files of several models can be stacked or blended.
        """
        scores = self.codec.span_scores(self.net, batch)
        preds = self.codec.decode(batch, scores)
        start, end = boundary_marginals(normalize_spans(scores))
        rows = []
        for i, in_tweet in enumerate(batch["in_tweet"].tolist()):
            idx = [k for k, ok in enumerate(in_tweet) if ok]
            rows.append(
                {
                    "offsets": [list(batch["offsets"][i][k]) for k in idx],
                    "start_probs": [round(start[i, k].item(), 6) for k in idx],
                    "end_probs": [round(end[i, k].item(), 6) for k in idx],
                }
            )
        return preds, rows

    def sequence_log_probs(self, batch: Batch, spans: torch.Tensor) -> torch.Tensor:
        """Log-probability of each row's token span (DPO's sequence score); see :func:`span_log_probs_of`."""
        (out,) = span_log_probs_of(self.codec, self.logits(batch), batch, spans)
        return out


def soft_boundary_targets(batch: Batch, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, tokens)`` Jaccard-shaped start and end targets of a collated batch (zeros where no gold span)."""
    start_t, end_t = torch.zeros(len(batch["text"]), tokens), torch.zeros(len(batch["text"]), tokens)
    for i, (s, e) in enumerate(batch["span"].tolist()):
        if s != IGNORE:
            in_tweet = batch["in_tweet"][i].tolist()
            start_t[i], end_t[i] = jaccard_boundary_targets(batch["text"][i], batch["offsets"][i], in_tweet, s, e)
    device = batch["span"].device
    return start_t.to(device), end_t.to(device)


def span_log_probs_of(codec: SpanCodec, logits: SpanLogits, batch: Batch, *spans: torch.Tensor) -> list[torch.Tensor]:
    """``(batch,)`` log-probability of each row's ``(start, end)``, for each tensor of ``spans``; ``IGNORE`` gives 0.

    Joint scoring: the span's probability under the softmax over valid spans (``-inf`` outside them).
    Independent scoring: ``log p(start) + log p(end)`` of the two boundary softmaxes. The distribution
    is built once and gathered for every tensor (DPO scores chosen and rejected from one pass).
    """
    if logits.pair is not None:
        matrix = codec.span_log_probs(logits, batch)
        return [gather_spans(matrix, s) for s in spans]
    allowed = batch["in_tweet"]
    start, end = boundary_log_probs(logits.start, allowed), boundary_log_probs(logits.end, allowed)
    return [gather_boundaries(start, end, s) for s in spans]
