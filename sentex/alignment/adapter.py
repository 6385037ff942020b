"""DPO for the generative LoRA families (seq2seq, causal): a fresh adapter on the merged SFT model.

The SFT LoRA adapter is merged into the base, a fresh LoRA adapter is the policy, and reference
log-probabilities are computed with that adapter disabled: one copy of the big model in memory.
Checkpoints store the SFT adapter and the policy adapter stacked into one adapter of the base
(:func:`~sentex.models.components.lora.stack_lora`), with the plain family's hyper-parameters: an
ordinary checkpoint of that family that predict, export and ``sentex.load`` use without the SFT file.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sentex.alignment.losses import PAIR_LOSS_TYPES
from sentex.alignment.module import DPOMixin
from sentex.alignment.reference import eval_mode
from sentex.alignment.sft import load_sft_state
from sentex.models.base import Batch
from sentex.models.components.lora import apply_lora, stack_lora, unstack_lora


class AdapterDPOMixin(DPOMixin):
    """DPO on a generative LoRA model: a phrase scores the sum of its target-token log-probabilities.

    A concrete class names its plain family (``plain_family``), peft's task type and the family's
    default LoRA targets, and provides ``score_pairs(batch)`` → ``(chosen, rejected)`` summed
    log-probabilities under ``self.net`` as it is, ``collate_pairs(rows)`` (with ``labels`` of the
    chosen answer) and ``top_answers(batch, k)``. The new policy adapter reuses the SFT model's rank,
    alpha and targets.
    """

    plain_family: ClassVar[type]
    lora_task_type: ClassVar[str]
    default_lora_targets: ClassVar[list[str]]

    def load_sft(self, path: str) -> None:
        hp = self.hparams
        if hp.loss_type not in PAIR_LOSS_TYPES:
            raise ValueError(f"model.loss_type {hp.loss_type!r} needs a span model; {self.family} takes sigmoid or ipo")
        if hp.lora_r is None:
            raise ValueError(f"{self.family} DPO needs a LoRA SFT model (model.lora_r is null)")
        shapes = self.trainable_shapes()
        state = load_sft_state(path, self.family, shapes, self.legacy_prefixes)
        self.load_state_dict(state, strict=False)
        # Kept (a few MB) to write self-contained checkpoints: SFT and policy adapters stacked.
        self._sft_adapter = {k: state[k].detach().float().clone() for k in shapes}
        merged = self.net.merge_and_unload()  # SFT weights folded into the base: the frozen reference
        targets = hp.lora_target_modules or self.default_lora_targets
        self.net = apply_lora(merged, hp.lora_r, hp.lora_alpha, hp.lora_dropout, targets, self.lora_task_type).train()

    @property
    def lora_scale(self) -> float:
        """peft's LoRA scaling ``alpha / r``, the same for the SFT and the policy adapter."""
        return self.hparams.lora_alpha / self.hparams.lora_r

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write an ordinary checkpoint of the plain family: one rank-2r adapter of the *base* model.

        The policy adapter sits on the base with the SFT adapter merged in, so ``W + s·B1A1 + s·B2A2``
        is what the model computes; :func:`stack_lora` writes that as a single adapter (alpha = rank,
        scales folded into B). Resuming ``sentex align`` splits the policy half back out.
        """
        super().on_save_checkpoint(checkpoint)
        # On CPU: the policy's tensors live on the training device, the kept SFT adapter on CPU.
        policy = {k: v.detach().float().cpu() for k, v in checkpoint["state_dict"].items()}
        checkpoint["state_dict"] = stack_lora(self._sft_adapter, policy, self.lora_scale, self.lora_scale)
        rank = 2 * self.hparams.lora_r
        self.as_plain_family(checkpoint, self.plain_family, lora_r=rank, lora_alpha=rank)
        checkpoint["sentex"]["dpo"]["stacked_lora"] = {"policy_rank": self.hparams.lora_r, "scale": self.lora_scale}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("sentex") or {}
        stacked = (meta.get("dpo") or {}).get("stacked_lora")
        if stacked:  # resuming align: train the policy half on, on top of the merged SFT model
            checkpoint["state_dict"] = unstack_lora(checkpoint["state_dict"], stacked["policy_rank"], stacked["scale"])
        super().on_load_checkpoint(checkpoint)

    def pair_log_probs(self, batch: Batch, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not reference:
            return self.score_pairs(batch)
        with self.net.disable_adapter(), eval_mode(self.net):  # adapter off = the merged SFT model
            return self.score_pairs(batch)

    def score_pairs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen, rejected)`` summed log-probabilities of a pair batch under ``self.net``."""
        raise NotImplementedError

    def chosen_lengths(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"] != -100).sum(dim=1).clamp(min=1).float()
