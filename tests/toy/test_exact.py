"""The toy lab's exact quantities (rlhflab.toy.mdp, rlhflab.toy.exact) against hand computations,
identities and sampling."""

import math

import pytest
import torch

from rlhflab.sampling.rollout import sample
from rlhflab.toy import (
    best_of_n_distribution,
    best_of_n_kl_bound,
    build_instance,
    build_toy_policy,
    evaluate_model_against_optimum,
    exact_policy,
    export_instance,
    gap_closed,
    kl_divergence,
    kl_per_context,
    kl_regularised_optimum,
    load_instance_json,
    objective,
    optimum_objective,
    performance,
    performance_gap,
    pretrain_reference,
)
from rlhflab.toy.exact import evaluate_table


@pytest.fixture(scope="module")
def small():
    """2 tokens, 2-token contexts, horizon 2: 4 contexts × 7 outputs; π_ref := P_pre (no training)."""
    inst = build_instance(seed=0, tokens=("a", "b"), horizon=2)
    return inst.with_reference(inst.pretrain_dist)


@pytest.fixture(scope="module")
def small_model():
    inst = build_instance(seed=0, tokens=("a", "b"), horizon=2)
    model, tokenizer = pretrain_reference(inst, seed=0, steps=30, batch_size=64)
    return inst.with_reference(exact_policy(model, inst, tokenizer)), model, tokenizer


def test_enumeration_counts_outputs_with_and_without_end_token():
    inst = build_instance(seed=0)
    assert (inst.num_contexts, inst.num_outputs) == (16, 1 + 4 + 16 + 64)
    assert sum(o[-1] == "<eos>" for o in inst.outputs) == 1 + 4 + 16


def test_exact_policy_rows_sum_to_one(small_model):
    inst, _, _ = small_model
    assert torch.allclose(inst.reference.sum(-1), torch.ones(inst.num_contexts, dtype=torch.float64), atol=1e-5)
    untrained, tokenizer = build_toy_policy(inst, seed=3)
    table = exact_policy(untrained, inst, tokenizer)
    assert torch.allclose(table.sum(-1), torch.ones(inst.num_contexts, dtype=torch.float64), atol=1e-5)


def test_pretraining_moves_reference_towards_pretrain_distribution(small_model):
    inst, _, tokenizer = small_model
    untrained, _ = build_toy_policy(inst, seed=0)
    tv = lambda p: float(0.5 * (p - inst.pretrain_dist).abs().sum(-1).mean())  # noqa: E731
    assert tv(inst.reference) < tv(exact_policy(untrained, inst, tokenizer))


def test_exact_policy_matches_the_models_own_sampling(small_model):
    inst, model, tokenizer = small_model
    c = 1
    prompt = [tokenizer.convert_tokens_to_ids(t) for t in inst.contexts[c]]
    torch.manual_seed(0)
    rollout = sample(model, tokenizer, [prompt], num_samples=3000, max_new_tokens=inst.horizon)
    index = {tuple(tokenizer.convert_tokens_to_ids(t) for t in o): j for j, o in enumerate(inst.outputs)}
    counts = torch.zeros(inst.num_outputs, dtype=torch.float64)
    for row, mask in zip(rollout.batch.completion_ids, rollout.batch.completion_mask):
        counts[index[tuple(row[mask.bool()].tolist())]] += 1
    assert 0.5 * (counts / counts.sum() - inst.reference[c]).abs().sum() < 0.05


def test_performance_and_kl_match_a_hand_computed_case():
    policy, reference = torch.tensor([[0.25, 0.75]]), torch.tensor([[0.5, 0.5]])
    reward, d = torch.tensor([[1.0, 0.0]]), torch.tensor([1.0])
    assert performance(policy, reward, d) == pytest.approx(0.25)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl_divergence(policy, reference, d) == pytest.approx(kl)
    assert objective(policy, reference, reward, 0.5, d) == pytest.approx(0.25 - 0.5 * kl)
    # π* ∝ π_ref·exp(R/β) with β = 1: [e, 1] / (e + 1); value β·log Z = log((e + 1) / 2).
    assert kl_regularised_optimum(reference, reward, 1.0)[0, 0] == pytest.approx(math.e / (math.e + 1))
    assert optimum_objective(reference, reward, 1.0, d) == pytest.approx(math.log((math.e + 1) / 2))


@pytest.mark.parametrize("beta", [0.05, 0.3, 2.0])
def test_closed_form_value_equals_objective_of_optimum(small, beta):
    opt = kl_regularised_optimum(small.reference, small.oracle_reward, beta)
    value = optimum_objective(small.reference, small.oracle_reward, beta, small.context_dist)
    assert value == pytest.approx(
        objective(opt, small.reference, small.oracle_reward, beta, small.context_dist), abs=1e-10
    )
    assert gap_closed(opt, small.reference, small.oracle_reward, beta, small.context_dist) == pytest.approx(1.0)
    assert gap_closed(small.reference, small.reference, small.oracle_reward, beta, small.context_dist) == pytest.approx(
        0.0
    )


