"""Alignment of the causal (decoder-only) LoRA model: DPO on summed reply-token log-probabilities.

DPO's home setting: a chat model's reply scored by ``log π(reply | prompt)``, the sum over the
reply's tokens (the phrase and the end-of-turn token). As for seq2seq
(:class:`~sentex.alignment.adapter.AdapterDPOMixin`), the SFT adapter is merged into the base, a fresh
adapter is the policy and the reference is the same network with that adapter disabled; checkpoints
are ordinary ``causal`` checkpoints. Chosen and rejected replies of a batch go through the network
in one pass.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sentex.alignment.adapter import AdapterDPOMixin
from sentex.errors import SentexError
from sentex.models.base import Batch
from sentex.models.causal import DEFAULT_TARGETS, CausalExtractor
from sentex.models.components.causal_match import closest_substring

PAIR_KEYS = ("input_ids", "attention_mask", "labels")


class DPOCausalExtractor(AdapterDPOMixin, CausalExtractor):
    """DPO on the causal LoRA model (``sentex align --config configs/dpo_causal.yaml``).

    Takes the :class:`~sentex.alignment.module.DPOMixin` settings plus the
    :class:`~sentex.models.causal.CausalExtractor` ones, which must match the SFT model's; the new
    policy adapter reuses its rank, alpha and targets. The base must be full precision
    (``quantize_base: null``): the SFT adapter is merged into it, which 4-bit weights cannot hold
    (re-quantizing would round most of the adapter away). An SFT adapter trained on a 4-bit base
    (QLoRA) loads onto the float32 base as it would for export.
    """

    family = "causal"  # checkpoints are ordinary causal LoRA checkpoints (see on_save_checkpoint)
    plain_family = CausalExtractor
    lora_task_type = "CAUSAL_LM"
    default_lora_targets: ClassVar[list[str]] = DEFAULT_TARGETS

    def load_sft(self, path: str) -> None:
        if self.hparams.quantize_base is not None:
            raise SentexError(
                "causal DPO merges the SFT adapter into the base, which a 4-bit base cannot hold: "
                "set model.quantize_base null (a QLoRA SFT adapter loads onto the float32 base)"
            )
        super().load_sft(path)

    def collate_pairs(self, rows: list[dict[str, Any]]) -> Batch:
        batch = CausalExtractor.collate(self, rows)  # prompts + chosen sequences (labels on the reply)
        batch.update(self.codec.sequences(batch["prompt_tokens"], batch["rejected"], prefix="rejected_"))
        batch["pair_valid"] = torch.ones(len(rows), dtype=torch.bool)
        return batch

    def score_pairs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # One forward pass over chosen and rejected sequences stacked, padded (right) to one width.
        chosen = [batch[k] for k in PAIR_KEYS]
        rejected = [batch[f"rejected_{k}"] for k in PAIR_KEYS]
        width = max(chosen[0].shape[1], rejected[0].shape[1])
        fills = (self.codec.tokenizer.pad_token_id, 0, -100)
        ids, mask, labels = (
            torch.cat([_pad_right(c, width, f), _pad_right(r, width, f)]) for c, r, f in zip(chosen, rejected, fills)
        )
        scores = self.codec.sequence_log_probs(self.net, ids, mask, labels)
        n = chosen[0].shape[0]
        return scores[:n], scores[n:]

    @torch.no_grad()
    def top_answers(self, batch: Batch, k: int) -> list[list[str]]:
        """The ``k`` best beams of each row (graded pairs), mapped onto the tweet; rule rows answer alone."""
        out = [[text.strip()] for text in batch["text"]]
        rows = [i for i, s in enumerate(batch["sentiment"]) if not self.codec.by_rule(s)]
        if rows:
            beams = max(k, self.codec.generation.get("num_beams", 1))
            decoded = self.codec.generate(self.net, batch, rows, num_beams=beams, num_return_sequences=k)
            for j, i in enumerate(rows):
                out[i] = [closest_substring(d, batch["text"][i]).phrase for d in decoded[j * k : (j + 1) * k]]
        return out


def _pad_right(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)
