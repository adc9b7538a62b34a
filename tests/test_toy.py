"""The toy lab's exact quantities against hand computations, identities and sampling."""

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


# ---------------------------------------------------------------------------------------------
# Iterated RLHF (Section 7.6.4).


@pytest.fixture(scope="module")
def lab():
    from rlhflab.toy.experiments import lab_instance

    torch.set_num_threads(1)
    return lab_instance(0)


def _rounds(inst, rounds, pairs, move_reference=False, fit=None):
    from rlhflab.toy.experiments import _rlhf_rounds, fit_reward_model

    return _rlhf_rounds(
        inst, rounds, pairs, 0.1, 0.1, seed=5, move_reference=move_reference, fit=fit or fit_reward_model
    )


def test_iterated_with_one_round_is_single_round_rlhf_exactly(lab):
    """Round 1 of either iterated variant is the single-round run at P pairs: same labels, same R_phi,
    same policy; and with a fit that records its data, the same preference pairs."""
    from rlhflab.toy.experiments import fit_reward_model

    seen_pairs = []

    def recording_fit(inst, prefs, seed):
        seen_pairs.append(torch.stack([prefs.context, prefs.chosen, prefs.rejected]))
        return fit_reward_model(inst, prefs, seed, steps=30)

    single = _rounds(lab, 1, 64, fit=recording_fit)[0]
    fixed = _rounds(lab, 1, 64, fit=recording_fit)[0]
    moved = _rounds(lab, 1, 64, move_reference=True, fit=recording_fit)[0]
    assert torch.equal(seen_pairs[0], seen_pairs[1]) and torch.equal(seen_pairs[0], seen_pairs[2])
    for other in (fixed, moved):
        assert other["labels"] == single["labels"] == 64 * int(lab.seen.sum())
        assert torch.equal(other["reward_model"], single["reward_model"])
        assert torch.equal(other["policy"], single["policy"])
    # The labels are on seen contexts only, among a fraction ρ of π_ref's outputs.
    assert lab.seen[seen_pairs[0][0]].all()


def test_iterated_final_round_has_spent_the_single_rounds_labels(lab):
    from rlhflab.toy.experiments import fit_reward_model

    sizes = []

    def counting_fit(inst, prefs, seed):
        sizes.append(len(prefs.context))
        return fit_reward_model(inst, prefs, seed, steps=5)

    rounds, pairs = 3, 16
    single = _rounds(lab, 1, rounds * pairs, fit=counting_fit)
    iterated = _rounds(lab, rounds, pairs, fit=counting_fit)
    assert sum(s["labels"] for s in iterated) == single[0]["labels"] == rounds * pairs * int(lab.seen.sum())
    # R_phi_r is refitted on every pair so far, not only the round's new ones.
    assert sizes[1:] == [pairs * int(lab.seen.sum()) * r for r in (1, 2, 3)]


def test_iterated_round_update_is_eq_17_with_the_oracle_as_reward_model(lab):
    """With R_phi = R* every fixed-reference round is π*_β; moving the reference compounds to
    π_r ∝ π_ref·exp(r·R*/β), the fixed-reference optimum at β/r."""
    oracle_fit = lambda inst, prefs, seed: inst.oracle_reward  # noqa: E731
    beta, ref = 0.1, lab.reference
    optimum = kl_regularised_optimum(ref, lab.oracle_reward, beta)
    for step in _rounds(lab, 3, 8, fit=oracle_fit):
        torch.testing.assert_close(step["policy"], optimum, rtol=0, atol=1e-12)
    for r, step in enumerate(_rounds(lab, 3, 8, move_reference=True, fit=oracle_fit), start=1):
        torch.testing.assert_close(
            step["policy"], kl_regularised_optimum(ref, lab.oracle_reward, beta / r), rtol=0, atol=1e-10
        )