def test_optimum_concentrates_on_argmax_as_beta_vanishes_and_is_reference_as_beta_grows(small):
    cold = kl_regularised_optimum(small.reference, small.oracle_reward, 1e-4)
    best = small.oracle_reward == small.oracle_reward.max(-1, keepdim=True).values
    assert torch.allclose((cold * best).sum(-1), torch.ones(small.num_contexts, dtype=torch.float64))
    hot = kl_regularised_optimum(small.reference, small.oracle_reward, 1e6)
    assert torch.allclose(hot, small.reference, atol=1e-5)
    assert torch.equal(kl_regularised_optimum(small.reference, small.oracle_reward, math.inf), small.reference)


def test_best_of_n_distribution_is_exact_with_ties(small):
    ref, R = small.reference, (small.oracle_reward > 0).double()  # a pass/fail reward: many ties
    assert len(R[0].unique()) < R.shape[1]
    assert torch.allclose(best_of_n_distribution(ref, R, 1), ref)
    for n in (2, 4, 16, 100):
        bon = best_of_n_distribution(ref, R, n)
        assert torch.allclose(bon.sum(-1), torch.ones(small.num_contexts, dtype=torch.float64))
        assert kl_divergence(bon, ref, small.context_dist) <= best_of_n_kl_bound(n) + 1e-12
        assert (kl_per_context(bon, ref) <= best_of_n_kl_bound(n) + 1e-12).all()


def _float32_rows_off_by_2e_7():
    """π_ref rows as a float32 model gives them: each sums to 1 ± 2e-7, not to 1."""
    g = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(5, 6, generator=g, dtype=torch.float64), -1)
    ref = (ref * (1 + 2e-7 * torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))[:, None]).float()
    reward = torch.tensor([0.0, 1.0, 1.0, 2.0, 0.5, 2.0], dtype=torch.float64).expand(5, 6).clone()
    return ref, reward


def test_best_of_n_distribution_keeps_every_rows_mass_at_n_1024_from_float32_rows():
    ref, reward = _float32_rows_off_by_2e_7()
    assert (ref.double().sum(-1) - 1).abs().max() > 1e-7  # the input really is off
    bon = best_of_n_distribution(ref, reward, 1024)
    assert bon.dtype == torch.float64
    assert (bon.sum(-1) - 1).abs().max() < 1e-12


def test_best_of_n_distribution_equals_enumerating_every_n_tuple_of_draws():
    """Direct computation: all 6^n tuples of i.i.d. draws, the kept one the first with the top reward."""
    import itertools

    ref, reward = _float32_rows_off_by_2e_7()
    pi = ref.double() / ref.double().sum(-1, keepdim=True)
    for n in (1, 2, 3):
        direct = torch.zeros_like(pi)
        for draws in itertools.product(range(6), repeat=n):
            kept = max(draws, key=lambda o: (reward[0, o], -draws.index(o)))
            direct[:, kept] += pi[:, list(draws)].prod(-1)
        torch.testing.assert_close(best_of_n_distribution(ref, reward, n), direct, rtol=0, atol=1e-12)


def test_best_of_4_sampling_matches_exact_distribution(small):
    c, n, draws = 2, 4, 4000
    tied = (small.oracle_reward > 0).double()  # ties broken by first index here; exact form must not care
    ref, R = small.reference[c], tied[c]
    g = torch.Generator().manual_seed(0)
    samples = torch.multinomial(ref, draws * n, replacement=True, generator=g).view(draws, n)
    kept = samples.gather(1, R[samples].argmax(-1, keepdim=True)).squeeze(-1)
    empirical = torch.bincount(kept, minlength=len(ref)).double() / draws
    exact = best_of_n_distribution(small.reference, tied, n)[c]
    assert 0.5 * (empirical - exact).abs().sum() < 0.05


def test_performance_gap_is_zero_for_the_oracle_and_for_per_context_shifts(small):
    gap = performance_gap(small, small.oracle_reward, 0.1)
    assert gap["total"] == pytest.approx(0.0, abs=1e-12)
    shifted = small.oracle_reward + torch.arange(small.num_contexts, dtype=torch.float64)[:, None]
    gap = performance_gap(small, shifted, 0.1)
    assert gap["seen"] == pytest.approx(0.0, abs=1e-9) and gap["unseen"] == pytest.approx(0.0, abs=1e-9)
    wrong = performance_gap(small, -small.oracle_reward, 0.1)
    assert wrong["seen"] > 0 and wrong["unseen"] > 0


def test_export_load_round_trip_reproduces_performance_exactly(small, tmp_path):
    export_instance(small, tmp_path / "instance.json")
    loaded = load_instance_json(tmp_path / "instance.json")
    assert loaded.outputs == small.outputs and torch.equal(loaded.seen, small.seen)
    before = evaluate_table(kl_regularised_optimum(small.reference, small.oracle_reward, 0.2), small, 0.2)
    after = evaluate_table(kl_regularised_optimum(loaded.reference, loaded.oracle_reward, 0.2), loaded, 0.2)
    assert before == after


def test_evaluate_model_against_optimum_gives_zero_gap_for_the_reference_model(small_model):
    inst, model, tokenizer = small_model
    res = evaluate_model_against_optimum(model, inst, 0.1, tokenizer)
    assert res["gap_closed"] == pytest.approx(0.0, abs=1e-9)
    assert res["KL"] == pytest.approx(0.0, abs=1e-9)
    assert res["objective_opt"] > res["objective_ref"]
