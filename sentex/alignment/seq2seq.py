"""Alignment of the seq2seq LoRA model: DPO on summed target-token log-probabilities.

The SFT LoRA adapter is merged into the base and a fresh adapter is the policy; checkpoints are
ordinary ``seq2seq`` checkpoints (:class:`~sentex.alignment.adapter.AdapterDPOMixin`, shared with
the causal family).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sentex.alignment.adapter import AdapterDPOMixin
from sentex.models.base import Batch
from sentex.models.components.seq2seq_codec import restore_source_case
from sentex.models.seq2seq import Seq2SeqExtractor


class DPOSeq2SeqExtractor(AdapterDPOMixin, Seq2SeqExtractor):
    """DPO on the seq2seq LoRA model: a phrase scores the sum of its target-token log-probabilities.

    Takes the :class:`~sentex.alignment.module.DPOMixin` settings plus the
    :class:`~sentex.models.seq2seq.Seq2SeqExtractor` ones, which must match the SFT model's; the new
    policy adapter reuses its rank, alpha and targets.
    """

    family = "seq2seq"  # checkpoints are ordinary seq2seq LoRA checkpoints (see on_save_checkpoint)
    plain_family = Seq2SeqExtractor
    lora_task_type = "SEQ_2_SEQ_LM"
    default_lora_targets: ClassVar[list[str]] = ["q", "v"]

    def collate_pairs(self, rows: list[dict[str, Any]]) -> Batch:
        batch = Seq2SeqExtractor.collate(self, rows)  # prompt + chosen labels
        batch["rejected_labels"] = self.target_labels(batch["rejected"])
        batch["pair_valid"] = torch.ones(len(rows), dtype=torch.bool)
        return batch

    def score_pairs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sequence_log_probs(batch, batch["labels"]), self.sequence_log_probs(batch, batch["rejected_labels"])

    @torch.no_grad()
    def top_answers(self, batch: Batch, k: int) -> list[list[str]]:
        """The ``k`` best beams of each row (graded pairs), in the tweet's own spelling where they occur."""
        gen = {**self.codec.generation, "num_beams": max(k, self.codec.generation.get("num_beams", 1))}
        ids = self.net.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_return_sequences=k, **gen
        )
        decoded = self.codec.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [
            [restore_source_case(d, text) for d in decoded[i * k : (i + 1) * k]] for i, text in enumerate(batch["text"])
        ]
