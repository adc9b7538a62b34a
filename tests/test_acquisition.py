"""Acquisition scores (rlhflab.feedback.acquisition): which unlabelled pair to ask about next."""

from __future__ import annotations

import math

import pytest
import torch

from rlhflab.errors import ConfigError
from rlhflab.feedback.acquisition import (
    acquisition_order,
    ensemble_disagreement,
    margin_score,
    random_scores,
    score_pairs,
)
from rlhflab.rewards.base import RewardSource
from rlhflab.rewards.ensemble import Objective, RewardEnsemble


def test_ensemble_disagreement_is_the_variance_of_the_members_bradley_terry_probabilities_by_hand():
    # pair 0: member 0 gives a − b = 0 (p = 1/2), member 1 gives ln 3 (p = 3/4): mean 5/8, variance 1/64.
    # pair 1: both members give a − b = 2: they agree, so nothing to learn from asking.
    first = torch.tensor([[1.0, 3.0], [math.log(3.0), 2.0]], dtype=torch.float64)
    second = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    assert ensemble_disagreement(first, second).tolist() == pytest.approx([1 / 64, 0.0], abs=1e-12)


def test_ensemble_disagreement_ignores_each_members_centring_offset():
    first, second = torch.randn(3, 5), torch.randn(3, 5)
    shift = torch.tensor([[0.5], [-2.0], [7.0]])  # b_k, one per member, as RewardEnsemble subtracts
    assert torch.allclose(ensemble_disagreement(first + shift, second + shift), ensemble_disagreement(first, second))


def test_members_that_agree_a_pair_is_a_coin_flip_score_lower_than_members_that_disagree():
    coin_flip = ensemble_disagreement(torch.zeros(3, 1), torch.zeros(3, 1))
    split = ensemble_disagreement(torch.tensor([[3.0], [-3.0], [0.0]]), torch.zeros(3, 1))
    assert coin_flip.item() == 0.0 < split.item()


def test_margin_score_is_minus_the_reward_gap_so_the_closest_pair_comes_first():
    scores = margin_score(torch.tensor([1.0, 3.0, -1.0]), torch.tensor([2.0, 0.0, -1.0]))
    assert scores.tolist() == [-1.0, -3.0, 0.0]
    assert acquisition_order(scores) == [2, 0, 1]


def test_acquisition_order_is_highest_first_with_ties_in_their_given_order():
    assert acquisition_order([0.1, 0.5, 0.5, 0.2, 0.5]) == [1, 2, 4, 3, 0]
    with pytest.raises(ValueError, match="score 1 is NaN"):
        acquisition_order([0.0, float("nan")])


def test_random_scores_are_a_seeded_permutation():
    a, b = random_scores(50, seed=3), random_scores(50, seed=3)
    assert a.tolist() == b.tolist()
    assert sorted(a.tolist()) == list(range(50))
    assert a.tolist() != random_scores(50, seed=4).tolist()


def _ensemble_source(member_values: list[dict[str, float]]) -> RewardSource:
    members = [lambda c, o, v=v: torch.tensor([v[x] for x in o]) for v in member_values]
    ensemble = RewardEnsemble(members, [0.0] * len(members), Objective("mean"))
    return RewardSource("test ensemble", ensemble, is_model=True, ensemble=ensemble)


def test_score_pairs_reads_an_ensembles_members_for_uncertainty_and_its_mean_for_margin():
    # member 0 scores every text 0; member 1 puts "x" 4 above "y" and "u" level with "v"
    source = _ensemble_source([{"x": 0.0, "y": 0.0, "u": 0.0, "v": 0.0}, {"x": 4.0, "y": 0.0, "u": 1.0, "v": 1.0}])
    contexts, first, second = ["c", "c"], ["x", "u"], ["y", "v"]
    p = torch.sigmoid(torch.tensor(4.0, dtype=torch.float64))
    expected = float((p - 0.5) / 2) ** 2  # two members at 1/2 and p: variance ((p − 1/2)/2)²
    assert score_pairs("uncertainty", source, contexts, first, second).tolist() == pytest.approx([expected, 0.0])
    assert score_pairs("margin", source, contexts, first, second).tolist() == pytest.approx([-2.0, 0.0])
    assert score_pairs("random", None, contexts, first, second, seed=1).tolist() == random_scores(2, 1).tolist()


def test_score_pairs_refuses_what_cannot_score_in_one_line():
    single = RewardSource("reward model R", lambda c, o: torch.zeros(len(o)), is_model=True)
    with pytest.raises(ConfigError, match="needs an ensemble.*reward model R is a single one"):
        score_pairs("uncertainty", single, ["c"], ["a"], ["b"])
    with pytest.raises(ConfigError, match="give --reward DIR"):
        score_pairs("margin", None, ["c"], ["a"], ["b"])
    with pytest.raises(ConfigError, match="has no score"):
        score_pairs("position", single, ["c"], ["a"], ["b"])
