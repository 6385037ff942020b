"""Alignment of the seq2seq LoRA model: DPO on summed target-token log-probabilities.

The SFT LoRA adapter is merged into the base, a fresh LoRA adapter is the policy, and reference
log-probabilities are computed with that adapter disabled: one copy of the big model in memory.
Checkpoints store the SFT adapter and the policy adapter stacked into one adapter of the base
(:func:`~sentex.models.components.lora.stack_lora`), with plain seq2seq hyper-parameters: an
ordinary ``seq2seq`` checkpoint that predict, export and ``sentex.load`` use without the SFT file.
"""

from __future__ import annotations

from typing import Any

import torch

from sentex.alignment.losses import PAIR_LOSS_TYPES
from sentex.alignment.module import DPOMixin
from sentex.alignment.reference import eval_mode
from sentex.alignment.sft import load_sft_state
from sentex.models.base import Batch
from sentex.models.components.lora import apply_lora, stack_lora, unstack_lora
from sentex.models.components.seq2seq_codec import restore_source_case
from sentex.models.seq2seq import Seq2SeqExtractor


class DPOSeq2SeqExtractor(DPOMixin, Seq2SeqExtractor):
    """DPO on the seq2seq LoRA model: a phrase scores the sum of its target-token log-probabilities.

    Takes the :class:`DPOMixin` settings plus the :class:`~sentex.models.seq2seq.Seq2SeqExtractor`
    ones, which must match the SFT model's; the new policy adapter reuses its rank, alpha and targets.
    """

    family = "seq2seq"  # checkpoints are ordinary seq2seq LoRA checkpoints (see on_save_checkpoint)

    def load_sft(self, path: str) -> None:
        hp = self.hparams
        if hp.loss_type not in PAIR_LOSS_TYPES:
            raise ValueError(f"model.loss_type {hp.loss_type!r} needs a span model; seq2seq takes sigmoid or ipo")
        if hp.lora_r is None:
            raise ValueError("seq2seq DPO needs a LoRA SFT model (model.lora_r is null)")
        shapes = self.trainable_shapes()
        state = load_sft_state(path, "seq2seq", shapes, self.legacy_prefixes)
        self.load_state_dict(state, strict=False)
        # Kept (a few MB) to write self-contained checkpoints: SFT and policy adapters stacked.
        self._sft_adapter = {k: state[k].detach().float().clone() for k in shapes}
        merged = self.net.merge_and_unload()  # SFT weights folded into the base: the frozen reference
        targets = hp.lora_target_modules or ["q", "v"]
        self.net = apply_lora(merged, hp.lora_r, hp.lora_alpha, hp.lora_dropout, targets, "SEQ_2_SEQ_LM").train()

    @property
    def lora_scale(self) -> float:
        """peft's LoRA scaling ``alpha / r``, the same for the SFT and the policy adapter."""
        return self.hparams.lora_alpha / self.hparams.lora_r

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write an ordinary seq2seq checkpoint: one rank-2r adapter of the *base* model.

        The policy adapter sits on the base with the SFT adapter merged in, so ``W + s·B1A1 + s·B2A2``
        is what the model computes; :func:`stack_lora` writes that as a single adapter (alpha = rank,
        scales folded into B). Resuming ``sentex align`` splits the policy half back out.
        """
        super().on_save_checkpoint(checkpoint)
        # On CPU: the policy's tensors live on the training device, the kept SFT adapter on CPU.
        policy = {k: v.detach().float().cpu() for k, v in checkpoint["state_dict"].items()}
        checkpoint["state_dict"] = stack_lora(self._sft_adapter, policy, self.lora_scale, self.lora_scale)
        rank = 2 * self.hparams.lora_r
        self.as_plain_family(checkpoint, Seq2SeqExtractor, lora_r=rank, lora_alpha=rank)
        checkpoint["sentex"]["dpo"]["stacked_lora"] = {"policy_rank": self.hparams.lora_r, "scale": self.lora_scale}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("sentex") or {}
        stacked = (meta.get("dpo") or {}).get("stacked_lora")
        if stacked:  # resuming align: train the policy half on, on top of the merged SFT model
            checkpoint["state_dict"] = unstack_lora(checkpoint["state_dict"], stacked["policy_rank"], stacked["scale"])
        super().on_load_checkpoint(checkpoint)

    def collate_pairs(self, rows: list[dict[str, Any]]) -> Batch:
        batch = Seq2SeqExtractor.collate(self, rows)  # prompt + chosen labels
        batch["rejected_labels"] = self.target_labels(batch["rejected"])
        batch["pair_valid"] = torch.ones(len(rows), dtype=torch.bool)
        return batch

    def pair_log_probs(self, batch: Batch, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not reference:
            return self._both_log_probs(batch)
        with self.net.disable_adapter(), eval_mode(self.net):  # adapter off = the merged SFT model
            return self._both_log_probs(batch)

    def _both_log_probs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sequence_log_probs(batch, batch["labels"]), self.sequence_log_probs(batch, batch["rejected_labels"])

    def chosen_lengths(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"] != -100).sum(dim=1).clamp(min=1).float()

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
