"""The frontier's pure pieces: best-of-n from one sample, the Eq. 17 reference curve, Gao et al. fits."""

import itertools
import math

import numpy as np
import pytest

from rlhflab.evaluation.frontier import (
    best_of_n_curve,
    best_of_n_weights,
    fit_gao,
    gao_curve,
    measured_fall,
    per_prompt_means,
    powers_of_two,
    reference_betas,
    reference_curve,
    reward_matrix,
    rising_at,
)
from tests._env import TEST_SEED


def test_best_of_n_weights_are_a_distribution_from_uniform_at_n_1_to_the_maximum_at_n_N():
    for n in range(1, 9):
        assert best_of_n_weights(8, n).sum() == pytest.approx(1.0)
    assert best_of_n_weights(8, 1) == pytest.approx(np.full(8, 1 / 8))
    assert best_of_n_weights(8, 8) == pytest.approx(np.eye(8)[-1])
    with pytest.raises(ValueError, match="1 <= n <= 8"):
        best_of_n_weights(8, 9)


def test_best_of_n_from_one_sample_equals_the_average_over_every_n_subset():
    rng = np.random.default_rng(TEST_SEED)
    proxy, oracle = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    for point in best_of_n_curve(proxy, oracle, [1, 2, 3, 7]):
        n = point["n"]
        brute = [
            np.mean([oracle[p, max(s, key=lambda i: proxy[p, i])] for s in itertools.combinations(range(7), n)])
            for p in range(3)
        ]
        assert point["per_prompt_J"] == pytest.approx(brute)
        assert point["J"] == pytest.approx(np.mean(brute))


def test_best_of_n_breaks_ties_in_the_proxy_at_random_in_expectation():
    proxy, oracle = np.array([[0.0, 1.0, 1.0]]), np.array([[5.0, 2.0, 4.0]])
    (point,) = best_of_n_curve(proxy, oracle, [3])
    assert point["J"] == pytest.approx(3.0)  # the two tied best draws, each kept half the time


def test_best_of_n_kl_is_zero_at_n_1_and_rises_with_n_both_analytic_and_plug_in():
    rng = np.random.default_rng(TEST_SEED)
    proxy, oracle = rng.normal(size=(5, 32)), rng.normal(size=(5, 32))
    points = best_of_n_curve(proxy, oracle, powers_of_two(32))
    assert [p["n"] for p in points] == [1, 2, 4, 8, 16, 32]
    assert points[0]["kl_bound"] == 0.0 and points[0]["kl_estimate"] == pytest.approx(0.0, abs=1e-12)
    assert points[0]["J"] == pytest.approx(oracle.mean())
    for a, b in zip(points, points[1:]):
        assert b["kl_bound"] > a["kl_bound"] and b["kl_estimate"] > a["kl_estimate"]
        assert b["kl_estimate"] <= b["kl_bound"] + 1e-9  # the formula bounds the exact KL
        assert b["J_hat"] > a["J_hat"]  # selecting by the proxy raises the proxy
    assert all(p["kl_estimate"] <= math.log(32) for p in points)


def test_best_of_n_plug_in_kl_merges_repeated_texts():
    proxy, oracle = np.array([[1.0, 1.0, 0.0, 0.0]]), np.zeros((1, 4))
    texts = [["a", "a", "b", "b"]]
    # two atoms of mass 1/2: best of 2 picks "a" with probability 3/4
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    (point,) = best_of_n_curve(proxy, oracle, [2], texts)
    assert point["kl_estimate"] == pytest.approx(expected)


def test_reference_curve_starts_at_pi_0_and_rises_monotonically_to_the_best_draw():
    rng = np.random.default_rng(TEST_SEED)
    # distinct rewards a unit apart, so that the smallest beta of the grid puts all mass on the best
    oracle = np.stack([rng.permutation(16) for _ in range(6)]) + rng.normal(size=(6, 1))
    betas = reference_betas(oracle)
    assert betas[0] == math.inf and all(a > b for a, b in zip(betas, betas[1:]))
    points = reference_curve(oracle, betas)
    assert points[0]["kl"] == 0.0 and points[0]["J"] == pytest.approx(oracle.mean())
    for a, b in zip(points, points[1:]):
        assert b["kl"] >= a["kl"] - 1e-12 and b["J"] >= a["J"] - 1e-12
    assert points[-1]["J"] == pytest.approx(oracle.max(1).mean(), abs=1e-3)
    assert points[-1]["kl"] == pytest.approx(math.log(16), abs=1e-2)  # all mass on one of 16 draws


