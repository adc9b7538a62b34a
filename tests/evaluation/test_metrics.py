"""Policy and reward-model evaluation (Sections 4.3, 5.1, 6.2, 7.5), with tiny in-process models."""

import copy
import json
import math

import pytest
import torch

from rlhflab.data.records import Preference, Prompt
from rlhflab.errors import ConfigError
from rlhflab.evaluation.metrics import (
    distinct_n,
    evaluate_policy,
    evaluate_seen_unseen,
    expected_calibration_error,
    reward_model_report,
)
from rlhflab.evaluation.tables import format_table
from rlhflab.rewards.registry import RewardSource


def fraction_of_a(contexts, outputs):
    return [o.count("a") / max(1, len(o)) for o in outputs]


ORACLE = RewardSource("fraction of 'a'", fraction_of_a)
CONSTANT = RewardSource("constant", lambda c, o: [1.0] * len(o))
PROMPTS = [Prompt("say hi"), Prompt("write a poem"), Prompt("count to three")]
UNSEEN = [Prompt("Summarise the report."), Prompt("Draft an email.")]
FAST = dict(max_new_tokens=12, seed=0)


# ---- calibration and diversity, by hand ---------------------------------------------------------


def test_expected_calibration_error_matches_hand_computation():
    # 2 bins: [0, .5) holds p=.1 (y=0): |.1 - 0| * 1/3; [.5, 1] holds p=.9,.9 (y=1,0): |.9 - .5| * 2/3.
    ece = expected_calibration_error([0.9, 0.9, 0.1], [1, 0, 0], num_bins=2)
    assert ece == pytest.approx(0.1 / 3 + 0.4 * 2 / 3)


def test_expected_calibration_error_is_zero_when_perfectly_calibrated():
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert expected_calibration_error(p, y, num_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_distinct_n_counts_unique_over_total_whitespace_ngrams():
    texts = ["a b a", "a b"]
    assert distinct_n(texts, 1) == pytest.approx(2 / 5)  # a b a a b
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)  # (a b) (b a) (a b)
    assert distinct_n(["", "one"], 2) == 0.0


# ---- J (Eq. 12), J_hat (Eq. 14), KL ---------------------------------------------------------------


def test_J_is_the_mean_oracle_reward_of_the_sampled_texts(tiny_policy):
    policy, tokenizer = tiny_policy
    ev = evaluate_policy(policy, tokenizer, PROMPTS, ORACLE, CONSTANT, num_samples=2, **FAST)
    assert ev.n == 6 and ev.num_prompts == 3 and len(ev.texts) == 6
    expected = fraction_of_a(ev.contexts, ev.texts)
    assert ev.oracle_rewards == pytest.approx(expected)
    assert ev.J == pytest.approx(sum(expected) / len(expected))
    assert ev.J_hat == 1.0 and ev.kl is None
    assert 0 < ev.mean_length <= FAST["max_new_tokens"] and 0 <= ev.truncated_fraction <= 1
    assert ev.distinct_1 == pytest.approx(distinct_n(ev.texts, 1))
    json.dumps(ev.to_dict())  # serialisable for reports


def test_sampling_is_reproducible_from_the_seed(tiny_policy):
    policy, tokenizer = tiny_policy
    a = evaluate_policy(policy, tokenizer, PROMPTS, ORACLE, None, **FAST)
    b = evaluate_policy(policy, tokenizer, PROMPTS, ORACLE, None, **FAST)
    assert a.texts == b.texts and a.J_hat is None and a.proxy_rewards is None


@pytest.mark.parametrize("num_samples", [1, 3])
def test_standard_error_is_zero_for_a_constant_reward(tiny_policy, num_samples):
    policy, tokenizer = tiny_policy
    ev = evaluate_policy(policy, tokenizer, PROMPTS, CONSTANT, CONSTANT, num_samples=num_samples, **FAST)
    assert ev.J == 1.0 and ev.J_se == 0.0 and ev.J_hat_se == 0.0


def test_kl_is_zero_against_a_copy_and_positive_after_perturbing(tiny_policy):
    policy, tokenizer = tiny_policy
    reference = copy.deepcopy(policy)
    ev = evaluate_policy(policy, tokenizer, PROMPTS, None, None, reference=reference, num_samples=4, **FAST)
    # the policy's log-probs come from the sampler, the reference's from a forward pass: equal up to
    # float rounding, far below the k1 estimate's sampling noise
    assert abs(ev.kl) < 1e-4 and ev.kl_se < 1e-4
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn_like(p))
    ev = evaluate_policy(policy, tokenizer, PROMPTS, None, None, reference=reference, num_samples=4, **FAST)
    assert ev.kl > 2 * ev.kl_se > 0