def test_iterated_round_metrics_agree_with_performance_gap_and_accuracy_is_exact(lab):
    from rlhflab.toy.experiments import _round_metrics, pairwise_accuracy

    step = _rounds(lab, 1, 32, fit=lambda inst, prefs, seed: -inst.oracle_reward)[0]
    m = _round_metrics(lab, step, 0.1)
    gap = performance_gap(lab, -lab.oracle_reward, 0.1)
    for key in ("total", "seen", "unseen"):
        assert m[f"performance_gap_{key}"] == pytest.approx(gap[key], abs=1e-9)
    assert m["J"] == pytest.approx(gap["J_rlhf"], abs=1e-12) and m["KL_ref"] == pytest.approx(gap["KL_rlhf"])
    # −R* orders every untied pair the wrong way round, R* every one the right way.
    assert m["rm_accuracy_on_policy"] == 0.0 and m["rm_accuracy_on_ref"] == 0.0
    d = lab.context_dist
    assert pairwise_accuracy(lab.oracle_reward, lab.oracle_reward, step["policy"], d) == 1.0
    # A constant model ties everything: half right.
    assert pairwise_accuracy(torch.zeros_like(lab.oracle_reward), lab.oracle_reward, lab.reference, d) == 0.5
    # Hand case: one context, outputs with R* = (0, 1, 1), R_phi = (0, 1, −1), π = (1/2, 1/4, 1/4):
    # untied ordered pairs (0,1),(1,0) right with weight 2·(1/2·1/4), (0,2),(2,0) wrong, (1,2) tied.
    acc = pairwise_accuracy(
        torch.tensor([[0.0, 1.0, -1.0]]), torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([[0.5, 0.25, 0.25]]), [1.0]
    )
    assert acc == pytest.approx(0.5)


def test_iterated_experiment_writes_json_and_png_and_headline(lab, tmp_path):
    import json

    from rlhflab.toy.experiments import headline, iterated

    res = iterated(tmp_path, seed=0, rounds=2, pairs_per_context=16, repeats=2)
    assert (tmp_path / "iterated.png").stat().st_size > 0
    assert json.loads((tmp_path / "iterated.json").read_text())["winner"] == res["winner"]
    assert set(res["rows"]) == {"single", "iterated_fixed_ref", "iterated_moved_ref"}
    spent = 16 * int(lab.seen.sum())
    for variant, rows in res["rows"].items():
        assert [r["round"] for r in rows] == [1, 2]
        assert [r["labels_total"] for r in rows] == [spent, 2 * spent]
        for row in rows:
            for key in (
                "J",
                "J_hat",
                "performance_gap_total",
                "performance_gap_seen",
                "performance_gap_unseen",
                "KL_ref",
                "rm_accuracy_on_policy",
                "rm_accuracy_on_ref",
            ):
                assert math.isfinite(row[f"{key}_mean"]) and row[f"{key}_std"] >= 0
            assert 0 <= row["rm_accuracy_on_policy_mean"] <= 1
            if variant == "single":  # one round from π_ref: its step is its whole move
                assert row["KL_step_mean"] == pytest.approx(row["KL_ref_mean"], rel=1e-9)
    # Round 1 is the same run for every variant (same seeds, same labels).
    first = {v: rows[0]["J_mean"] for v, rows in res["rows"].items()}
    assert first["single"] == first["iterated_fixed_ref"] == first["iterated_moved_ref"]
    finals = {v: rows[-1]["J_mean"] for v, rows in res["rows"].items()}
    assert res["winner"]["variant"] == max(finals, key=finals.get)
    assert res["winner"]["vs_single"]["single"]["J_minus_single_mean"] == 0.0
    line = headline("iterated", res)
    assert "single" in line and "iterated(fixed ref)" in line and "iterated(moved ref)" in line
    assert f"{res['J_opt']:.3f}" in line and f"{finals['single']:.3f}" in line


# ---------------------------------------------------------------------------------------------
# Reward-model ensembles (Coste et al. 2023).


def test_ensemble_experiment_writes_json_and_png_and_headline(lab, tmp_path):
    import json

    from rlhflab.toy.experiments import ensemble, headline

    res = ensemble(
        tmp_path, seed=0, members=2, pairs_per_context=16, repeats=2, max_n=8, kl_coefs=[10.0, 0.1], matched_kls=(0.5,)
    )
    assert (tmp_path / "ensemble.png").stat().st_size > 0
    assert json.loads((tmp_path / "ensemble.json").read_text())["summary"] == res["summary"]
    variants = ["single"] + [f"{d}/{o}" for d in ("seeds", "bootstrap") for o in ("mean", "wco", "uwo")]
    assert list(res["curves"]) == variants
    for variant in variants:
        bon, path = res["curves"][variant]["best_of_n"], res["curves"][variant]["kl_path"]
        assert [p["n"] for p in bon] == [1, 2, 4, 8] and [p["kl_coef"] for p in path] == [10.0, 0.1]
        # best-of-1 is π_ref, whatever reward selects: J = J(π_ref) and KL = 0 exactly
        assert bon[0]["J_mean"] == pytest.approx(res["J_ref"], abs=1e-12) and bon[0]["KL_mean"] == pytest.approx(0.0)
        assert path[0]["KL_mean"] < path[1]["KL_mean"]  # a smaller β moves further from π_ref
        for curve in ("best_of_n", "kl_path"):
            matched = res["summary"][variant][curve]["J_at_KL"][0]
            assert matched["KL"] == 0.5 and math.isfinite(matched["J_mean"]) and matched["vs_single_std"] >= 0
    assert res["summary"]["single"]["kl_path"]["J_at_KL"][0]["vs_single_mean"] == 0.0
    for data in ("seeds", "bootstrap"):
        assert all(res["disagreement_under_ref"][data][w]["mean"] > 0 for w in ("seen", "unseen"))
    line = headline("ensemble", res)
    assert line.startswith("J at KL=0.5 (K=2, ρ=0.1, 2 repeats, paired): BoN: single ")
    assert "ensemble − single: seeds mean " in line and "; bootstrap mean " in line and " uwo " in line
    assert "| Eq.17: single " in line and "nan" not in line
    assert f"(J_ref {res['J_ref']:.3f})" in line


