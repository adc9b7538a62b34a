"""Oracles R* (Section 4.1), simulated annotators (Eq. 8, Plackett-Luce, ratings), pools (Section 5.1)."""

import math

import numpy as np
import pytest

from rlhflab.data import Preference, Prompt
from rlhflab.errors import ConfigError, TrainingError
from rlhflab.feedback import (
    AnnotatorPool,
    SimulatedAnnotator,
    annotate_language_feedback,
    annotate_pairs,
    annotate_rankings,
    annotate_ratings,
    brevity_oracle,
    inter_annotator_agreement,
    load_oracle,
    make_pool,
    oracle_agreement,
    pairwise_agreement,
    score_batch,
    sentiment_oracle,
)

REWARDS = {"awful": -0.8, "bad": 0.0, "fine": 0.3, "good": 0.6, "great": 0.9}


def table_oracle(context, output):
    """An R* we can reason about exactly."""
    return REWARDS[output]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def annotator(**kw):
    return SimulatedAnnotator(name=kw.pop("name", "ann"), oracle=kw.pop("oracle", table_oracle), **kw)


# ---- oracles ------------------------------------------------------------------------------------


def test_sentiment_oracle_ranks_a_warm_reply_above_a_gloomy_one():
    happy = sentiment_oracle("How was your day?", "I love this, wonderful!")
    sad = sentiment_oracle("How was your day?", "This is terrible and sad.")
    assert -1 <= sad < 0 < happy <= 1


def test_brevity_oracle_peaks_at_twenty_words_and_falls_linearly():
    words = lambda n: " ".join(["w"] * n)  # noqa: E731
    assert [brevity_oracle("", words(n)) for n in (20, 10, 30, 40, 55, 0)] == [1.0, 0.5, 0.5, 0.0, 0.0, 0.0]


def test_load_oracle_resolves_builtin_names_import_paths_keywords_and_callables():
    assert load_oracle("sentiment") is sentiment_oracle
    assert load_oracle("rlhflab.feedback.oracles:brevity_oracle") is brevity_oracle
    assert load_oracle(table_oracle) is table_oracle
    sunny = load_oracle("keyword:sun")
    assert sunny("", "Sunny day") == 1.0 and sunny("", "rain") == 0.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("happiness", "unknown oracle 'happiness'"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("rlhflab.feedback.oracles:missing", "has no attribute 'missing'"),
        ("rlhflab.feedback.oracles:BREVITY_TARGET_WORDS", "not a callable"),
        (3, "must be a name"),
    ],
)
def test_load_oracle_reports_bad_specs_as_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_oracle(spec)


def test_score_batch_stops_on_a_non_finite_oracle_value():
    assert score_batch(table_oracle, ["c", "c"], ["bad", "great"]) == [0.0, 0.9]
    with pytest.raises(TrainingError, match="returned nan for output 1: 'two'"):
        score_batch(lambda c, o: math.nan if o == "two" else 0.0, ["c", "c"], ["one", "two"])
    with pytest.raises(TrainingError, match="not a number"):
        score_batch(lambda c, o: "high", ["c"], ["one"])
    with pytest.raises(ConfigError, match="2 contexts but 1 outputs"):
        score_batch(table_oracle, ["c", "c"], ["bad"])


# ---- Bradley-Terry comparisons (Eq. 8) ------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.3, 1.0])
def test_bradley_terry_annotator_prefers_better_output_at_rate_sigmoid_of_gap(temperature):
    ann, rng = annotator(temperature=temperature), np.random.default_rng(0)
    wins = sum(ann.compare("c", "good", "bad", rng).chosen == "good" for _ in range(2000))
    assert abs(wins / 2000 - sigmoid(0.6 / temperature)) < 0.03


def test_zero_temperature_annotator_always_prefers_the_higher_reward_and_breaks_ties_at_random():
    ann, rng = annotator(temperature=0), np.random.default_rng(1)
    assert all(ann.compare("c", "bad", "fine", rng).chosen == "fine" for _ in range(200))
    tied = SimulatedAnnotator("tie", oracle=lambda c, o: 0.0, temperature=0)
    tie_winners = [tied.compare("c", "x", "y", rng).chosen for _ in range(400)]
    assert 0.4 < tie_winners.count("x") / 400 < 0.6


