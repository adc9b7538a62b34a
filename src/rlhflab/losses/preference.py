"""Direct preference losses (Section 7.9.2). Log-prob inputs are per sequence, shape (B,)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhflab.losses.common import check_same_shape
from rlhflab.losses.reward import plackett_luce_loss


def _margins(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
    """h = (log π(y_c) - log π_ref(y_c)) - (log π(y_r) - log π_ref(y_r)), shape (B,)."""
    check_same_shape(policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc, ref_rejected_logps=rr)
    return (pc - rc) - (pr - rr)


def _implicit_rewards(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """β (log π - log π_ref) for chosen and rejected: the reward DPO implies (from Eq. 17), detached."""
    return (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023, Eq. 7): mean -log σ(β h), h as in `_margins`.

    With label_smoothing ε (conservative DPO, Mitchell 2023) each label is flipped with
    probability ε: mean -(1-ε) log σ(β h) - ε log σ(-β h), i.e. the cross-entropy against the soft
    label P(chosen ≻ rejected) = 1-ε. ε may be a float or a (B,) tensor of per-pair values (soft
    labels, e.g. Bradley-Terry probabilities); each pair's term is minimised at β h = logit(1-ε).
    Returns (loss, chosen_rewards, rejected_rewards), the last two the implicit rewards
    β(log π - log π_ref), (B,), detached.
    """
    logits = beta * _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if isinstance(label_smoothing, Tensor) and label_smoothing.dim() > 0:
        check_same_shape(logits=logits, label_smoothing=label_smoothing)
        label_smoothing = label_smoothing.to(logits.dtype)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    rewards = _implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return losses.mean(), *rewards


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """rDPO (Chowdhury et al. 2024): mean [(1-ε)(-log σ(βh)) - ε(-log σ(-βh))] / (1 - 2ε).

    Unbiased for the clean-label DPO loss when labels are flipped with known rate ε < 1/2.
    Same arguments and returns as `dpo_loss`.
    """
    eps = label_smoothing
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
    logits = beta * _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = ((1 - eps) * -F.logsigmoid(logits) - eps * -F.logsigmoid(-logits)) / (1 - 2 * eps)
    rewards = _implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return losses.mean(), *rewards


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO (Azar et al. 2023, Eq. 17 there): mean (h - 1/(2β))^2.

    A squared loss with a finite target, so the margin cannot grow without bound on deterministic
    preferences as DPO's can. The IPO paper (and TRL) use per-token *average* log-probs; this
    function takes whatever it is given, so the caller chooses sums or means. Returns as `dpo_loss`.
    """
    h = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = ((h - 1 / (2 * beta)) ** 2).mean()
    rewards = _implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return loss, *rewards


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    policy_kl_logps: Tensor,
    ref_kl_logps: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """KTO (Ethayarajh et al. 2024): mean over examples of λ_y − v(x, y), on *unpaired* labels.

        r(x, y)  = log π(y|x) − log π_ref(y|x)                 the implied reward of Eq. 17, over β
        z_ref    = max(0, mean_j [log π(y'_j|x_j) − log π_ref(y'_j|x_j)]), detached
        v(x, y)  = λ_D σ(β (r(x, y) − z_ref))   if y is desirable
                   λ_U σ(β (z_ref − r(x, y)))   if y is undesirable

    z_ref, the reference point of the prospect-theoretic value v, estimates KL(π ‖ π_ref) from
    *mismatched* pairs (x_j, y'_j): a prompt with another example's completion. It is clamped at 0
    (a KL is non-negative) and detached, so it shifts the value without being trained through.
    Each example thus costs λ_D (1 − σ(β(r − z_ref))) or λ_U (1 − σ(β(z_ref − r))). The KTO paper
    advises λ_D n_D / (λ_U n_U) in [1, 4/3] for n_D desirable and n_U undesirable examples.

    policy_logps, ref_logps, desirable: (B,) summed log-probs of each example's completion and its
    label (bool, True = desirable); policy_kl_logps, ref_kl_logps: (M,) of the mismatched pairs.
    Returns (loss, rewards, z_ref): rewards β r(x, y), (B,), detached; z_ref a scalar tensor.
    """
    check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    check_same_shape(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    z_ref = (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()
    logratios = policy_logps - ref_logps
    desirable = desirable.to(torch.bool)
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - z_ref))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z_ref - logratios))),
    )
    return losses.mean(), (beta * logratios).detach(), z_ref


def slic_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    delta: float = 1.0,
    reg_weight: float = 0.0,
    reg_logps: Tensor | None = None,
) -> Tensor:
    """SLiC-HF (Zhao et al. 2023): mean max(0, δ - log π(y_c) + log π(y_r)) + λ mean(-log π(y_reg)).

    The hinge calibrates the ranking; the cross-entropy term on regularisation targets (SFT or
    reference outputs) keeps the policy near them. reg_logps: (B,) log-probs of those targets;
    when None the chosen responses serve as targets.
    """
    check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    loss = torch.clamp(delta - policy_chosen_logps + policy_rejected_logps, min=0).mean()
    if reg_weight:
        targets = policy_chosen_logps if reg_logps is None else reg_logps
        loss = loss + reg_weight * (-targets).mean()
    return loss


def rrhf_loss(
    sequence_scores: Tensor, rewards: Tensor, mask: Tensor | None, sft_logps: Tensor, sft_weight: float = 1.0
) -> Tensor:
    """RRHF (Yuan et al. 2023): mean over lists of Σ_{r_i < r_j} max(0, p_i - p_j) + w mean(-log π(y_best)).

    sequence_scores: (B, K) length-normalised log-probs p_i; rewards: (B, K); mask: (B, K) bool
    of valid responses (None = all); sft_logps: (B,) summed log-prob of each list's best response.
    """
    check_same_shape(sequence_scores=sequence_scores, rewards=rewards)
    valid = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    check_same_shape(sequence_scores=sequence_scores, mask=valid)
    # worse[b, i, j]: response i has a lower reward than response j, both valid.
    worse = (rewards.unsqueeze(2) < rewards.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)
    hinge = torch.clamp(sequence_scores.unsqueeze(2) - sequence_scores.unsqueeze(1), min=0)
    rank_loss = torch.where(worse, hinge, torch.zeros_like(hinge)).sum(dim=(1, 2)).mean()
    return rank_loss + sft_weight * (-sft_logps).mean()


def pro_loss(sequence_scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """PRO (Song et al. 2023): mean over lists of Σ_k -log( exp(s_k) / Σ_{j≥k} exp(s_j) ).

    Plackett-Luce over the policy's sequence scores, no temperature. sequence_scores: (B, K)
    ordered best first; mask: (B, K) bool, right-padded.
    """
    ranks = torch.arange(sequence_scores.shape[-1], device=sequence_scores.device).expand_as(sequence_scores)
    return plackett_luce_loss(sequence_scores, ranks, mask)
