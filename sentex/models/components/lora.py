"""LoRA (peft) wrapping, shared by the model families."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


def lora_pairs(state: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """The ``(lora_A key, lora_B key)`` of every adapted layer in a peft state dict."""
    return [(key, key.replace(".lora_A.", ".lora_B.")) for key in sorted(state) if ".lora_A." in key]


def stack_lora(
    first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], scale_first: float, scale_second: float
) -> dict[str, torch.Tensor]:
    """One LoRA adapter equal to applying ``first`` and then ``second`` on top of the merged result.

    ``W + s1·B1A1 + s2·B2A2 = W + [s1·B1, s2·B2] · [A1; A2]``: the rank is ``r1 + r2`` and the
    scales are folded into ``B``, so the stacked adapter has scaling 1 (``lora_alpha = r``). This is
    how a DPO policy adapter trained on a merged SFT model becomes an ordinary adapter of the base.

    Args:
        first: the adapter merged first (state-dict tensors, ``lora_A``: ``(r1, in)``, ``lora_B``: ``(out, r1)``).
        second: the adapter trained on top of the merged model, with the same keys.
        scale_first: ``lora_alpha / r`` of ``first``.
        scale_second: ``lora_alpha / r`` of ``second``.

    >>> a1, b1, a2, b2 = torch.ones(1, 2), torch.ones(2, 1), torch.eye(2), torch.eye(2)
    >>> s = stack_lora({"q.lora_A.w": a1, "q.lora_B.w": b1}, {"q.lora_A.w": a2, "q.lora_B.w": b2}, 2.0, 0.5)
    >>> torch.equal(s["q.lora_B.w"] @ s["q.lora_A.w"], 2.0 * b1 @ a1 + 0.5 * b2 @ a2)
    True
    """
    if set(first) != set(second):
        raise ValueError(f"adapters differ in their weights (e.g. {sorted(set(first) ^ set(second))[0]!r})")
    stacked = dict(second)
    for a_key, b_key in lora_pairs(first):
        stacked[a_key] = torch.cat([first[a_key], second[a_key]], dim=0)
        stacked[b_key] = torch.cat([first[b_key] * scale_first, second[b_key] * scale_second], dim=1)
    return stacked


def unstack_lora(stacked: dict[str, torch.Tensor], rank_second: int, scale_second: float) -> dict[str, torch.Tensor]:
    """The ``second`` adapter back out of :func:`stack_lora`'s result (its last ``rank_second`` ranks).

    >>> s = stack_lora({"lora_A.w": torch.ones(1, 2), "lora_B.w": torch.ones(2, 1)},
    ...                {"lora_A.w": torch.eye(2), "lora_B.w": 3 * torch.eye(2)}, 1.0, 0.5)
    >>> second = unstack_lora(s, 2, 0.5)
    >>> torch.equal(second["lora_A.w"], torch.eye(2)), torch.equal(second["lora_B.w"], 3 * torch.eye(2))
    (True, True)
    """
    second = dict(stacked)
    for a_key, b_key in lora_pairs(stacked):
        second[a_key] = stacked[a_key][-rank_second:].clone()
        second[b_key] = stacked[b_key][:, -rank_second:] / scale_second
    return second
