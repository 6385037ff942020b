"""LoRA (peft) wrapping, shared by the model families."""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig, get_peft_model
from torch import nn


def apply_lora(
    model: nn.Module,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    task_type: str | None = None,
) -> nn.Module:
    """Freeze ``model`` and add LoRA adapters (https://arxiv.org/abs/2106.09685) to ``target_modules``."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type=task_type,
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on activation checkpointing in a way that works under peft.

    The non-reentrant variant is used because the reentrant one silently produces no gradients
    when none of the checkpointed inputs requires grad — exactly the case when the embeddings
    are frozen under LoRA (https://github.com/huggingface/transformers/issues/26221). Marking
    the embedding outputs as requiring grad covers models that still use the reentrant path.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