def test_kl_against_disabled_lora_adapters(tiny_policy):
    peft = pytest.importorskip("peft")
    policy, tokenizer = tiny_policy
    lora = peft.get_peft_model(policy, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"]))
    ev = evaluate_policy(lora, tokenizer, PROMPTS, None, None, reference="adapters-disabled", num_samples=2, **FAST)
    assert ev.kl == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero: the adapter is a no-op
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.add_(10 * torch.randn_like(p))
    ev = evaluate_policy(lora, tokenizer, PROMPTS, None, None, reference="adapters-disabled", num_samples=4, **FAST)
    assert ev.kl > 2 * ev.kl_se  # k1 is noisy per sample; demand a clear margin, not just the sign


def test_a_string_reference_other_than_adapters_disabled_is_rejected(tiny_policy):
    policy, tokenizer = tiny_policy
    with pytest.raises(ConfigError):
        evaluate_policy(policy, tokenizer, PROMPTS, None, None, reference="base", **FAST)


def test_seen_unseen_returns_both_evaluations(tiny_policy):
    policy, tokenizer = tiny_policy
    out = evaluate_seen_unseen(policy, tokenizer, PROMPTS, UNSEEN, oracle=ORACLE, reward_model=CONSTANT, **FAST)
    assert set(out) == {"seen", "unseen"}
    assert out["seen"].num_prompts == 3 and out["unseen"].num_prompts == 2
    assert out["unseen"].contexts[0] == "Summarise the report."


# ---- reward-model report (Section 7.5) ----------------------------------------------------------


def oracle_labelled_pairs():
    outputs = ["aaaa", "aab", "abbb", "bbbb", "ab"]
    pairs = []
    for i, x in enumerate(outputs):
        for y in outputs[i + 1 :]:
            (rx,), (ry,) = fraction_of_a([""], [x]), fraction_of_a([""], [y])
            if rx != ry:
                pairs.append(Preference("p", x if rx > ry else y, y if rx > ry else x))
    return pairs


def test_the_oracle_itself_has_accuracy_one_on_oracle_labelled_pairs():
    heldout = oracle_labelled_pairs()
    report = reward_model_report(ORACLE, heldout, oracle=ORACLE)
    assert report["accuracy"] == 1.0 and report["oracle_accuracy"] == 1.0
    assert report["num_pairs"] == len(heldout) > 0
    assert report["log_likelihood"] < 0 and 0 <= report["ece"] <= 1


def test_a_constant_reward_model_scores_chance_and_is_calibrated_at_one_half():
    report = reward_model_report(CONSTANT, oracle_labelled_pairs())
    assert report["accuracy"] == 0.5  # every pair is a tie
    assert report["log_likelihood"] == pytest.approx(math.log(0.5))
    assert report["ece"] == pytest.approx(0.0)  # p = 1/2 both ways, outcomes 1 and 0 both ways


def test_correlations_with_the_oracle_on_seen_and_unseen_samples():
    outputs = ["a", "ab", "abb", "abbb", "bbbb"]
    samples = (["c"] * len(outputs), outputs)
    report = reward_model_report(
        ORACLE, oracle_labelled_pairs(), oracle=ORACLE, seen_samples=samples, unseen_samples=samples
    )
    assert report["seen"]["spearman"] == pytest.approx(1.0) and report["seen"]["pearson"] == pytest.approx(1.0)
    const = reward_model_report(CONSTANT, oracle_labelled_pairs(), oracle=ORACLE, unseen_samples=samples)
    assert const["unseen"]["spearman"] is None and const["unseen"]["pearson"] is None
    assert "constant" in const["unseen"]["note"] and "seen" not in const
    with pytest.raises(ConfigError):
        reward_model_report(CONSTANT, oracle_labelled_pairs(), seen_samples=samples)


def test_format_table_renders_markdown():
    table = format_table(
        [{"name": "ppo", "J": 0.51234, "kl": None}, {"name": "a|b", "J": 1, "kl": 2.0}],
        [("name", "method", ""), ("J", "J", ".2f"), ("kl", "KL", ".1f")],
    )
    assert table.splitlines() == [
        "| method | J | KL |",
        "|---|---|---|",
        "| ppo | 0.51 | – |",
        "| a\\|b | 1.00 | 2.0 |",
    ]


def _evaluation(prompt_index, rewards, contexts_by_prompt):
    from rlhflab.evaluation.metrics import PolicyEvaluation

    return PolicyEvaluation(
        J=None,
        J_se=None,
        J_hat=None,
        J_hat_se=None,
        kl=None,
        kl_se=None,
        mean_length=0.0,
        truncated_fraction=0.0,
        distinct_1=0.0,
        distinct_2=0.0,
        n=len(rewards),
        num_prompts=len(contexts_by_prompt),
        prompt_index=prompt_index,
        contexts=[contexts_by_prompt[i] for i in prompt_index],
        texts=[""] * len(rewards),
        oracle_rewards=rewards,
        proxy_rewards=None,
    )


def test_paired_difference_is_the_mean_and_se_of_per_prompt_differences_by_hand():
    from rlhflab.evaluation.metrics import paired_difference

    contexts = ["a", "b", "c"]
    # two samples per prompt; per-prompt means before 0.0, 1.0, 2.0 and after 0.5, 1.0, 3.0
    before = _evaluation([0, 0, 1, 1, 2, 2], [-1.0, 1.0, 1.0, 1.0, 2.0, 2.0], contexts)
    after = _evaluation([0, 1, 2, 0, 1, 2], [0.0, 0.5, 3.0, 1.0, 1.5, 3.0], contexts)
    delta, se = paired_difference(before, after)
    # differences 0.5, 0.0, 1.0: mean 0.5, sample std 0.5, se 0.5 / sqrt(3)
    assert delta == pytest.approx(0.5)
    assert se == pytest.approx(0.5 / math.sqrt(3))
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(before, _evaluation([0, 1, 2], [0.0, 0.0, 0.0], ["a", "b", "x"]))
