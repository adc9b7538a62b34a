"""Reward-model losses: regression (Eq. 7), Bradley-Terry (Eq. 8-11), mean-variance Bradley-Terry
(a distribution of rewards per output, Section 5.1), Plackett-Luce rankings."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhflab.losses.common import check_same_shape


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None) -> Tensor:
    """Eq. 11 negated and averaged: mean_i -log σ(r_c,i - r_r,i - m_i).

    chosen_rewards, rejected_rewards: (B,); margin: optional (B,) per-pair margin m_i
    (Touvron et al. 2023, Llama 2: pairs rated "much better" must be separated by more).
    """
    check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    logits = chosen_rewards - rejected_rewards
    if margin is not None:
        check_same_shape(chosen_rewards=chosen_rewards, margin=margin)
        logits = logits - margin
    return -F.logsigmoid(logits).mean()


def mean_variance_bradley_terry_loss(
    chosen_mean: Tensor, chosen_log_variance: Tensor, rejected_mean: Tensor, rejected_log_variance: Tensor
) -> Tensor:
    """Negative log-likelihood of preferences when each output's reward is a distribution,
    R(c, o) ~ N(μ, σ²), compared by Bradley-Terry (Eq. 10) on the drawn rewards:

        P(o ≻ o' | c) = E[σ(R − R')] ≈ σ((μ − μ') / sqrt(1 + (π/8)(σ² + σ'²)))

    since R − R' ~ N(μ − μ', σ² + σ'²) and ∫ σ(a) N(a | m, s²) da ≈ σ(m / sqrt(1 + π s²/8)), the
    probit approximation of Bishop (2006), Eqs. 4.153-4.154. Where annotators disagree about a pair,
    the likelihood favours a larger σ² over a smaller gap of μ, so σ carries the spread of
    preferences that one scalar reward marginalises away (Section 5.1). With σ² = σ'² = 0 this is
    Eq. 11; the loss is the mean over pairs of −log P.

    All four: (B,); variances as log σ² (any real number, so a network's raw output can be used).
    """
    check_same_shape(
        chosen_mean=chosen_mean,
        chosen_log_variance=chosen_log_variance,
        rejected_mean=rejected_mean,
        rejected_log_variance=rejected_log_variance,
    )
    variance = chosen_log_variance.exp() + rejected_log_variance.exp()
    logits = (chosen_mean - rejected_mean) / torch.sqrt(1 + (math.pi / 8) * variance)
    return -F.logsigmoid(logits).mean()


def plackett_luce_loss(rewards: Tensor, ranks: Tensor, mask: Tensor | None = None) -> Tensor:
    """Plackett-Luce negative log-likelihood of rankings, mean over lists.

    Per list: -Σ_{k valid} log( exp(r_k) / Σ_{j valid, rank_j ≥ rank_k} exp(r_j) ).
    rewards: (B, K); ranks: (B, K) integers, lower = better, equal ranks = tie; mask: (B, K) bool
    of valid items (lists of different sizes are padded). Ties use the Breslow denominator: tied
    items stay in each other's denominator, so no order among them is claimed. Terms whose
    denominator is the item alone are log 1 = 0. With K=2 and ranks [0, 1] this is Eq. 11.
    """
    check_same_shape(rewards=rewards, ranks=ranks)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (B, K), got shape {tuple(rewards.shape)}")
    valid = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    check_same_shape(rewards=rewards, mask=valid)
    rewards = torch.where(valid, rewards, torch.zeros_like(rewards))  # padding may hold garbage
    # in_denominator[b, k, j]: item j competes with item k for k's place.
    in_denominator = (ranks.unsqueeze(1) >= ranks.unsqueeze(2)) & valid.unsqueeze(1)
    eye = torch.eye(rewards.shape[1], dtype=torch.bool, device=rewards.device)
    in_denominator = in_denominator | eye  # keeps padded rows finite; no effect on valid rows
    scores = rewards.unsqueeze(1).expand_as(in_denominator)
    log_denominator = torch.logsumexp(scores.masked_fill(~in_denominator, float("-inf")), dim=-1)
    counted = valid & (in_denominator.sum(-1) > 1)
    log_likelihood = torch.where(counted, rewards - log_denominator, torch.zeros_like(rewards))
    return -log_likelihood.sum(-1).mean()


def regression_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Eq. 7 with a mean instead of a sum: mean_i (R_φ(c_i, o_i) - y_i)^2. Shapes equal, any."""
    check_same_shape(predicted=predicted, target=target)
    return F.mse_loss(predicted, target.to(predicted.dtype))


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Fraction of pairs with r_c > r_r; a tie counts 0.5 (a coin flip would pick right half the time)."""
    check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    wins = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return wins.mean().item()
