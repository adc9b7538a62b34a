"""Each loss against numbers worked out by hand on small explicit tensors, plus key properties."""

import math

import pytest
import torch

from rlhflab.losses import (
    AdaptiveKLController,
    FixedKLController,
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    gae_advantages,
    grpo_advantages,
    ipo_loss,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_whiten,
    pairwise_accuracy,
    plackett_luce_loss,
    policy_gradient_loss,
    ppo_clip_loss,
    pro_loss,
    regression_loss,
    reinforce_advantages,
    rloo_advantages,
    robust_dpo_loss,
    rrhf_loss,
    sequence_logprob,
    sft_loss,
    slic_loss,
    value_loss,
)


def t(*rows):
    return torch.tensor(rows if len(rows) > 1 else rows[0], dtype=torch.float32)


def close(actual, expected, tol=1e-5):
    as_float = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    torch.testing.assert_close(as_float(actual), as_float(expected), atol=tol, rtol=tol)


def log_sigmoid(x):
    return math.log(1 / (1 + math.exp(-x)))


# --- common -------------------------------------------------------------------------------------


def test_masked_mean_and_sum_ignore_masked_entries_even_inf():
    x = t([1.0, 2.0, float("inf")], [4.0, 5.0, 6.0])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    close(masked_mean(x, mask), (1 + 2 + 4) / 3)
    close(masked_mean(x, mask, dim=1), [1.5, 4.0])
    close(masked_sum(x, mask), 7.0)
    close(masked_sum(x, mask.float(), dim=1), [3.0, 4.0])
    close(masked_mean(x, mask.float()), masked_mean(x, mask))


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    close(masked_mean(t([1.0, 2.0]), torch.zeros(2)), 0.0)


