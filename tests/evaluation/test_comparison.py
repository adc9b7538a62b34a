"""Method comparisons over seeds × prompts: the crossed interval, what budget would resolve an effect,
J at matched KL, and the summary compare writes."""

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from rlhflab.evaluation.comparison import (
    VarianceComponents,
    crossed_mean,
    effect_line,
    resolves,
    resolving_budget,
    summarize_seeds,
    summary_markdown,
    value_at_kl,
)
from tests._env import TEST_SEED


def test_crossed_mean_matches_the_two_way_anova_worked_by_hand():
    # grand mean 3.5; seed means 2, 5; prompt means 2, 3, 5.5
    # MS_seed = 3·(1.5² + 1.5²)/1 = 13.5; MS_prompt = 2·(1.5² + 0.5² + 2²)/2 = 6.5
    # residuals ±(0.5, 0.5, −1): MS_residual = 3/2 = 1.5
    # σ²_seed = (13.5 − 1.5)/3 = 4, σ²_prompt = (6.5 − 1.5)/2 = 2.5
    # se² = 4/2 + 2.5/3 + 1.5/6 = (13.5 + 6.5 − 1.5)/6; df = 18.5² / (13.5²/1 + 6.5²/2 + 1.5²/2)
    e = crossed_mean([[1, 2, 3], [3, 4, 8]])
    assert e.mean == pytest.approx(3.5)
    assert (e.components.seed, e.components.prompt, e.components.residual) == pytest.approx((4.0, 2.5, 1.5))
    assert e.se == pytest.approx(math.sqrt(18.5 / 6))
    assert e.df == pytest.approx(18.5**2 / (13.5**2 + 6.5**2 / 2 + 1.5**2 / 2))
    half = student_t.ppf(0.975, e.df) * e.se
    assert e.ci == pytest.approx((3.5 - half, 3.5 + half))
    assert e.seed_share == pytest.approx((4 / 2) / (18.5 / 6))
    assert not e.beyond_noise  # df 1.7: the interval is wide


def test_one_seed_gives_the_paired_interval_over_prompts_and_no_seed_component():
    d = np.array([[0.1, 0.3, 0.2, 0.6]])
    e = crossed_mean(d)
    assert e.components.seed is None
    assert e.se == pytest.approx(d[0].std(ddof=1) / 2) and e.df == pytest.approx(3)
    assert resolving_budget(e, "seeds") is None  # the seed spread is unknown: no projection along seeds
    assert crossed_mean([[0.5]]).se is None
    flat = crossed_mean([[0.2, 0.2], [0.2, 0.2]])
    assert flat.se == 0 and flat.ci is None and not flat.beyond_noise


def _simulated_coverage(rng, seeds, prompts, sd_seed, sd_prompt, sd_residual, runs=1500):
    """Share of runs whose crossed interval, and whose interval over all cells as if independent,
    holds the true mean (0)."""
    crossed = naive = 0
    for _ in range(runs):
        d = (
            rng.normal(0, sd_seed, (seeds, 1))
            + rng.normal(0, sd_prompt, (1, prompts))
            + rng.normal(0, sd_residual, (seeds, prompts))
        )
        e = crossed_mean(d)
        crossed += e.ci[0] <= 0 <= e.ci[1]
        half = student_t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
        naive += abs(d.mean()) <= half
    return crossed / runs, naive / runs


@pytest.mark.parametrize(
    "sd_seed, sd_prompt, sd_residual",
    [(0.1, 0.2, 0.3), (0.3, 0.05, 0.1), (0.0, 0.3, 0.1)],
    ids=["balanced", "seeds-dominate", "prompts-dominate"],
)
def test_crossed_interval_holds_the_true_mean_at_its_level_where_cells_as_independent_do_not(
    sd_seed, sd_prompt, sd_residual
):
    rng = np.random.default_rng(TEST_SEED)
    crossed, naive = _simulated_coverage(rng, 3, 32, sd_seed, sd_prompt, sd_residual)
    assert 0.92 <= crossed <= 0.99, crossed
    assert naive < 0.85, naive  # 96 cells treated as independent: far too narrow


def test_resolving_budget_with_one_component_is_the_n_times_t_se_over_effect_squared_scaling():
    # one seed, prompts only: se(P) = sqrt(v / P), df = P − 1
    v, effect, prompts = 0.09, 0.05, 10
    e = crossed_mean(np.array([[0.0] * prompts]))  # only the shape and level are used below
    e.mean, e.components = effect, VarianceComponents(None, v, 0.0)
    needed = resolving_budget(e, "prompts")
    brute = next(n for n in range(2, 10_000) if effect > student_t.ppf(0.975, n - 1) * math.sqrt(v / n))
    assert needed == brute
    # the scaling of the brief: P · (z·se/|effect|)², z → 1.96 when the count is large
    se = math.sqrt(v / prompts)
    assert needed == pytest.approx(prompts * (1.96 * se / effect) ** 2, rel=0.02)


