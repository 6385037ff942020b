"""The DPO objective and the numbers that show what alignment changed, as pure functions.

Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) trains a
policy on pairs ``(chosen, rejected)`` against a frozen reference. With
``h = (log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected))``:

* ``sigmoid`` (DPO): ``-(1 - ε) log σ(β h) - ε log σ(-β h)``; ``ε > 0`` is conservative DPO
  (label smoothing: the preference labels are assumed flipped with probability ε);
* ``ipo`` (Azar et al. 2023, https://arxiv.org/abs/2310.12036): ``(h - 1 / (2β))²``, which
  regresses the log-ratio gap to a finite target instead of pushing it to infinity.

The implicit rewards are ``β (log π - log π_ref)`` of each answer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


class DPOOutput(NamedTuple):
    """Per-pair DPO losses and the implicit rewards of both answers (rewards carry no gradient)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> DPOOutput:
    """DPO (or IPO) loss of a batch of preference pairs.

    Args:
        policy_chosen_logps: ``(batch,)`` sequence log-probabilities of ``chosen`` under the policy.
        policy_rejected_logps: ``(batch,)`` the same for ``rejected``.
        ref_chosen_logps: ``(batch,)`` ``chosen`` under the frozen reference.
        ref_rejected_logps: ``(batch,)`` ``rejected`` under the frozen reference.
        beta: strength of the KL constraint to the reference (higher: stay closer).
        label_smoothing: ε of conservative DPO, in ``[0, 0.5)``; only for ``sigmoid``.
        loss_type: ``"sigmoid"`` or ``"ipo"``.

    Returns:
        ``DPOOutput(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``.

    >>> z = torch.zeros(1)
    >>> round(dpo_loss(z, z, z, z).losses.item(), 6)  # log 2 when policy == reference
    0.693147
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    return DPOOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def reward_stats(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch means to log: rewards of both answers, share of pairs ranked right, and the margin.

    >>> stats = reward_stats(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))
    >>> {k: round(v.item(), 3) for k, v in stats.items()}
    {'rewards_chosen': 0.5, 'rewards_rejected': 0.5, 'reward_accuracy': 0.5, 'margin': 0.0}
    """
    return {
        "rewards_chosen": chosen_rewards.mean(),
        "rewards_rejected": rejected_rewards.mean(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "margin": (chosen_rewards - rejected_rewards).mean(),
    }


def over_extracted(pred: str, gold: str) -> float:
    """1.0 when the prediction has more words than the gold phrase (it over-extracts).

    >>> over_extracted("so happy today", "so happy"), over_extracted("happy", "so happy")
    (1.0, 0.0)
    """
    return float(len(pred.split()) > len(gold.split()))


def under_extracted(pred: str, gold: str) -> float:
    """1.0 when the prediction has fewer words than the gold phrase (it under-extracts).

    >>> under_extracted("happy", "so happy"), under_extracted("happy so", "so happy")
    (1.0, 0.0)
    """
    return float(len(pred.split()) < len(gold.split()))