def test_masked_whiten_gives_zero_mean_unit_variance_over_masked_entries():
    x = t([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    std = math.sqrt(((1 - 2) ** 2 + 0 + (3 - 2) ** 2) / 3)  # population variance, mean 2
    close(masked_whiten(x, mask), [[-1 / std, 0.0, 1 / std, 0.0]], tol=1e-4)
    close(masked_whiten(x, mask, shift_mean=False), [[2 - 1 / std, 2.0, 2 + 1 / std, 0.0]], tol=1e-4)


# --- sft ----------------------------------------------------------------------------------------


def test_sft_loss_is_nll_averaged_over_completion_tokens_only_eq3():
    logprobs = t([-9.0, -1.0, -2.0], [-9.0, -3.0, -7.0])  # column 0 is prompt, [1, 2] is padding
    mask = t([0, 1, 1], [0, 1, 0])
    close(sft_loss(logprobs, mask), (1 + 2 + 3) / 3)


# --- reward -------------------------------------------------------------------------------------


def test_bradley_terry_loss_matches_eq11_by_hand():
    chosen, rejected = t([1.0, 0.0]), t([0.5, 2.0])
    expected = -(log_sigmoid(0.5) + log_sigmoid(-2.0)) / 2
    close(bradley_terry_loss(chosen, rejected), expected)


def test_bradley_terry_margin_is_subtracted_from_the_reward_gap():
    chosen, rejected, margin = t([1.0, 0.0]), t([0.5, 2.0]), t([0.25, 1.0])
    expected = -(log_sigmoid(0.5 - 0.25) + log_sigmoid(-2.0 - 1.0)) / 2
    close(bradley_terry_loss(chosen, rejected, margin), expected)


def test_bradley_terry_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        bradley_terry_loss(t([1.0, 2.0]), t([1.0]))


def test_plackett_luce_loss_matches_hand_computation():
    rewards = t([[1.0, 2.0, 0.0]])
    ranks = torch.tensor([[0, 1, 2]])
    e = math.exp
    expected = -((1 - math.log(e(1) + e(2) + e(0))) + (2 - math.log(e(2) + e(0))))
    close(plackett_luce_loss(rewards, ranks), expected)
    # same list, items stored in another order: item 1 best, then item 2, then item 0
    close(plackett_luce_loss(t([[0.0, 1.0, 2.0]]), torch.tensor([[2, 0, 1]])), expected)


def test_plackett_luce_with_two_items_equals_bradley_terry():
    rewards = t([0.3, -1.2], [2.0, 2.5])
    pl = plackett_luce_loss(rewards, torch.tensor([[0, 1], [0, 1]]))
    close(pl, bradley_terry_loss(rewards[:, 0], rewards[:, 1]))


def test_plackett_luce_ties_share_a_breslow_denominator():
    a, b, c = 0.5, 1.5, -1.0
    denominator = math.log(math.exp(a) + math.exp(b) + math.exp(c))
    expected = -((a - denominator) + (b - denominator))  # c is last alone: log 1 = 0
    close(plackett_luce_loss(t([[a, b, c]]), torch.tensor([[0, 0, 1]])), expected)


def test_plackett_luce_padding_is_ignored_and_lists_are_averaged():
    rewards = t([1.0, 2.0, 0.0], [0.7, -0.3, float("nan")])
    rewards.requires_grad_(True)
    ranks = torch.tensor([[0, 1, 2], [0, 1, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss = plackett_luce_loss(rewards, ranks, mask)
    first = plackett_luce_loss(t([[1.0, 2.0, 0.0]]), torch.tensor([[0, 1, 2]]))
    second = bradley_terry_loss(t([0.7]), t([-0.3]))
    close(loss, (first + second) / 2)
    loss.backward()
    assert torch.isfinite(rewards.grad).all() and rewards.grad[1, 2] == 0


def test_regression_loss_is_eq7_mean_squared_error():
    close(regression_loss(t([1.0, 2.0]), t([0.0, 4.0])), (1**2 + 2**2) / 2)


def test_pairwise_accuracy_counts_ties_as_half():
    assert pairwise_accuracy(t([1.0, 2.0, 3.0, 0.0]), t([0.0, 2.0, 4.0, -1.0])) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


# --- kl -----------------------------------------------------------------------------------------


def test_kl_penalty_estimators_match_schulman_by_hand():
    logp, logq = t([math.log(0.5)]), t([math.log(0.25)])
    close(kl_penalty(logp, logq, "k1"), [math.log(2)])
    close(kl_penalty(logp, logq, "k2"), [0.5 * math.log(2) ** 2])
    close(kl_penalty(logp, logq, "k3"), [(0.25 / 0.5) - 1 - math.log(0.25 / 0.5)])


def test_kl_penalty_k1_and_k3_are_unbiased_and_k3_nonnegative():
    p, q = t([0.2, 0.5, 0.3]), t([0.4, 0.4, 0.2])
    true_kl = (p * (p / q).log()).sum()
    for estimator in ("k1", "k3"):
        per_token = kl_penalty(p.log(), q.log(), estimator)
        close((p * per_token).sum(), true_kl)  # exact expectation under samples from p
    assert (kl_penalty(p.log(), q.log(), "k3") >= 0).all()


def test_kl_penalty_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(t([0.0]), t([0.0]), "k4")


def test_adaptive_kl_controller_follows_ziegler_update_and_restores_state():
    controller = AdaptiveKLController(init_kl_coef=0.1, target_kl=6.0, horizon=10000)
    controller.update(current_kl=9.0, n_steps=256)  # error 0.5 clipped to 0.2
    close(controller.value, 0.1 * (1 + 0.2 * 256 / 10000))
    controller.update(current_kl=5.4, n_steps=100)  # error -0.1
    expected = 0.1 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000)
    close(controller.value, expected)
    resumed = AdaptiveKLController(init_kl_coef=0.1, target_kl=6.0, horizon=10000)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.value == controller.value


def test_fixed_kl_controller_never_changes():
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=1000)
    assert controller.value == 0.05
    assert controller.state_dict() == {"value": 0.05}


# --- policy gradient ----------------------------------------------------------------------------


def test_gae_advantages_match_hand_recursion():
    gamma, lam = 0.9, 0.8
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.4, 0.2]])
    a2 = 1.0 + gamma * 0.0 - 0.2  # value after the last token is 0
    a1 = (0.0 + gamma * 0.2 - 0.4) + gamma * lam * a2
    a0 = (0.0 + gamma * 0.4 - 0.5) + gamma * lam * a1
    advantages, returns = gae_advantages(rewards, values, torch.ones(1, 3), gamma, lam)
    close(advantages, [[a0, a1, a2]])
    close(returns, [[a0 + 0.5, a1 + 0.4, a2 + 0.2]])


def test_gae_with_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards = t([0.1, 0.2, 0.3, 9.0], [1.0, 0.0, 2.0, 0.5])
    values = t([0.5, 0.1, 0.2, 7.0], [0.3, 0.3, 0.3, 0.3])
    mask = t([1, 1, 1, 0], [1, 1, 1, 1])
    advantages, _ = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    expected = t([0.6 - 0.5, 0.5 - 0.1, 0.3 - 0.2, 0.0], [3.5 - 0.3, 2.5 - 0.3, 2.5 - 0.3, 0.5 - 0.3])
    close(advantages, expected)