def test_position_bias_favours_the_first_shown_output_at_rate_sigmoid_of_bias():
    rng = np.random.default_rng(2)
    flat = SimulatedAnnotator("flat", oracle=lambda c, o: 0.0, temperature=0.5, bias=0.3)
    wins = sum(flat.compare("c", "x", "y", rng).chosen == "x" for _ in range(2000))
    assert abs(wins / 2000 - sigmoid(0.3 / 0.5)) < 0.03


def test_preferences_record_the_annotator_and_optionally_the_true_margin():
    rng = np.random.default_rng(0)
    pref = annotator(name="alice", temperature=0).compare("c", "bad", "great", rng)
    assert (pref.chosen, pref.rejected, pref.annotator, pref.margin) == ("great", "bad", "alice", None)
    pref = annotator(temperature=0, record_margin=True).compare("c", "bad", "great", rng)
    assert pref.margin == pytest.approx(0.9)


def test_annotator_scores_chat_completions_on_their_assistant_text():
    chat = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    pref = annotator(temperature=0).compare(
        [{"role": "user", "content": "hi"}], chat("bad"), chat("good"), np.random.default_rng(0)
    )
    assert pref.chosen == chat("good")


# ---- Plackett-Luce rankings ----------------------------------------------------------------------


def test_plackett_luce_rank_with_huge_reward_gaps_returns_the_sorted_order():
    big = SimulatedAnnotator("big", oracle=lambda c, o: 100.0 * REWARDS[o], temperature=1.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        ranking = big.rank("c", ["fine", "awful", "great", "bad", "good"], rng)
        assert ranking.completions == ["great", "good", "fine", "bad", "awful"]
        assert ranking.ties is None and ranking.annotator == "big"


def test_plackett_luce_first_place_follows_softmax_of_rewards_over_temperature():
    ann, rng = annotator(temperature=0.5), np.random.default_rng(4)
    firsts = [ann.rank("c", ["bad", "fine", "good"], rng).completions[0] for _ in range(3000)]
    logits = np.array([0.0, 0.3, 0.6]) / 0.5
    expected = np.exp(logits) / np.exp(logits).sum()
    observed = np.array([firsts.count(x) for x in ("bad", "fine", "good")]) / 3000
    assert np.abs(observed - expected).max() < 0.03


def test_zero_temperature_rank_sorts_by_reward():
    ranking = annotator(temperature=0).rank("c", ["bad", "great", "awful", "fine"], np.random.default_rng(0))
    assert ranking.completions == ["great", "fine", "bad", "awful"]


# ---- ratings and language feedback --------------------------------------------------------------


@pytest.mark.parametrize(
    "reward, likert5, binary, category",
    [
        (-1.0, 1, 0, 0),
        (-0.61, 1, 0, 0),
        (-0.59, 2, 0, 0),
        (-0.2, 3, 0, 1),  # bins of width 0.4 on [-1, 1]: [-0.2, 0.2) is the middle one
        (0.0, 3, 0, 1),  # the midpoint itself is not "above the midpoint"
        (0.01, 3, 1, 1),
        (0.59, 4, 1, 2),
        (0.61, 5, 1, 2),
        (1.0, 5, 1, 2),
        (7.0, 5, 1, 2),  # outside reward_scale: clipped to the top bin
    ],
)
def test_ratings_bin_the_reward_linearly_over_the_reward_scale(reward, likert5, binary, category):
    ann, rng = SimulatedAnnotator("r", oracle=lambda c, o: reward), np.random.default_rng(0)
    assert ann.rate("c", "o", rng, scale="likert:5").score == likert5
    assert ann.rate("c", "o", rng, scale="binary").score == binary
    assert ann.rate("c", "o", rng, scale="categorical:bad|ok|good").score == category
    rating = ann.rate("c", "o", rng, scale="continuous")
    assert (rating.score, rating.scale, rating.annotator) == (reward, "continuous", "r")


def test_rating_noise_is_gaussian_around_the_oracle_reward():
    ann, rng = annotator(rating_noise=0.2), np.random.default_rng(5)
    scores = np.array([ann.rate("c", "fine", rng, scale="continuous").score for _ in range(2000)])
    assert abs(scores.mean() - 0.3) < 0.02 and abs(scores.std() - 0.2) < 0.02


def test_rating_on_an_unknown_scale_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown rating scale 'stars'"):
        annotator().rate("c", "good", np.random.default_rng(0), scale="stars")


def test_language_feedback_criticises_negative_replies_and_praises_positive_ones():
    ann, rng = annotator(), np.random.default_rng(0)
    low, high = ann.language_feedback("c", "awful", rng), ann.language_feedback("c", "great", rng)
    assert low.feedback in ann.feedback_templates[0] and high.feedback in ann.feedback_templates[2]
    assert (low.completion, low.annotator) == ("awful", "ann")


# ---- pools (Section 5.1) -------------------------------------------------------------------------


def test_pool_records_which_member_gave_each_label_and_uses_every_member():
    pool, rng = make_pool(table_oracle, n=3), np.random.default_rng(6)
    names = [pool.compare("c", "bad", "good", rng).annotator for _ in range(300)]
    assert set(names) == {"annotator-0", "annotator-1", "annotator-2"}
    assert all(80 < names.count(n) < 120 for n in set(names))
    assert {pool.rank("c", ["bad", "good"], rng).annotator for _ in range(50)} == set(names)
    assert {pool.rate("c", "bad", rng).annotator for _ in range(50)} == set(names)
    assert {pool.language_feedback("c", "bad", rng).annotator for _ in range(50)} == set(names)


def test_pool_weights_decide_how_often_each_member_labels():
    a, b = annotator(name="a"), annotator(name="b")
    pool, rng = AnnotatorPool([a, b], weights=[0, 1]), np.random.default_rng(0)
    assert {pool.compare("c", "bad", "good", rng).annotator for _ in range(50)} == {"b"}
    with pytest.raises(ConfigError, match="weights"):
        AnnotatorPool([a, b], weights=[1, -1])
    with pytest.raises(ConfigError, match="unique"):
        AnnotatorPool([a, a])


def test_make_pool_members_range_from_careful_to_careless_with_opposite_position_biases():
    pool = make_pool(table_oracle, n=3, base_temperature=0.1, max_bias=0.1)
    assert [m.temperature for m in pool.members] == pytest.approx([0.1, 0.2, 0.4])
    assert [m.bias for m in pool.members] == pytest.approx([-0.1, 0.0, 0.1])


# ---- annotating datasets ------------------------------------------------------------------------

PROMPTS = ["p1", "p2", Prompt("p3")]
COMPLETIONS = [["bad", "fine", "good", "great"], ["awful", "great"], ["bad", "good", "fine"]]


def annotate_everything(seed):
    pool = make_pool(table_oracle, n=3)
    rng = np.random.default_rng(seed)
    return (
        annotate_pairs(pool, PROMPTS, COMPLETIONS, rng, pairs_per_prompt=2),
        annotate_rankings(pool, PROMPTS, COMPLETIONS, rng),
        annotate_ratings(pool, PROMPTS, COMPLETIONS, rng, scale="likert:5"),
        annotate_language_feedback(pool, PROMPTS, COMPLETIONS, rng),
    )


def test_same_seed_gives_identical_records_and_another_seed_differs():
    assert annotate_everything(7) == annotate_everything(7)
    assert annotate_everything(7) != annotate_everything(8)


def test_annotate_pairs_draws_distinct_pairs_up_to_the_number_available():
    prefs = annotate_pairs(annotator(), PROMPTS, COMPLETIONS, np.random.default_rng(0), pairs_per_prompt=10)
    by_prompt = {}
    for p in prefs:
        by_prompt.setdefault(p.prompt, []).append(frozenset((p.chosen, p.rejected)))
    assert {k: len(v) for k, v in by_prompt.items()} == {"p1": 6, "p2": 1, "p3": 3}
    assert all(len(set(v)) == len(v) for v in by_prompt.values())


def test_annotate_helpers_cover_every_prompt_and_completion():
    pairs, rankings, ratings, feedback = annotate_everything(0)
    assert len(pairs) == 2 + 1 + 2
    assert [sorted(r.completions) for r in rankings] == [sorted(c) for c in COMPLETIONS]
    assert len(ratings) == len(feedback) == 9
    assert {r.prompt for r in ratings} == {"p1", "p2", "p3"}  # Prompt records are unwrapped


def test_annotate_pairs_skips_and_counts_pairs_of_identical_completions(capsys):
    completions = [["good", "good", "bad"], ["fine", "fine"], ["great", "awful"]]
    prefs = annotate_pairs(annotator(), ["p1", "p2", "p3"], completions, np.random.default_rng(0), pairs_per_prompt=10)
    assert all(p.chosen != p.rejected for p in prefs)
    # p1: good-bad twice (one per copy of "good"); p2: nothing distinct to compare; p3: one pair.
    assert sorted(p.prompt for p in prefs) == ["p1", "p1", "p3"]
    assert "skipped 2 pair(s) of identical completions" in capsys.readouterr().err


def test_ranking_to_preferences_skips_a_text_listed_twice():
    from rlhflab.data import Ranking, ranking_to_preferences

    prefs = ranking_to_preferences(Ranking("p", ["good", "good", "bad"]))
    assert [(p.chosen, p.rejected) for p in prefs] == [("good", "bad"), ("good", "bad")]


def test_annotate_pairs_rejects_prompts_without_two_completions():
    with pytest.raises(ConfigError, match="pairs need 2"):
        annotate_pairs(annotator(), ["p"], [["good"]], np.random.default_rng(0))
    with pytest.raises(ConfigError, match="2 prompts but 1 lists"):
        annotate_pairs(annotator(), ["p", "q"], [["good", "bad"]], np.random.default_rng(0))


# ---- agreement (Section 7.3.3) -------------------------------------------------------------------


def test_pairwise_agreement_compares_labels_on_the_same_unordered_pair():
    a = [Preference("p", "good", "bad"), Preference("p", "fine", "great"), Preference("q", "x", "y")]
    b = [Preference("p", "good", "bad"), Preference("p", "great", "fine"), Preference("r", "x", "y")]
    assert pairwise_agreement(a, b) == 0.5
    with pytest.raises(ConfigError, match="share no"):
        pairwise_agreement(a[2:], b[2:])


def test_oracle_agreement_is_the_fraction_of_labels_that_agree_with_r_star():
    prefs = [Preference("p", "good", "bad"), Preference("p", "bad", "great"), Preference("p", "fine", "fine ")]
    oracle = lambda c, o: REWARDS[o.strip()]  # noqa: E731
    assert oracle_agreement(prefs, oracle) == pytest.approx((1 + 0 + 0.5) / 3)


def test_noisier_annotators_agree_less_with_the_oracle_and_with_each_other():
    pairs = [("bad", "fine"), ("fine", "good"), ("good", "great"), ("awful", "bad")] * 100
    rng = np.random.default_rng(9)

    def labels(ann):
        return [ann.compare("c", a, b, rng) for a, b in pairs]

    assert oracle_agreement(labels(annotator(temperature=0)), table_oracle) == 1.0
    assert oracle_agreement(labels(annotator(temperature=0.3)), table_oracle) < 0.9
    careful = [annotator(name=f"c{i}", temperature=0) for i in range(3)]
    careless = [annotator(name=f"n{i}", temperature=1.0) for i in range(3)]
    assert inter_annotator_agreement(careful, "c", pairs, rng) == 1.0
    assert inter_annotator_agreement(careless, "c", pairs, rng) < 0.7