def test_more_seeds_alone_cannot_beat_the_prompt_component_and_more_prompts_can():
    # σ²_prompt/P = 0.04/4 = 0.01 keeps se ≥ 0.1 whatever the seeds: an effect of 0.1 never clears 1.96 se;
    # σ²_seed/S = 0.0005/3 leaves se ≈ 0.013 with many prompts, inside t(df → 2) = 4.3 of 0.1
    e = crossed_mean(np.zeros((3, 4)))
    e.mean, e.components = 0.1, VarianceComponents(0.0005, 0.04, 0.0)
    assert resolving_budget(e, "seeds") is None
    prompts = resolving_budget(e, "prompts")
    assert prompts is not None and resolves(0.1, e.components, 3, prompts)
    assert not resolves(0.1, e.components, 3, prompts - 1)
    assert resolving_budget(e, "both") is not None


def test_value_at_kl_interpolates_on_the_first_segment_of_the_path_that_reaches_the_target():
    kls = [0.0, 0.2, 0.6, 0.4]  # the path goes out to 0.6, then back to 0.4
    values = np.array([[0.0, 0.0], [0.1, 0.3], [0.5, 0.3], [0.9, 0.9]])
    at, kl, reached = value_at_kl(kls, values, 0.4)  # first reached between 0.2 and 0.6, halfway
    assert reached and kl == 0.4 and at == pytest.approx([0.3, 0.3])
    at, kl, reached = value_at_kl(kls, values, 0.8)  # never reached: the nearest point, flagged
    assert not reached and kl == 0.6 and at == pytest.approx([0.5, 0.3])


def _point(kl, per_prompt):
    return {"point": "p", "kl": kl, "per_prompt_J": per_prompt}


def _runs():
    """3 seeds, 2 prompts; π_0 at 0; ppo with a midpoint and a final KL that differs by seed; dpo once."""
    runs = []
    for seed, final_kl in zip(range(3), (0.4, 0.3, 0.5)):
        paths = {
            "initial": {"seen": [_point(0.0, [0.0, 0.0])]},
            "ppo": {"seen": [_point(0.2, [0.2, 0.4]), _point(final_kl, [0.4, 0.8])]},
            "dpo": {"seen": [_point(0.5, [0.1 + 0.01 * seed, 0.3])]},
        }
        runs.append({"seed": seed, "paths": paths})
    return runs


def test_summary_compares_paths_at_the_smallest_final_kl_and_flags_methods_with_one_point():
    summary = summarize_seeds(_runs(), prompt_limits={"seen": 8})
    assert summary["seeds"] == [0, 1, 2] and summary["matched_kl"] == {"seen": pytest.approx(0.3)}
    ppo = summary["methods"]["ppo"]["seen"]
    # KL 0.3: seed 0 halfway between 0.2 and 0.4, seed 1 at its final point, seed 2 a third of the way to 0.5
    expected = np.array([[0.3, 0.6], [0.4, 0.8], [0.2 + 0.2 / 3, 0.4 + 0.4 / 3]])
    assert ppo["at_matched_kl"]["interpolated"] and ppo["at_matched_kl"]["seeds_short_of_kl"] == []
    assert ppo["at_matched_kl"]["delta_J"]["mean"] == pytest.approx(expected.mean())
    assert ppo["delta_J"]["mean"] == pytest.approx(0.6) and ppo["kl"] == pytest.approx(0.4) and ppo["points"] == 2
    dpo = summary["methods"]["dpo"]["seen"]
    assert not dpo["at_matched_kl"]["interpolated"] and dpo["at_matched_kl"]["kl"] == pytest.approx(0.5)
    (pair,) = summary["pairs"]
    assert (pair["a"], pair["b"], pair["at_own_kl"]) == ("ppo", "dpo", ["dpo"])
    dpo_matrix = np.array([[0.1, 0.3], [0.11, 0.3], [0.12, 0.3]])
    assert pair["difference"]["mean"] == pytest.approx(expected.mean() - dpo_matrix.mean())
    text = summary_markdown(summary, "Three simulated seeds.")
    assert "| ppo |" in text and "@ 0.50 †" in text and "ppo − dpo" in text and "Three simulated seeds." in text


def test_summary_refuses_seeds_that_ran_other_methods_or_other_prompts():
    runs = _runs()
    del runs[1]["paths"]["dpo"]
    with pytest.raises(ValueError, match="seed 1 ran methods"):
        summarize_seeds(runs)
    runs = _runs()
    runs[2]["paths"]["dpo"]["seen"][0]["per_prompt_J"] = [0.1, 0.2, 0.3]
    with pytest.raises(ValueError):
        summarize_seeds(runs)


def test_effect_line_says_beyond_noise_or_which_seeds_or_prompts_would_show_it():
    rng = np.random.default_rng(TEST_SEED)
    summary = {"seen": 8}

    def line(values):
        runs = [
            {
                "seed": s,
                "paths": {"initial": {"seen": [_point(0.0, [0.0] * 8)]}, "m": {"seen": [_point(0.1, list(row))]}},
            }
            for s, row in enumerate(values)
        ]
        return effect_line("m, seen", summarize_seeds(runs, prompt_limits=summary)["methods"]["m"]["seen"]["delta_J"])

    assert line(0.5 + 0.05 * rng.normal(size=(3, 8))).endswith("beyond noise.")
    noisy = line(0.05 + 0.5 * rng.normal(size=(3, 8)))
    assert "short of budget" in noisy and ("--seeds 0-" in noisy or "--eval_prompts" in noisy)
    assert "no spread to judge it against" in line(np.full((3, 8), 0.2))
    one_seed = line(0.05 + 0.5 * rng.normal(size=(1, 8)))
    assert "unmeasured with one seed" in one_seed
