"""Which unlabelled pair to ask about next: acquisition scores for active preference learning.

A label teaches the reward model R_phi most where R_phi is least sure of the answer. Three orders:

- ``uncertainty``: disagreement of an ensemble of K reward models (query by committee, Seung, Opper &
  Sompolinsky 1992), as Christiano et al. 2017 (Section 2.2.4) select the pairs to show people: the
  variance over members of the Bradley-Terry probability each member gives the pair (Eq. 11's
  σ(R_k(a) − R_k(b))),

      u(a, b) = (1/K) Σ_k (p_k − p̄)²,   p_k = σ(R_k(c, a) − R_k(c, b)),   p̄ = (1/K) Σ_k p_k.

  It depends on reward differences only, so the members' centring offsets
  (:mod:`rlhflab.rewards.ensemble`) change nothing, and members that agree that the pair is a
  coin flip (all p_k ≈ 1/2) score low: that pair is noisy, not informative.
- ``margin``: the smallest reward gap first (margin sampling, Scheffer et al. 2001), the uncertainty
  of one reward model, m(a, b) = −|R_phi(c, a) − R_phi(c, b)|.
- ``random``: a seeded permutation, the baseline every order is measured against.

``position`` (the order items were created in) needs no score. Every score is "higher: ask sooner";
:func:`acquisition_order` turns scores into a queue.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rlhflab.errors import ConfigError

ORDERS = ("position", "uncertainty", "margin", "random")
# The orders a reward model scores (uncertainty needs an ensemble of them).
SCORED_ORDERS = ("uncertainty", "margin")


def ensemble_disagreement(member_first: torch.Tensor, member_second: torch.Tensor) -> torch.Tensor:
    """u = (1/K) Σ_k (p_k − p̄)², p_k = σ(R_k(a) − R_k(b)) (module docstring; Christiano et al. 2017,
    Section 2.2.4). ``member_first``, ``member_second``: the K members' rewards of each pair's two
    completions, (K, N) → (N,). The variance divides by K, as the ensemble's own disagreement does."""
    if member_first.shape != member_second.shape or member_first.dim() != 2:
        raise ValueError(
            f"member rewards must both be (K, N), got {tuple(member_first.shape)} and {tuple(member_second.shape)}"
        )
    probabilities = torch.sigmoid(member_first.double() - member_second.double())
    return probabilities.var(0, unbiased=False)


def margin_score(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """m = −|R_phi(a) − R_phi(b)|: the smallest margin scores highest. (N,), (N,) → (N,)."""
    if first.shape != second.shape:
        raise ValueError(
            f"rewards of the two completions differ in shape: {tuple(first.shape)} and {tuple(second.shape)}"
        )
    return -(first.double() - second.double()).abs()


def random_scores(n: int, seed: int) -> torch.Tensor:
    """A seeded random permutation of 0 … n−1 as scores, so that ``acquisition_order`` of them is a
    uniformly random queue, the same for the same seed."""
    return torch.as_tensor(np.random.default_rng(seed).permutation(n), dtype=torch.float64)


def acquisition_order(scores: Sequence[float] | torch.Tensor) -> list[int]:
    """Indices of ``scores`` highest first; equal scores keep their given order (a stable sort), so
    a queue of ties is the position order."""
    values = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if torch.isnan(values).any():
        raise ValueError(f"acquisition score {int(torch.isnan(values).nonzero()[0])} is NaN")
    return torch.sort(-values, stable=True).indices.tolist()


def check_scorer(order: str, reward) -> None:
    """A one-line ConfigError unless ``reward`` can score pairs for ``order`` (see :func:`score_pairs`)."""
    if order not in ORDERS or order == "position":
        raise ConfigError(f"queue order '{order}' has no score; choose from {', '.join(ORDERS[1:])}")
    if order in SCORED_ORDERS and reward is None:
        raise ConfigError(f"--order {order} scores pairs with a reward model: give --reward DIR")
    if order == "uncertainty" and reward.ensemble is None:
        raise ConfigError(
            f"--order uncertainty needs an ensemble (`rlhflab reward --ensemble K`), but {reward.name} is a single one"
        )


def score_pairs(
    order: str, reward, contexts: Sequence[str], first: Sequence[str], second: Sequence[str], seed: int = 0
) -> torch.Tensor:
    """Each pair's score under ``order`` (one of ORDERS but ``position``), as plain text in (contexts,
    first and second completions) and ``reward`` a reward source (:class:`rlhflab.rewards.base.RewardSource`):
    ``uncertainty`` reads its ensemble's members (a ConfigError if it has none), ``margin`` its
    reward, ``random`` neither (``reward`` may be None). (N,)."""
    check_scorer(order, reward)
    if order == "random":
        return random_scores(len(first), seed)
    if order == "margin":
        return margin_score(reward(contexts, first), reward(contexts, second))
    members = reward.ensemble
    return ensemble_disagreement(members.member_rewards(contexts, first), members.member_rewards(contexts, second))