def test_gae_padding_ignores_garbage_and_ends_episode_at_last_valid_token():
    mask = t([[1, 1, 0, 0]])
    rewards, values = t([[0.0, 1.0, 5.0, 5.0]]), t([[0.2, 0.6, 3.0, 3.0]])
    advantages, _ = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.0)  # one-step TD
    close(advantages, [[0.0 + 0.6 - 0.2, 1.0 - 0.6, 0.0, 0.0]])


def test_gae_ignores_nan_and_inf_in_padded_positions():
    mask = t([1, 1, 1, 0, 0], [1, 1, 0, 0, 0])
    rewards, values = (
        t([0.1, 0.2, 1.0, 0.0, 0.0], [0.5, 2.0, 0.0, 0.0, 0.0]),
        t([0.3, 0.4, 0.2, 0.0, 0.0], [0.1, 0.7, 0.0, 0.0, 0.0]),
    )
    clean = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    pad = mask == 0
    dirty_rewards = rewards.masked_fill(pad, float("nan"))
    dirty_values = values.masked_fill(pad, float("nan"))
    dirty_values[0, 4] = float("inf")
    got = gae_advantages(dirty_rewards, dirty_values, mask, gamma=0.9, lam=0.8)
    for have, want in zip(got, clean):
        assert torch.isfinite(have).all()
        torch.testing.assert_close(have, want, rtol=0, atol=0)


def test_gae_skips_a_hole_in_the_mask_as_if_its_position_were_removed():
    gamma, lam = 0.9, 0.8
    rewards, values = t([[0.1, 0.3, float("nan"), 0.2, 1.0]]), t([[0.5, 0.4, float("nan"), 0.6, 0.2]])
    mask = t([[1, 1, 0, 1, 1]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)
    keep = [0, 1, 3, 4]
    want_adv, want_ret = gae_advantages(rewards[:, keep], values[:, keep], torch.ones(1, 4), gamma, lam)
    close(advantages[:, keep], want_adv)
    close(returns[:, keep], want_ret)
    assert advantages[0, 2] == 0 and returns[0, 2] == 0
    # Not an episode end: the value after the hole bootstraps the step before it.
    assert advantages[0, 1] != gae_advantages(rewards[:, :2], values[:, :2], torch.ones(1, 2), gamma, lam)[0][0, 1]


def test_ppo_clip_loss_matches_eq16_by_hand():
    old = torch.zeros(1, 4)
    logprobs = t([[0.1, 0.5, -0.5, 0.5]])
    advantages = t([[1.0, 1.0, -1.0, -1.0]])
    r = [math.exp(x) for x in (0.1, 0.5, -0.5, 0.5)]
    surrogate = [
        min(r[0] * 1, 1 * r[0]),  # inside the trust region
        min(r[1] * 1, 1.2 * 1),  # ratio 1.65 clipped to 1.2
        min(r[2] * -1, 0.8 * -1),  # ratio 0.61 clipped to 0.8
        min(r[3] * -1, 1.2 * -1),  # pessimistic: unclipped ratio kept
    ]
    loss, stats = ppo_clip_loss(logprobs, old, advantages, torch.ones(1, 4), clip_eps=0.2)
    close(loss, -sum(surrogate) / 4)
    assert stats["clip_fraction"] == pytest.approx(3 / 4)
    assert stats["approx_kl"] == pytest.approx(sum((x - 1) - math.log(x) for x in r) / 4, rel=1e-5)


def test_ppo_clip_gradient_is_zero_outside_trust_region_for_positive_advantage():
    logprobs = t([[0.5, -0.5]]).requires_grad_(True)  # ratios 1.65 (above 1+eps) and 0.61 (below 1-eps)
    loss, _ = ppo_clip_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), clip_eps=0.2)
    loss.backward()
    assert logprobs.grad[0, 0] == 0
    assert logprobs.grad[0, 1] < 0  # below the region the update still pushes the ratio up


def test_ppo_gradient_at_old_policy_equals_policy_gradient():
    logprobs = t([[-1.0, -2.0, -0.5]]).requires_grad_(True)
    advantages, mask = t([[0.3, -1.0, 2.0]]), t([[1, 1, 0]])
    loss, _ = ppo_clip_loss(logprobs, logprobs.detach(), advantages, mask)
    (ppo_grad,) = torch.autograd.grad(loss, logprobs)
    (pg_grad,) = torch.autograd.grad(policy_gradient_loss(logprobs, advantages, mask), logprobs)
    close(ppo_grad, pg_grad)


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_error():
    values, old, returns = t([[1.0, 2.0]]), t([[0.5, 2.0]]), t([[2.0, 1.0]])
    clipped_first = (0.5 + 0.2 - 2.0) ** 2  # 1.69 > unclipped (1 - 2)^2 = 1
    close(value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.2), 0.5 * (clipped_first + 1.0) / 2)
    close(value_loss(values, old, returns, torch.ones(1, 2), clip_eps=None), 0.5 * (1.0 + 1.0) / 2)


