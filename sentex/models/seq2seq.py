"""FLAN-T5 (any ``AutoModelForSeq2SeqLM``) + LoRA: the phrase is *generated*."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from sentex.models.base import Batch, ExtractorModule
from sentex.models.components.lora import apply_lora, enable_gradient_checkpointing
from sentex.models.components.pretrained import resolve_model_path
from sentex.models.components.seq2seq_codec import DEFAULT_PROMPT, Seq2SeqCodec


class Seq2SeqExtractor(ExtractorModule):
    """A seq2seq LM that generates the sentiment phrase from a prompt, fine-tuned with LoRA.

    The network is ``self.net`` (the transformers model, LoRA-wrapped); prompting, labels and
    decoding are ``self.codec`` (:class:`~sentex.models.components.seq2seq_codec.Seq2SeqCodec`).

    Args:
        model_name_or_path: Hugging Face model id or local folder.
        prompt_template: prompt with ``{sentiment}`` and ``{text}`` fields.
        max_length: maximum prompt tokens (longer prompts are truncated).
        max_target_length: maximum phrase tokens in training labels.
        lora_r: LoRA rank; ``null`` trains the full model instead.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: module names that get adapters (T5: ``q``, ``k``, ``v``, ``o``, ``wi``, ``wo``).
        gradient_checkpointing: trade compute for activation memory.
        generation: keyword arguments for ``generate`` (``num_beams``, ``max_new_tokens``, ...).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before cosine decay.
    """

    family = "seq2seq"
    # Checkpoints written before the network was renamed ``net`` (sentex 0.1).
    legacy_prefixes: ClassVar[dict[str, str]] = {"model.": "net."}

    def __init__(
        self,
        model_name_or_path: str = "google/flan-t5-base",
        prompt_template: str = DEFAULT_PROMPT,
        max_length: int = 128,
        max_target_length: int = 64,
        lora_r: int | None = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        gradient_checkpointing: bool = False,
        generation: dict[str, Any] | None = None,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_steps)
        self.save_hyperparameters()
        path = resolve_model_path(model_name_or_path)
        self.codec = Seq2SeqCodec(
            AutoTokenizer.from_pretrained(path), prompt_template, max_length, max_target_length, generation
        )
        model = AutoModelForSeq2SeqLM.from_pretrained(path)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if lora_r is not None:
            model = apply_lora(
                model, lora_r, lora_alpha, lora_dropout, lora_target_modules or ["q", "v"], "SEQ_2_SEQ_LM"
            )
        # from_pretrained returns eval mode; Lightning keeps submodule modes, so switch dropout on.
        self.net = model.train()

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        out = self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss

    @torch.no_grad()
    def extract(self, batch: Batch) -> list[str]:
        return self.codec.extract(self.net, batch)

    def target_labels(self, phrases: list[str]) -> torch.Tensor:
        """Padded label ids of ``phrases``; see :meth:`Seq2SeqCodec.target_labels`."""
        return self.codec.target_labels(phrases)

    def sequence_log_probs(self, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        """Summed log-probability of each row's target tokens given its prompt (DPO's sequence score)."""
        return self.codec.sequence_log_probs(self.net, batch, labels)
