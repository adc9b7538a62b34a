"""Inference-time alignment: best-of-n (the KL bound log n − (n−1)/n beside a plug-in estimate) and
reward-augmented decoding (RAD), on a tiny random policy."""

import math

import pytest
import torch

from rlhflab.decoding.best_of_n import best_of_n, plug_in_best_of_n_kl, rad_decode, rad_logits
from rlhflab.models import load_policy
from rlhflab.rewards.registry import RewardSource
from rlhflab.sampling.rollout import sample

COUNT_A = RewardSource("fraction of 'a'", lambda c, o: [x.count("a") / max(1, len(x)) for x in o])
CHECKSUM = RewardSource("checksum", lambda c, o: [(sum(map(ord, x)) % 101) / 100 for x in o])
PROMPTS = [f"q{i}" for i in range(6)]


def test_best_of_n_keeps_the_highest_reward_sample_of_each_prompt(model_cache):
    policy, tokenizer = load_policy("tiny-policy")
    bon = best_of_n(policy, tokenizer, PROMPTS, CHECKSUM, n=5, max_new_tokens=8, use_chat_template=False)
    assert bon.samples_drawn == 30 and bon.all_rewards.shape == (6, 5)
    for i, samples in enumerate(bon.all_completions):
        scores = CHECKSUM([""] * 5, samples)
        assert bon.completions[i] == samples[int(scores.argmax())]
        assert bon.rewards[i] == pytest.approx(float(scores.max()))
    assert bon.kl_bound == pytest.approx(math.log(5) - 4 / 5)
    assert 0 <= bon.kl_estimate <= bon.kl_bound + 1e-9


def test_best_of_n_kl_bound_and_plug_in_estimate_by_hand():
    # Two distinct draws: best-of-2 picks the lower one with prob 1/4 and the higher with 3/4.
    assert plug_in_best_of_n_kl([0.0, 1.0]) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert plug_in_best_of_n_kl([0.0, 1.0]) < math.log(2) - 1 / 2  # the formula is an upper bound
    # n = 4 distinct draws: Σ_i q_i log(4 q_i), q_i = (i/4)^4 - ((i-1)/4)^4.
    q = [(i / 4) ** 4 - ((i - 1) / 4) ** 4 for i in range(1, 5)]
    assert plug_in_best_of_n_kl([3, 1, 4, 2]) == pytest.approx(sum(x * math.log(4 * x) for x in q))
    # Repeats and ties: the same text twice is one atom; equal rewards leave nothing to select.
    assert plug_in_best_of_n_kl([1.0, 1.0], ["same", "same"]) == pytest.approx(0.0, abs=1e-12)
    assert plug_in_best_of_n_kl([0.5, 0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)


def test_rad_logits_add_beta_times_reward_to_the_top_k_and_drop_the_rest_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    candidates = torch.tensor([[1, 2]])
    out = rad_logits(logits, torch.tensor([[0.0, 1.0]]), candidates, beta=2.0)
    assert out[0, 1] == 3.0 and out[0, 2] == 4.0 and torch.isinf(out[0, [0, 3]]).all()
    torch.testing.assert_close(torch.softmax(out, -1)[0, [1, 2]], torch.softmax(torch.tensor([3.0, 4.0]), -1))


def test_rad_with_beta_zero_is_token_for_token_top_k_sampling_under_the_same_seed(model_cache):
    policy, tokenizer = load_policy("tiny-policy")
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
    torch.manual_seed(5)
    plain = sample(policy, tokenizer, ids, num_samples=1, max_new_tokens=10, top_k=10)
    rad = rad_decode(
        policy, tokenizer, PROMPTS, COUNT_A, beta=0.0, top_k=10, max_new_tokens=10, use_chat_template=False, seed=5
    )
    assert rad.completions == plain.completion_texts
    assert rad.reward_calls == 0


def test_rad_with_a_large_beta_raises_the_reward(model_cache):
    policy, tokenizer = load_policy("tiny-policy")
    prompts = PROMPTS * 4
    steered = rad_decode(
        policy, tokenizer, prompts, COUNT_A, beta=50.0, top_k=20, max_new_tokens=8, use_chat_template=False, seed=0
    )
    plain = rad_decode(
        policy, tokenizer, prompts, COUNT_A, beta=0.0, top_k=20, max_new_tokens=8, use_chat_template=False, seed=0
    )
    assert steered.reward_calls > 0
    assert COUNT_A(prompts, steered.completions).mean() > COUNT_A(prompts, plain.completions).mean() + 0.1
