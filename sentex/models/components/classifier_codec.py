"""Texts to classifier inputs and logits to labels: the half of a sentiment classifier that is not weights.

The codec holds the tokenizer, the label names and the truncation rule. The LightningModule trains
with it and an export (or ``sentex.load``) runs the same object, so a text is cut, tokenized and
decoded identically in training and in inference; :meth:`ClassifierCodec.predict_proba` is that
inference path, a plain function of a network and a list of texts.

Truncation: ``head`` keeps the first ``max_length`` tokens (the tokenizer's own cut); ``head_tail``
keeps the first ``head_share`` of the budget and the end of the text, which for long reviews works
better than the head alone (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification",
arXiv 1905.05583: 128 head + 382 tail tokens of 512). The cut is made on the text at token
boundaries (through the tokenizer's character offsets), so it works with any fast tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sentex.errors import DataError

Batch = dict[str, Any]
TRUNCATIONS = ("head", "head_tail")
# Joins the two halves of a head_tail cut; a plain space adds no token of its own.
CUT_MARK = " "


class ClassifierCodec:
    """Tokenizer, label names and truncation of a sequence classifier.

    Args:
        tokenizer: a fast Hugging Face tokenizer (character offsets are used for ``head_tail``).
        labels: the class names, in the order of the network's outputs.
        max_length: maximum tokens per text, special tokens included.
        truncation: ``head`` or ``head_tail`` (see the module docstring).
        head_share: share of the token budget kept from the start of the text under ``head_tail``.
    """

    def __init__(
        self,
        tokenizer: Any,
        labels: Sequence[str],
        max_length: int = 128,
        truncation: str = "head",
        head_share: float = 0.25,
    ) -> None:
        if truncation not in TRUNCATIONS:
            raise ValueError(f"model.truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
        if not 0.0 <= head_share <= 1.0:
            raise ValueError(f"model.head_share must be in [0, 1], got {head_share}")
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ValueError(f"model.labels must name at least 2 distinct classes, got {list(labels)}")
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.index = {name: i for i, name in enumerate(self.labels)}
        self.max_length = max_length
        self.truncation = truncation
        self.head_share = head_share
        # Tokens the tokenizer adds around a text ([CLS] ... [SEP] for BERT, none for GPT-2).
        self.special_tokens = len(tokenizer("")["input_ids"])

    def settings(self) -> dict[str, Any]:
        """The constructor arguments besides the tokenizer (what an export records)."""
        return {
            "labels": list(self.labels),
            "max_length": self.max_length,
            "truncation": self.truncation,
            "head_share": self.head_share,
        }

    def shorten(self, text: str) -> str:
        """``text`` cut to the token budget as ``truncation`` says (unchanged when it fits or under ``head``).

        The head is the text up to the end of its first ``head`` tokens, the tail the text from the
        start of its last ``budget - head`` tokens; the tokenizer's own truncation then guarantees the
        length even where re-tokenizing the joined text merges differently.
        """
        budget = self.max_length - self.special_tokens
        if self.truncation == "head" or budget <= 0:
            return text
        # verbose=False: this pass is meant to run past the model's maximum length, and says nothing about it.
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        if len(offsets) <= budget:
            return text
        head = int(budget * self.head_share)
        tail = budget - head
        head_text = text[: offsets[head - 1][1]] if head > 0 else ""
        tail_text = text[offsets[len(offsets) - tail][0] :] if tail > 0 else ""
        return f"{head_text}{CUT_MARK}{tail_text}".strip() if head_text and tail_text else head_text or tail_text

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask of a list of texts, padded to the longest."""
        return self.tokenizer(
            [self.shorten(t) for t in texts],
            max_length=self.max_length,
            truncation=True,
            padding=True,
            return_tensors="pt",
        )

    def label_ids(self, labels: Sequence[str]) -> torch.Tensor:
        """Class indices of label names; an unknown name is a :class:`DataError` (the data module checks first)."""
        unknown = sorted({name for name in labels if name not in self.index})
        if unknown:
            raise DataError(f"label(s) {', '.join(map(repr, unknown))} not among the model's {', '.join(self.labels)}")
        return torch.tensor([self.index[name] for name in labels], dtype=torch.long)

    def collate(self, rows: list[dict[str, Any]]) -> Batch:
        """Data-module rows (``id``, ``text``, optional ``label``) to a batch; the raw fields are kept."""
        batch: Batch = dict(self.encode([r["text"] for r in rows]))
        batch["id"] = [r.get("id", str(i)) for i, r in enumerate(rows)]
        batch["text"] = [r["text"] for r in rows]
        gold = [r.get("label") or "" for r in rows]
        if all(gold):
            batch["label"] = gold
            batch["labels"] = self.label_ids(gold)
        return batch

    def logits(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        """``(batch, classes)`` logits of a collated batch."""
        return net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def decode(self, probs: torch.Tensor) -> list[str]:
        """The most probable label of each row."""
        return [self.labels[i] for i in probs.argmax(dim=-1).tolist()]

    @torch.no_grad()
    def predict_proba(self, net: nn.Module, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """``(len(texts), classes)`` class probabilities, in eval mode, batch by batch (the inference path).

        Args:
            net: the classifier network (a transformers sequence-classification model, LoRA or merged).
            texts: the texts.
            batch_size: rows per forward pass.
        """
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        out = []
        try:
            for start in range(0, len(texts), batch_size):
                enc = self.encode(texts[start : start + batch_size])
                batch = {k: v.to(device) for k, v in enc.items()}
                out.append(self.logits(net, batch).float().softmax(dim=-1).cpu())
        finally:
            net.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))
