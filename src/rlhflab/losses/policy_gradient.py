"""Policy-gradient pieces: advantages (GAE, REINFORCE, RLOO, GRPO), PPO-clip (Eq. 16), value loss."""

import torch
from torch import Tensor

from rlhflab.losses.common import check_same_shape, masked_mean, masked_sum


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    δ_t = r_t + γ V_{t+1} - V_t;  A_t = δ_t + γλ A_{t+1};  V and A after the last valid token are 0
    (the episode ends there). rewards, values, mask: (B, T) over completion tokens. Returns
    (advantages, returns), both (B, T) and detached: returns = advantages + values (the critic's
    regression target), and both are 0 wherever the mask is 0.

    The mask says which positions are steps of the episode (nonzero) and which are not (0). Masked
    positions are ignored, whatever they hold (NaN and inf included: they are replaced before any
    arithmetic, since NaN·0 is NaN): the recursion runs over the valid positions only, so a hole in
    the mask is skipped — the next valid position's value bootstraps across it, with one factor of γ,
    exactly as if the hole's position were removed. Right padding is the usual case: the episode then
    ends at the last valid token.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    valid = mask != 0
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    rewards = torch.where(valid, rewards.detach().to(values.dtype), zero)
    values = torch.where(valid, values.detach(), zero)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):  # loop over time, vectorised over the batch
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        step = valid[:, t]
        # A masked position passes the next valid position's V and A through unchanged.
        next_advantage = torch.where(step, advantage, next_advantage)
        next_value = torch.where(step, values[:, t], next_value)
        advantages[:, t] = torch.where(step, advantage, zero)
    return advantages, advantages + values


def ppo_clip_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 16 negated (we minimise): -mean_t min(ρ_t A_t, clip(ρ_t, 1-ε, 1+ε) A_t), ρ_t = π_θ/π_old.

    All inputs (B, T) per token; old_logprobs and advantages are treated as constants.
    Stats: "clip_fraction" = share of tokens with |ρ - 1| > ε; "approx_kl" = mean of (ρ - 1) - log ρ,
    the k3 estimator of KL(π_old‖π_θ) on tokens sampled from π_old (≥ 0, unbiased).
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean(((ratio - 1).abs() > clip_eps).to(ratio.dtype), mask).item(),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask).item(),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float | None = 0.2
) -> Tensor:
    """½ mean_t max((V_t - R_t)^2, (clip(V_t, V_old-ε, V_old+ε) - R_t)^2); clip_eps=None gives ½ MSE.

    The clipped term keeps the critic, like the actor, from moving far from the values it had at
    rollout time (PPO as in Ziegler et al. 2019). All inputs (B, T); old_values, returns constant.
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    returns, old_values = returns.detach(), old_values.detach()
    squared_error = (values - returns) ** 2
    if clip_eps is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        squared_error = torch.max(squared_error, (clipped - returns) ** 2)
    return 0.5 * masked_mean(squared_error, mask)


def policy_gradient_loss(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Surrogate whose gradient is the policy gradient of Eq. 15: -mean_t A_t log π_θ(a_t | s_t).

    logprobs, mask: (B, T); advantages: (B, T) per token (A2C, from a critic) or (B,) per sequence
    (REINFORCE / RLOO / GRPO: return minus baseline), broadcast over the tokens. A is a constant.
    """
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)
    check_same_shape(logprobs=logprobs, advantages=advantages, mask=mask)
    return -masked_mean(advantages.detach() * logprobs, mask)


def sequence_logprob(logprobs: Tensor, mask: Tensor) -> Tensor:
    """log π(y | x) = Σ_t mask_t log π(y_t | x, y_<t). logprobs, mask: (B, T) → (B,)."""
    check_same_shape(logprobs=logprobs, mask=mask)
    return masked_sum(logprobs, mask, dim=-1)


def reinforce_advantages(sequence_rewards: Tensor, baseline: str | float = "batch_mean") -> Tensor:
    """A_i = R_i - b (Williams 1992). b = 0 for "none" (vanilla policy gradient of Section 6.3),
    the batch mean for "batch_mean", or a given constant. (B,) → (B,)."""
    if isinstance(baseline, str):
        if baseline == "none":
            return sequence_rewards
        if baseline == "batch_mean":
            return sequence_rewards - sequence_rewards.mean()
        raise ValueError(f"unknown baseline {baseline!r}; expected 'none', 'batch_mean' or a number")
    return sequence_rewards - float(baseline)


