"""The DPO objective and the numbers that show what alignment changed, as pure functions.

Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) trains a
policy on pairs ``(chosen, rejected)`` against a frozen reference. With
``h = (log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected))``:

* ``sigmoid`` (DPO): ``-(1 - ε) log σ(β h) - ε log σ(-β h)``; ``ε > 0`` is conservative DPO
  (label smoothing: the preference labels are assumed flipped with probability ε);
* ``ipo`` (Azar et al. 2023, https://arxiv.org/abs/2310.12036): ``(h - 1 / (2β))²``, which
  regresses the log-ratio gap to a finite target instead of pushing it to infinity.

Two corrections apply to either:

* R-DPO (Park et al. 2024, https://arxiv.org/abs/2403.19159): ``β h + α (|y_w| - |y_l|)``. A pair
  whose chosen answer is longer already counts as partly satisfied, so length stops being an easy
  way to raise the margin (:func:`rdpo_margin`).
* DPOP (Pal et al. 2024, https://arxiv.org/abs/2402.13228): ``h - λ max(0, log π_ref(y_w) - log π(y_w))``
  penalises any fall of the chosen answer's likelihood below the reference's (:func:`dpop_penalty`),
  which plain DPO allows on pairs that differ by a few tokens.

``expected_jaccard`` is not DPO: :func:`expected_jaccard_loss` maximises the competition metric's
expectation under the span distribution, with a KL to the reference (minimum-risk training,
https://arxiv.org/abs/1512.02433).

The implicit rewards are ``β (log π - log π_ref)`` of each answer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

PAIR_LOSS_TYPES = ("sigmoid", "ipo")
LOSS_TYPES = (*PAIR_LOSS_TYPES, "expected_jaccard")


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
    length_gap: torch.Tensor | None = None,
    rdpo_alpha: float = 0.0,
    dpop_lambda: float = 0.0,
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
        length_gap: ``(batch,)`` ``|chosen| - |rejected|`` in words, for R-DPO.
        rdpo_alpha: R-DPO's α (0: off).
        dpop_lambda: DPOP's λ (0: off).

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
    if rdpo_alpha < 0 or dpop_lambda < 0:
        raise ValueError(f"rdpo_alpha and dpop_lambda must be >= 0, got {rdpo_alpha} and {dpop_lambda}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio - dpop_penalty(policy_chosen_logps, ref_chosen_logps, dpop_lambda)
    z = beta * h
    if rdpo_alpha:
        if length_gap is None:
            raise ValueError("rdpo_alpha needs the pairs' length_gap")
        z = z + rdpo_margin(length_gap, rdpo_alpha)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    elif loss_type == "ipo":
        losses = (z / beta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be one of {', '.join(PAIR_LOSS_TYPES)}, got {loss_type!r}")
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


def rdpo_margin(length_gap: torch.Tensor, alpha: float) -> torch.Tensor:
    """R-DPO's term ``α (|y_w| - |y_l|)``, added to ``β h`` inside the sigmoid.

    >>> rdpo_margin(torch.tensor([2.0, -1.0]), 0.05).tolist()
    [0.10000000149011612, -0.05000000074505806]
    """
    return alpha * length_gap.float()


def dpop_penalty(policy_chosen_logps: torch.Tensor, ref_chosen_logps: torch.Tensor, lam: float) -> torch.Tensor:
    """DPOP's ``λ max(0, log π_ref(y_w) - log π(y_w))``: zero while the chosen answer stays as likely as before.

    >>> dpop_penalty(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]), 5.0).tolist()
    [0.0, 5.0]
    """
    return lam * (ref_chosen_logps - policy_chosen_logps).clamp(min=0)


class ExpectedJaccardOutput(NamedTuple):
    """Per-row loss, expected Jaccard under the policy, and KL(policy ‖ reference) (the last two without gradient)."""

    losses: torch.Tensor
    expected_jaccard: torch.Tensor
    kl: torch.Tensor


def expected_jaccard_loss(
    policy_logp: torch.Tensor, ref_logp: torch.Tensor, jaccards: torch.Tensor, beta: float
) -> ExpectedJaccardOutput:
    """``-Σ_s p(s) J(s) + β KL(p ‖ p_ref)`` per row, summed over every valid span ``s`` exactly.

    Args:
        policy_logp: ``(batch, spans...)`` log-probabilities of the policy's span distribution,
            ``-inf`` on spans outside its support (each row sums to 1 over the rest).
        ref_logp: the same for the frozen reference (same support).
        jaccards: Jaccard of every span with the gold phrase, same shape.
        beta: weight of the KL term.

    >>> lp = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))
    >>> out = expected_jaccard_loss(lp, lp, torch.tensor([[1.0, 0.0, 0.0]]), beta=0.1)
    >>> round(out.losses.item(), 4), round(out.expected_jaccard.item(), 4), round(out.kl.item(), 4)
    (-0.5, 0.5, 0.0)
    """
    support = torch.isfinite(policy_logp)
    p = policy_logp.exp()
    lp = policy_logp.masked_fill(~support, 0.0)
    ref = ref_logp.masked_fill(~support, 0.0)
    expected = (p * jaccards).flatten(1).sum(1)
    kl = (p * (lp - ref)).flatten(1).sum(1)
    return ExpectedJaccardOutput(-expected + beta * kl, expected.detach(), kl.detach())