def test_policy_gradient_loss_matches_eq15_surrogate_and_detaches_advantages():
    logprobs = t([[-1.0, -2.0, -3.0]])
    advantages = t([[2.0, -1.0, 5.0]]).requires_grad_(True)
    loss = policy_gradient_loss(logprobs, advantages, t([[1, 1, 0]]))
    close(loss, -(2 * -1 + -1 * -2) / 2)
    assert not loss.requires_grad  # no gradient flows into the advantages
    per_sequence = policy_gradient_loss(logprobs, t([2.0]), t([[1, 1, 0]]))  # (B,) broadcast over tokens
    close(per_sequence, -(2 * -1 + 2 * -2) / 2)


def test_sequence_logprob_sums_valid_tokens():
    close(sequence_logprob(t([-1.0, -2.0, -4.0], [-0.5, -9.0, -9.0]), t([1, 1, 1], [1, 0, 0])), [-7.0, -0.5])


def test_reinforce_advantages_with_each_baseline():
    rewards = t([1.0, 2.0, 6.0])
    close(reinforce_advantages(rewards, "none"), [1.0, 2.0, 6.0])
    close(reinforce_advantages(rewards, "batch_mean"), [-2.0, -1.0, 3.0])
    close(reinforce_advantages(rewards, 0.5), [0.5, 1.5, 5.5])
    with pytest.raises(ValueError):
        reinforce_advantages(rewards, "median")


def test_rloo_advantages_match_hand_leave_one_out():
    rewards = t([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    expected = [1 - (2 + 3) / 2, 2 - (1 + 3) / 2, 3 - (1 + 2) / 2, 0 - 6 / 2, 0 - 6 / 2, 6 - 0 / 2]
    close(rloo_advantages(rewards, k=3), expected)


def test_rloo_baseline_excludes_own_sample():
    rewards = t([1.0, 2.0, 3.0])
    perturbed = t([10.0, 2.0, 3.0])
    # advantage minus own reward is minus the baseline, which must not see the own reward
    close(rloo_advantages(perturbed, 3)[0] - 10.0, rloo_advantages(rewards, 3)[0] - 1.0)
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(rewards, k=1)
    with pytest.raises(ValueError):
        rloo_advantages(rewards, k=2)  # 3 rewards don't split into groups of 2


def test_grpo_advantages_use_bessel_std_and_dr_grpo_drops_it():
    rewards = t([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    std = math.sqrt(((1 - 2) ** 2 + 0 + (3 - 2) ** 2) / (3 - 1))  # = 1
    close(grpo_advantages(rewards, k=3), [-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4), 0.0, 0.0, 0.0])
    close(grpo_advantages(rewards, k=3, scale_by_std=False), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def test_entropy_from_logits_matches_hand_and_is_stable():
    close(entropy_from_logits(t([0.0, 0.0, 0.0, 0.0])), math.log(4))
    close(entropy_from_logits(t([0.0, math.log(3)])), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    close(entropy_from_logits(t([1000.0, 1000.0 + math.log(3)])), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    logits = t([0.0, 0.0, float("-inf")]).requires_grad_(True)
    entropy = entropy_from_logits(logits)
    entropy.backward()
    close(entropy, math.log(2))
    assert torch.isfinite(logits.grad).all()


# --- preference ---------------------------------------------------------------------------------


def test_dpo_loss_matches_rafailov_eq7_by_hand():
    pc, pr, rc, rr = t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0])
    loss, chosen_reward, rejected_reward = dpo_loss(pc, pr, rc, rr, beta=0.5)
    logits = 0.5 * ((-1 - -2) - (-3 - -2))  # = 1
    close(loss, -log_sigmoid(logits))
    close(chosen_reward, [0.5 * 1.0])
    close(rejected_reward, [0.5 * -1.0])


def test_dpo_label_smoothing_flips_labels_with_probability_eps():
    pc, pr, rc, rr = t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0])
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    close(loss, -0.9 * log_sigmoid(1.0) - 0.1 * log_sigmoid(-1.0))


def test_dpo_per_pair_label_smoothing_is_a_soft_label_cross_entropy():
    pc, pr, rc, rr = t([-1.0, -2.0]), t([-3.0, -1.0]), t([-2.0, -2.0]), t([-2.0, -2.0])
    eps = t([0.1, 0.4])
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=eps)
    each = [
        dpo_loss(pc[i : i + 1], pr[i : i + 1], rc[i : i + 1], rr[i : i + 1], beta=0.5, label_smoothing=float(eps[i]))[0]
        for i in range(2)
    ]
    close(loss, (each[0] + each[1]) / 2)
    # Each pair's term is minimised where β h = logit(1 - ε): soft Bradley-Terry labels are recovered.
    h = torch.zeros(2, requires_grad=True)
    zero = torch.zeros(2)
    opt = torch.optim.LBFGS([h], max_iter=100)

    def closure():
        opt.zero_grad()
        value = dpo_loss(h, zero, zero, zero, beta=0.5, label_smoothing=eps)[0]
        value.backward()
        return value

    opt.step(closure)
    close(0.5 * h.detach(), torch.logit(1 - eps), tol=1e-4)
    with pytest.raises(ValueError):
        dpo_loss(pc, pr, rc, rr, label_smoothing=t([0.1, 0.2, 0.3]))


def test_dpo_loss_is_log2_at_the_reference_and_rewards_are_detached():
    policy = t([-4.0, -2.0]).requires_grad_(True)
    loss, chosen_reward, _ = dpo_loss(policy, policy, policy.detach(), policy.detach())
    close(loss, math.log(2))
    assert loss.requires_grad and not chosen_reward.requires_grad


def test_robust_dpo_loss_matches_chowdhury_by_hand():
    pc, pr, rc, rr = t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0])
    loss, _, _ = robust_dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    close(loss, (0.8 * -log_sigmoid(1.0) - 0.2 * -log_sigmoid(-1.0)) / (1 - 0.4))
    close(robust_dpo_loss(pc, pr, rc, rr, beta=0.5)[0], dpo_loss(pc, pr, rc, rr, beta=0.5)[0])
    with pytest.raises(ValueError):
        robust_dpo_loss(pc, pr, rc, rr, label_smoothing=0.5)