def _groups(sequence_rewards: Tensor, k: int) -> Tensor:
    """(N*K,) → (N, K): prompt i owns rows i*k .. i*k+k-1."""
    if k < 2:
        raise ValueError(f"need k >= 2 samples per prompt to form a baseline, got k={k}")
    if sequence_rewards.dim() != 1 or sequence_rewards.numel() % k != 0:
        shape = tuple(sequence_rewards.shape)
        raise ValueError(f"sequence_rewards must be (N*k,) with k={k}, got shape {shape}")
    return sequence_rewards.view(-1, k)


def rloo_advantages(sequence_rewards: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = R_i - (1/(k-1)) Σ_{j≠i} R_j within a group.

    Leaving out R_i keeps the baseline independent of sample i, so the gradient stays unbiased.
    sequence_rewards: (N*k,), groups contiguous → (N*k,).
    """
    grouped = _groups(sequence_rewards, k)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).reshape(-1)


def grpo_advantages(sequence_rewards: Tensor, k: int, scale_by_std: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO outcome advantages (Shao et al. 2024): A_i = (R_i - mean_g) / (std_g + eps) per group.

    std_g is the sample std with Bessel's correction (torch.std default, as TRL). scale_by_std=False
    gives R_i - mean_g, as Dr. GRPO (Liu et al. 2025), which argues the std biases toward easy or
    hopeless prompts. sequence_rewards: (N*k,), groups contiguous → (N*k,).
    """
    grouped = _groups(sequence_rewards, k)
    advantages = grouped - grouped.mean(-1, keepdim=True)
    if scale_by_std:
        advantages = advantages / (grouped.std(-1, keepdim=True) + eps)
    return advantages.reshape(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = -Σ_v p_v log p_v with p = softmax(logits) over the last dim. (..., V) → (...).

    Computed from log_softmax (logsumexp inside), so large logits don't overflow; -inf logits
    (banned tokens) contribute 0.
    """
    logp = torch.log_softmax(logits, dim=-1)
    logp = logp.masked_fill(torch.isneginf(logp), 0.0)
    return -(torch.exp(logp) * logp).sum(-1)


def potential_shaped_rewards(potentials: Tensor, final_rewards: Tensor, lengths: Tensor) -> Tensor:
    """Dense per-token rewards by potential-based shaping (Ng et al. 1999), for the sparse-reward
    problem of Section 5.1 ("Delayed feedback and reward sparsity"): the base reward is R(c, o) at
    the last token and 0 elsewhere; the shaping term F(s_k, s_{k+1}) = Φ(s_{k+1}) − Φ(s_k) (γ = 1),
    with Φ(s_k) the potential of the state after k tokens and Φ = 0 at the terminal state, gives

        r'_k = Φ_{k+1} − Φ_k   (k < n − 1),        r'_{n−1} = R(c, o) − Φ_{n−1},

    whose sum over the n tokens is R(c, o) − Φ_0: the return moves by a per-context constant, so the
    KL-regularised optimum π* ∝ π_ref·exp(R/β) (Eq. 17) is unchanged while each token is credited
    with the change in potential it caused.

    potentials: (B, T) Φ_k for k = 0 … T − 1 (entries past a row's length are ignored);
    final_rewards: (B,) R(c, o); lengths: (B,) tokens n ≥ 1 of each completion. Returns (B, T),
    zero past each row's length."""
    B, T = potentials.shape
    if final_rewards.shape != (B,) or lengths.shape != (B,):
        raise ValueError(f"shapes {tuple(potentials.shape)}, {tuple(final_rewards.shape)}, {tuple(lengths.shape)}")
    positions = torch.arange(T, device=potentials.device)
    next_potential = torch.cat([potentials[:, 1:], potentials.new_zeros(B, 1)], dim=1)
    last = positions[None, :] == (lengths[:, None] - 1)
    # the terminal state's potential is 0 and the base reward arrives with the last token
    next_potential = torch.where(last, final_rewards[:, None].to(potentials.dtype), next_potential)
    inside = positions[None, :] < lengths[:, None]
    return torch.where(inside, next_potential - potentials, torch.zeros_like(potentials))
