"""Alignment of the span model: DPO on span log-probabilities, or the expected-Jaccard objective.

The span model is fully fine-tuned, so the reference is a frozen deep copy of its network (22M
parameters on MiniLM: cheap). Under joint scoring a span's log-probability is the real one (one
softmax over valid spans); under independent scoring it is ``log p(start) + log p(end)``.
Checkpoints are ordinary ``span`` checkpoints (same weights, plain span hyper-parameters), so
predict, ``sentex.load`` and export load them like any span model, without the SFT file.
"""

from __future__ import annotations

from typing import Any

import torch

from sentex.alignment.losses import PAIR_LOSS_TYPES, expected_jaccard_loss
from sentex.alignment.module import DPOMixin
from sentex.alignment.pairs import PreferencePair
from sentex.alignment.reference import FrozenCopy
from sentex.alignment.sft import load_sft_state
from sentex.metrics import MeanValue
from sentex.models.base import Batch
from sentex.models.components.span_math import (
    IGNORE,
    normalize_spans,
    span_entropy,
    span_jaccards,
    valid_pairs,
)
from sentex.models.span import SpanExtractor, span_log_probs_of


class DPOSpanExtractor(DPOMixin, SpanExtractor):
    """DPO (or the expected-Jaccard objective) on the span model, full fine-tune or LoRA.

    Takes the :class:`~sentex.alignment.module.DPOMixin` settings plus the
    :class:`~sentex.models.span.SpanExtractor` ones, which must match the SFT model's. Pairs whose
    answers are not spans of the tweet (or, under joint scoring, are longer than ``max_span_tokens``)
    are skipped.
    """

    family = "span"
    plain_family = SpanExtractor

    def load_sft(self, path: str) -> None:
        self.val_entropy = MeanValue()
        state = load_sft_state(path, "span", self.trainable_shapes(), self.legacy_prefixes)
        self.load_state_dict(state, strict=False)
        self.reference = FrozenCopy(self.net)

    def trainable_state_keys(self) -> set[str]:
        return {k for k in super().trainable_state_keys() if not k.startswith("reference.")}

    def accepts_pair(self, pair: PreferencePair) -> bool:
        """Both answers must be non-empty substrings of the tweet: a span model can only point at spans."""
        return all(p.strip() and p in pair.text for p in (pair.chosen, pair.rejected))

    # --- batches ---------------------------------------------------------------------------
    def span_jaccards(self, batch: Batch) -> torch.Tensor:
        """``(batch, tokens, tokens)`` Jaccard with the gold phrase of every valid span (the objective's reward).

        Computed in the training step, not in ``collate``: validation batches never need it.
        """
        valid = valid_pairs(batch["in_tweet"].cpu(), self.codec.max_span_tokens)
        rows = zip(batch["text"], batch["offsets"], valid, batch["selected_text"])
        return torch.stack([span_jaccards(text, offsets, v, gold) for text, offsets, v, gold in rows])

    def collate_pairs(self, rows: list[dict[str, Any]]) -> Batch:
        batch = self.codec.collate(rows)  # the tweet once; "span" is the chosen answer's
        batch["rejected_span"] = self.codec.phrase_spans(batch, batch["rejected"])
        ok = (batch["span"] != IGNORE).all(1) & (batch["rejected_span"] != IGNORE).all(1)
        if self.net.scoring == "joint":  # both answers must be in the joint distribution's support
            for key in ("span", "rejected_span"):
                ok &= batch[key][:, 1] - batch[key][:, 0] < self.codec.max_span_tokens
        batch["pair_valid"] = ok
        return batch

    # --- scores ----------------------------------------------------------------------------
    def pair_log_probs(self, batch: Batch, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.codec.logits(self.reference if reference else self.net, batch)  # one pass, both answers
        chosen, rejected = span_log_probs_of(self.codec, logits, batch, batch["span"], batch["rejected_span"])
        ok = batch["pair_valid"]  # outside the support a joint score is -inf: never let it reach the loss
        return chosen.masked_fill(~ok, 0.0), rejected.masked_fill(~ok, 0.0)

    def chosen_lengths(self, batch: Batch) -> torch.Tensor:
        return torch.full((len(batch["text"]),), 2.0, device=batch["span"].device)  # a start and an end

    def span_distribution(self, net: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """``(batch, tokens, tokens)`` log-probabilities of the valid spans under ``net`` (sum to 1 per row)."""
        return normalize_spans(self.codec.span_log_probs(self.codec.logits(net, batch), batch))

    @torch.no_grad()
    def top_answers(self, batch: Batch, k: int) -> list[list[str]]:
        """The ``k`` most likely spans of each row, as the tweet's substrings (graded pairs)."""
        scores = self.codec.span_log_probs(self.logits(batch), batch)
        n = scores.shape[-1]
        top = scores.flatten(1).topk(min(k, n * n), dim=1)
        out = []
        for row, (values, flat) in enumerate(zip(top.values, top.indices.tolist())):
            offsets, text = batch["offsets"][row], batch["text"][row]
            spans = [(f // n, f % n) for f, v in zip(flat, values.tolist()) if v != float("-inf")]
            out.append([text[offsets[s][0] : offsets[e][1]] for s, e in spans])
        return out

    # --- steps -----------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.hparams.loss_type in PAIR_LOSS_TYPES:
            return super().training_step(batch, batch_idx)
        policy = self.span_distribution(self.net, batch)
        with torch.no_grad():
            ref = self.span_distribution(self.reference, batch)
        # Rows with no span overlapping the gold (truncated away) carry no Jaccard signal, and a row
        # with no valid span at all (no tweet token) has a NaN distribution: both are left out.
        jaccards = self.span_jaccards(batch).to(policy.device)
        rows = (jaccards.flatten(1).amax(1) > 0) & torch.isfinite(policy.flatten(1)).any(1)
        out = expected_jaccard_loss(policy, ref, jaccards, self.hparams.beta)
        n = rows.sum().clamp(min=1)
        loss = torch.where(rows, out.losses, torch.zeros_like(out.losses)).sum() / n
        self.check_finite(loss, batch_idx)
        size = int(n.item())
        self.log("align/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/loss", loss, batch_size=size)
        self.log_dict(
            {
                "align/expected_jaccard": out.expected_jaccard[rows].mean(),
                "align/kl": out.kl[rows].mean(),
                "align/span_entropy": span_entropy(policy.detach())[rows].mean(),
            },
            batch_size=size,
        )
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # One forward pass gives the answers, the supervised loss and the entropy of the span distribution.
        logits = self.logits(batch)
        scores = self.codec.span_log_probs(logits, batch)
        preds = self.codec.decode(batch, scores)
        self.val_metrics.update(preds, batch["selected_text"], batch["sentiment"])
        self.log("val/loss", self.loss_from_logits(logits, batch), batch_size=len(preds), sync_dist=True)
        # Rows answered by rule have no distribution worth reporting; rows without a valid span have none.
        scored = torch.tensor([s != "neutral" or not self.codec.neutral_full_tweet for s in batch["sentiment"]])
        entropy = span_entropy(normalize_spans(scores))
        scored = scored.to(entropy.device) & torch.isfinite(entropy)
        self.val_entropy.update(entropy[scored])  # a metric: every process reduces, rows or none
        self.log("val/span_entropy", self.val_entropy, on_step=False, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self.as_plain_family(checkpoint, self.plain_family)  # the weights are a plain span model's