def test_ipo_loss_matches_azar_eq17_by_hand():
    pc, pr, rc, rr = t([-1.0, -1.0]), t([-3.0, -1.0]), t([-2.0, -1.0]), t([-2.0, -1.0])
    loss, _, _ = ipo_loss(pc, pr, rc, rr, beta=0.5)
    # h = 2 for the first pair, 0 for the second; target 1/(2*0.5) = 1
    close(loss, ((2 - 1) ** 2 + (0 - 1) ** 2) / 2)


def test_slic_loss_matches_zhao_hinge_plus_regulariser_by_hand():
    pc, pr = t([-1.0, -2.0]), t([-1.5, -5.0])
    hinge = (max(0, 1 - -1.0 + -1.5) + max(0, 1 - -2.0 + -5.0)) / 2  # 0.5 and 0
    close(slic_loss(pc, pr, delta=1.0), hinge)
    close(slic_loss(pc, pr, delta=1.0, reg_weight=0.5, reg_logps=t([-2.0, -4.0])), hinge + 0.5 * 3.0)
    close(slic_loss(pc, pr, delta=1.0, reg_weight=0.5), hinge + 0.5 * 1.5)  # chosen as targets


def test_rrhf_loss_matches_yuan_by_hand_and_ignores_padding():
    scores, rewards = t([[-1.0, -2.0, -0.5]]), t([[1.0, 3.0, 2.0]])
    # pairs (worse, better): (0,1): max(0,-1+2)=1; (0,2): max(0,-1+0.5)=0; (2,1): max(0,-0.5+2)=1.5
    close(rrhf_loss(scores, rewards, None, t([-4.0])), 2.5 + 4.0)
    padded_scores, padded_rewards = t([[-1.0, -2.0, -0.5, 9.0]]), t([[1.0, 3.0, 2.0, -9.0]])
    mask = torch.tensor([[True, True, True, False]])
    close(rrhf_loss(padded_scores, padded_rewards, mask, t([-4.0]), sft_weight=0.5), 2.5 + 0.5 * 4.0)


def test_pro_loss_is_plackett_luce_over_best_first_scores():
    e = math.exp
    expected = -((1 - math.log(e(1) + e(2) + e(0))) + (2 - math.log(e(2) + e(0))))
    close(pro_loss(t([[1.0, 2.0, 0.0]])), expected)
    scores = t([[0.4, 1.0, 0.0]])
    close(pro_loss(scores, torch.tensor([[True, True, False]])), bradley_terry_loss(t([0.4]), t([1.0])))
