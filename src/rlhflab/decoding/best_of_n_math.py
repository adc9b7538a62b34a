"""Exact best-of-n over a discrete policy table, shared by the toy lab's closed forms and the
sample-based KL estimate of inference-time best-of-n (``decoding``). All arithmetic is float64."""

from __future__ import annotations

import math

import torch


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def kl_per_context(policy, reference) -> torch.Tensor:
    """KL(π(·|c) ‖ π_ref(·|c)) for each context, (C,); 0·log 0 = 0 (π* underflows at tiny β)."""
    policy, reference = _t(policy), _t(reference)
    return torch.special.xlogy(policy, policy).sum(-1) - (policy * torch.log(reference)).sum(-1)


def best_of_n_distribution(reference, reward, n: int) -> torch.Tensor:
    """The exact output distribution of best-of-n under ``reward``, (C, O).

    With F(r) = P_{π_ref}(R ≤ r) and F(r⁻) = P(R < r), the best of n i.i.d. draws has reward r with
    probability F(r)^n − F(r⁻)^n. Given that reward, the kept draw is π_ref conditioned on R = r
    (whichever tied draw is kept, it was drawn from π_ref), so ties in reward are exact, not broken
    by index.

    π_ref's rows are renormalised in float64 first, and the result too: a row summing to 1 + ε
    (a float32 table) makes F(max r)^n = 1 + nε, and the clamps and differences of powers leave
    O(n·ε) rounding; at n = 1024 that was 2e-4 of mass per context.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n ≥ 1, got {n}")
    reference, reward = _t(reference), _t(reward)
    reference = reference / reference.sum(-1, keepdim=True)
    pi = reference.unsqueeze(1)  # (C, 1, O): π_ref(o') for the inner sums
    at_most = (reward.unsqueeze(2) >= reward.unsqueeze(1)).to(torch.float64)  # [c, o, o']: R(o') ≤ R(o)
    tied = (reward.unsqueeze(2) == reward.unsqueeze(1)).to(torch.float64)
    cdf = (at_most * pi).sum(-1).clamp(max=1.0)
    tie_mass = (tied * pi).sum(-1)
    below = (cdf - tie_mass).clamp(min=0.0)
    best_reward_prob = cdf.pow(n) - below.pow(n)
    share = torch.where(tie_mass > 0, reference / tie_mass, torch.zeros_like(reference))
    table = best_reward_prob * share
    return table / table.sum(-1, keepdim=True)


def best_of_n_kl_bound(n: int) -> float:
    """log n − (n−1)/n: the usual best-of-n KL formula, an upper bound on the exact KL."""
    return math.log(n) - (n - 1) / n