def test_reference_curve_gives_the_most_J_any_reweighting_of_the_draws_reaches_at_its_kl():
    rng = np.random.default_rng(TEST_SEED)
    oracle = rng.normal(size=(1, 10))
    curve = reference_curve(oracle, [math.inf, *np.geomspace(1e3, 1e-3, 400)])
    kls, Js = [p["kl"] for p in curve], [p["J"] for p in curve]
    for _ in range(200):
        q = rng.dirichlet(np.full(10, 0.5))
        kl = float((q * np.log(np.maximum(q, 1e-300) * 10)).sum())
        if kl < kls[-1]:
            assert float(q @ oracle[0]) <= np.interp(kl, kls, Js) + 1e-3


def test_reference_curve_rejects_a_non_positive_beta():
    with pytest.raises(ValueError, match="beta must be positive"):
        reference_curve(np.zeros((1, 3)), [0.0])


def _noisy_curve(form, alpha, beta, kl, prompts=300, noise=0.05, seed=TEST_SEED):
    rng = np.random.default_rng(seed)
    clean = gao_curve(np.sqrt(kl), alpha, beta, form)
    return clean[None, :] + rng.normal(scale=noise, size=(prompts, len(kl)))


@pytest.mark.parametrize(
    "form, alpha, beta, kl",
    [
        ("bon", 0.5, 0.1, np.array([0.0, 0.3, 0.9, 1.9, 3.0, 4.5, 6.0, 9.0, 14.0])),
        ("rl", 0.4, 0.25, np.array([0.0, 0.5, 2.0, 4.0, 8.0, 12.0, 20.0, 30.0])),
    ],
)
def test_gao_fit_recovers_known_coefficients_and_peak_from_a_noisy_curve(form, alpha, beta, kl):
    fit = fit_gao(kl, _noisy_curve(form, alpha, beta, kl), form, seed=TEST_SEED)
    assert fit.alpha == pytest.approx(alpha, abs=0.05) and fit.beta == pytest.approx(beta, abs=0.05)
    assert fit.alpha_ci[0] < alpha < fit.alpha_ci[1] or abs(fit.alpha - alpha) < 0.01
    assert fit.beta_ci[0] < beta < fit.beta_ci[1] or abs(fit.beta - beta) < 0.01
    d_peak = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    assert fit.peak_kl == pytest.approx(d_peak**2, rel=0.25)
    assert fit.peak_kl_ci[0] <= fit.peak_kl <= fit.peak_kl_ci[1]
    assert fit.peaked_fraction > 0.99 and not fit.extrapolated
    assert "peaks at KL" in fit.describe() and "inside the measured range" in fit.describe()
    assert rising_at(fit, 0.5 * fit.peak_kl) and not rising_at(fit, 2 * fit.peak_kl)


def test_gao_fit_of_a_curve_that_never_turns_reports_no_peak():
    kl = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    fit = fit_gao(kl, _noisy_curve("bon", 0.3, -0.05, kl), "bon")
    assert math.isinf(fit.peak_kl) and fit.peak_gain is None
    assert "no peak" in fit.describe() and rising_at(fit, 4.0)


def test_gao_fit_needs_enough_points_and_prompts():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_gao([0.0, 1.0], np.zeros((4, 2)), "bon")
    with pytest.raises(ValueError, match="at least 2 prompts"):
        fit_gao([0.0, 1.0, 2.0], np.zeros((1, 3)), "rl")
    with pytest.raises(ValueError, match="unknown form"):
        fit_gao([0.0, 1.0, 2.0], np.zeros((2, 3)), "dpo")


def test_rewards_regroup_by_prompt():
    index = [0, 1, 0, 1, 0, 1]
    assert per_prompt_means([1, 10, 2, 20, 3, 30], index, 2) == pytest.approx([2.0, 20.0])
    assert reward_matrix([1, 10, 2, 20, 3, 30], index, 2).tolist() == [[1, 2, 3], [10, 20, 30]]
    with pytest.raises(ValueError, match="same number of samples"):
        reward_matrix([1, 2, 3], [0, 0, 1], 2)


def test_measured_fall_pairs_the_highest_point_with_the_point_of_largest_kl():
    rng = np.random.default_rng(TEST_SEED)
    kl = [0.0, 4.0, 1.0, 2.0]  # not in KL order: the largest KL is the second point
    means = np.array([0.0, 0.2, 0.3, 0.5])
    per_prompt = means + rng.normal(scale=0.01, size=(50, 1)) + rng.normal(scale=0.01, size=(50, 4))
    fall = measured_fall(kl, per_prompt)
    assert (fall["best"], fall["last"], fall["best_kl"], fall["last_kl"]) == (3, 1, 2.0, 4.0)
    assert fall["fall"] == pytest.approx(0.3, abs=0.01) and fall["z"] > 20