# ---------------------------------------------------------------------------------------------
# Dense rewards by potential-based shaping (Section 5.1; Ng et al. 1999).


def test_dense_shaped_returns_are_r_minus_the_empty_prefix_and_leave_the_optimum_exactly(lab):
    from types import SimpleNamespace

    from rlhflab.toy import build_toy_tokenizer
    from rlhflab.toy.dense import exactness, shaped_return_table
    from rlhflab.toy.mdp import END_TOKEN, enumeration_batch
    from rlhflab.toy.trainers import oracle_reward_source
    from rlhflab.train.policy_optimization import PolicyOptimization

    tokenizer = build_toy_tokenizer(lab.tokens)
    shaped = shaped_return_table(lab, tokenizer)
    # Φ_k of a cut output is R* of the output that stops after its first k tokens
    j = lab.outputs.index(("a", "b", "c"))
    stopped = [lab.outputs.index(o) for o in ((END_TOKEN,), ("a", END_TOKEN), ("a", "b", END_TOKEN))]
    row = 5 * lab.num_outputs + j
    assert shaped["potentials"][row].tolist() == lab.oracle_reward[5, stopped].tolist()
    # PPO's own prefix scoring (decode the first k tokens, ask the reward source) sees the same Φ
    batch = enumeration_batch(lab, tokenizer)
    contexts = [lab.context_text(i) for i in range(lab.num_contexts) for _ in lab.outputs]
    ppo = SimpleNamespace(tokenizer=tokenizer, reward_source=oracle_reward_source(lab))
    from_ppo = PolicyOptimization._prefix_potentials(ppo, contexts, batch)
    assert torch.equal(from_ppo, shaped["potentials"].float() * batch.completion_mask)

    random_table = torch.randn(lab.num_contexts, lab.num_outputs, generator=torch.Generator().manual_seed(0))
    for reward in (None, random_table.double()):
        check = exactness(lab, tokenizer, kl_coefs=(0.1, 0.25, 1.0), reward=reward)
        assert check["return_error"] < 1e-12
        assert all(err < 1e-12 for err in check["optimum_error"].values())
    assert exactness(lab, tokenizer, reward=random_table.double())["potential_of_empty_max"] != 0.0


def test_dense_experiment_writes_json_and_png_and_headline(tmp_path):
    import json

    from rlhflab.toy.dense import dense
    from rlhflab.toy.experiments import EXPERIMENTS, headline
    from rlhflab.toy.trainers import reduced_lab

    torch.set_num_threads(1)
    assert EXPERIMENTS["dense"] is dense
    res = dense(tmp_path, seed=0, repeats=2, budgets=(1, 2), lab=reduced_lab(seed=0, steps=30))
    assert (tmp_path / "dense.png").stat().st_size > 0
    assert json.loads((tmp_path / "dense.json").read_text())["rows"] == res["rows"]
    assert [r["iterations"] for r in res["rows"]] == [1, 2] and len(res["train_seeds"]) == 2
    for name in ("sparse", "dense"):
        assert len(res["traces"][name]) == 2 and all(len(t) == 3 and t[0] == 0.0 for t in res["traces"][name])
        assert res["settings"][name]["dense_rewards"] is (name == "dense")
    for check in res["exactness"].values():
        assert check["return_error"] < 1e-12 and max(check["optimum_error"].values()) < 1e-12
    line = headline("dense", res)
    r = res["rows"][-1]
    assert line.startswith("PPO gap closed sparse/dense (2 seeds, paired dense − sparse): 1 it ")
    assert f"2 it {r['sparse_mean']:.3f}±{r['sparse_std']:.3f}/{r['dense_mean']:.3f}±" in line
    assert "max |π*_β(R') − π*_β(R)| " in line and "nan" not in line
