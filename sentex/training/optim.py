"""Optimizer and learning-rate schedule shared by every sentex module."""

from __future__ import annotations

import math

import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up from 0 to 1, then cosine decay to ``min_ratio``.

    >>> warmup_cosine(0, 10, 110), warmup_cosine(5, 10, 110), warmup_cosine(10, 10, 110)
    (0.0, 0.5, 1.0)
    >>> round(warmup_cosine(60, 10, 110), 6), warmup_cosine(110, 10, 110)
    (0.5, 0.0)
    """
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up from 0 to 1, then linear decay to 0 at ``total_steps``.

    >>> warmup_linear(5, 10, 110), warmup_linear(10, 10, 110), warmup_linear(60, 10, 110), warmup_linear(110, 10, 110)
    (0.5, 1.0, 0.5, 0.0)
    """
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear}


def param_groups(module: nn.Module, weight_decay: float, lr_overrides: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters split by weight decay (none on biases and norms) and by learning rate.

    ``lr_overrides`` maps a parameter-name prefix (e.g. ``"head."``) to its own learning rate.
    """
    groups: dict[tuple[float, float | None], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = weight_decay if p.ndim >= 2 and "norm" not in name.lower() else 0.0
        lr = next((v for k, v in (lr_overrides or {}).items() if name.startswith(k)), None)
        groups.setdefault((decay, lr), []).append(p)
    out = []
    for (decay, lr), params in groups.items():
        group = {"params": params, "weight_decay": decay}
        if lr is not None:
            group["lr"] = lr
        out.append(group)
    return out


def build_optimizer(
    module: nn.Module,
    learning_rate: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    lr_overrides: dict[str, float] | None = None,
    schedule: str = "cosine",
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW plus a warm-up then ``cosine`` or ``linear`` decay ``LambdaLR``, stepped once per optimizer step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"learning-rate schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    decay = SCHEDULES[schedule]
    optimizer = torch.optim.AdamW(param_groups(module, weight_decay, lr_overrides), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay(step, warmup_steps, total_steps))
    return optimizer, scheduler
