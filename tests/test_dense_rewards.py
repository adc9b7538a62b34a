"""Dense per-token rewards by potential-based shaping (Ng et al. 1999; Section 5.1's reward
sparsity): the pure function by hand, its PPO wiring, and the options it refuses."""

import pytest
import torch

from rlhflab.errors import ConfigError
from rlhflab.losses import potential_shaped_rewards
from rlhflab.models import load_policy
from rlhflab.train.loop import train
from rlhflab.train.policy_optimization import PolicyOptimization
from tests.test_policy_optimization import COUNT_A, PROMPTS, read_metrics, rl_config


def test_shaped_rewards_match_a_hand_computed_case_and_telescope():
    potentials = torch.tensor([[1.0, 2.0, 4.0, 7.0], [5.0, 9.0, 9.0, 9.0]])
    shaped = potential_shaped_rewards(potentials, torch.tensor([10.0, 3.0]), torch.tensor([3, 1]))
    # row 0: Φ1−Φ0, Φ2−Φ1, R−Φ2, nothing past its 3 tokens; row 1: one token, R − Φ0
    assert shaped.tolist() == [[1.0, 2.0, 6.0, 0.0], [-2.0, 0.0, 0.0, 0.0]]
    # the return is R − Φ0: a per-context constant away from the sparse one, so Eq. 17's optimum stays
    assert shaped.sum(-1).tolist() == [10.0 - 1.0, 3.0 - 5.0]


def test_ppo_with_dense_rewards_credits_each_token_with_its_prefix_gain(model_cache, tmp_path):
    config = rl_config(tmp_path, num_iterations=2, dense_rewards=True, epochs=2)
    policy, tokenizer = load_policy("tiny-policy")
    algorithm = PolicyOptimization(config, policy, tokenizer, PROMPTS, COUNT_A)
    seen = []
    collect = algorithm.collect

    def keep(iteration):
        stats = collect(iteration)
        seen.append(algorithm.experience)
        return stats

    algorithm.collect = keep
    run_dir = train(config, algorithm)
    exp = seen[0]
    ids, mask = exp.batch.completion_ids, exp.batch.completion_mask
    for row in range(exp.rows):
        n = int(mask[row].sum())
        texts = [tokenizer.decode(ids[row, :k], skip_special_tokens=True) for k in range(n + 1)]
        scores = COUNT_A(["c"] * (n + 1), texts[:n] + [tokenizer.decode(ids[row, :n], skip_special_tokens=True)])
        expected = [float(scores[k + 1] - scores[k]) for k in range(n - 1)] + [float(exp.rewards[row] - scores[n - 1])]
        assert exp.token_rewards[row, :n].tolist() == pytest.approx(expected, abs=1e-6)
        assert exp.token_rewards[row, :n].sum().item() == pytest.approx(float(exp.rewards[row] - scores[0]), abs=1e-5)
    rows = read_metrics(run_dir)
    assert len(rows) == 2 and all("time_score_prefixes" in r for r in rows)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(algorithm="rloo"), "needs a critic"),
        (dict(algorithm="ppo", reward_normalization=True), "do not mix"),
    ],
)
def test_dense_rewards_refuse_what_they_cannot_shape(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        rl_config(tmp_path, dense_rewards=True, **options)
