"""Iterated RLHF on the toy MDP (Section 7.6.4): rlhflab.toy.experiments.iterated."""

import json
import math

import pytest
import torch

from rlhflab.toy import kl_regularised_optimum, performance_gap
from rlhflab.toy.experiments import iterated
from rlhflab.toy.experiments.common import fit_reward_model
from rlhflab.toy.experiments.iterated import oracle_pairwise_accuracy, rlhf_rounds, round_metrics


def _rounds(inst, rounds, pairs, move_reference=False, fit=None):
    return rlhf_rounds(
        inst, rounds, pairs, 0.1, 0.1, seed=5, move_reference=move_reference, fit=fit or fit_reward_model
    )


def test_iterated_with_one_round_is_single_round_rlhf_exactly(default_lab):
    """Round 1 of either iterated variant is the single-round run at P pairs: same labels, same R_phi,
    same policy; and with a fit that records its data, the same preference pairs."""
    seen_pairs = []

    def recording_fit(inst, prefs, seed):
        seen_pairs.append(torch.stack([prefs.context, prefs.chosen, prefs.rejected]))
        return fit_reward_model(inst, prefs, seed, steps=30)

    single = _rounds(default_lab, 1, 64, fit=recording_fit)[0]
    fixed = _rounds(default_lab, 1, 64, fit=recording_fit)[0]
    moved = _rounds(default_lab, 1, 64, move_reference=True, fit=recording_fit)[0]
    assert torch.equal(seen_pairs[0], seen_pairs[1]) and torch.equal(seen_pairs[0], seen_pairs[2])
    for other in (fixed, moved):
        assert other["labels"] == single["labels"] == 64 * int(default_lab.seen.sum())
        assert torch.equal(other["reward_model"], single["reward_model"])
        assert torch.equal(other["policy"], single["policy"])
    # The labels are on seen contexts only, among a fraction ρ of π_ref's outputs.
    assert default_lab.seen[seen_pairs[0][0]].all()


def test_iterated_final_round_has_spent_the_single_rounds_labels(default_lab):
    sizes = []

    def counting_fit(inst, prefs, seed):
        sizes.append(len(prefs.context))
        return fit_reward_model(inst, prefs, seed, steps=5)

    rounds, pairs = 3, 16
    single = _rounds(default_lab, 1, rounds * pairs, fit=counting_fit)
    iterated_steps = _rounds(default_lab, rounds, pairs, fit=counting_fit)
    assert (
        sum(s["labels"] for s in iterated_steps) == single[0]["labels"] == rounds * pairs * int(default_lab.seen.sum())
    )
    # R_phi_r is refitted on every pair so far, not only the round's new ones.
    assert sizes[1:] == [pairs * int(default_lab.seen.sum()) * r for r in (1, 2, 3)]


def test_iterated_round_update_is_eq_17_with_the_oracle_as_reward_model(default_lab):
    """With R_phi = R* every fixed-reference round is π*_β; moving the reference compounds to
    π_r ∝ π_ref·exp(r·R*/β), the fixed-reference optimum at β/r."""
    oracle_fit = lambda inst, prefs, seed: inst.oracle_reward  # noqa: E731
    beta, ref = 0.1, default_lab.reference
    optimum = kl_regularised_optimum(ref, default_lab.oracle_reward, beta)
    for step in _rounds(default_lab, 3, 8, fit=oracle_fit):
        torch.testing.assert_close(step["policy"], optimum, rtol=0, atol=1e-12)
    for r, step in enumerate(_rounds(default_lab, 3, 8, move_reference=True, fit=oracle_fit), start=1):
        torch.testing.assert_close(
            step["policy"], kl_regularised_optimum(ref, default_lab.oracle_reward, beta / r), rtol=0, atol=1e-10
        )


def test_iterated_round_metrics_agree_with_performance_gap_and_accuracy_is_exact(default_lab):
    step = _rounds(default_lab, 1, 32, fit=lambda inst, prefs, seed: -inst.oracle_reward)[0]
    m = round_metrics(default_lab, step, 0.1)
    gap = performance_gap(default_lab, -default_lab.oracle_reward, 0.1)
    for key in ("total", "seen", "unseen"):
        assert m[f"performance_gap_{key}"] == pytest.approx(gap[key], abs=1e-9)
    assert m["J"] == pytest.approx(gap["J_rlhf"], abs=1e-12) and m["KL_ref"] == pytest.approx(gap["KL_rlhf"])
    # −R* orders every untied pair the wrong way round, R* every one the right way.
    assert m["rm_accuracy_on_policy"] == 0.0 and m["rm_accuracy_on_ref"] == 0.0
    d = default_lab.context_dist
    assert oracle_pairwise_accuracy(default_lab.oracle_reward, default_lab.oracle_reward, step["policy"], d) == 1.0
    # A constant model ties everything: half right.
    assert (
        oracle_pairwise_accuracy(
            torch.zeros_like(default_lab.oracle_reward), default_lab.oracle_reward, default_lab.reference, d
        )
        == 0.5
    )
    # Hand case: one context, outputs with R* = (0, 1, 1), R_phi = (0, 1, −1), π = (1/2, 1/4, 1/4):
    # untied ordered pairs (0,1),(1,0) right with weight 2·(1/2·1/4), (0,2),(2,0) wrong, (1,2) tied.
    acc = oracle_pairwise_accuracy(
        torch.tensor([[0.0, 1.0, -1.0]]), torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([[0.5, 0.25, 0.25]]), [1.0]
    )
    assert acc == pytest.approx(0.5)


def test_iterated_experiment_writes_json_and_png_and_headline(default_lab, tmp_path):
    res = iterated.run(tmp_path, seed=0, rounds=2, pairs_per_context=16, repeats=2)
    assert (tmp_path / "iterated.png").stat().st_size > 0
    assert json.loads((tmp_path / "iterated.json").read_text())["winner"] == res["winner"]
    assert set(res["rows"]) == {"single", "iterated_fixed_ref", "iterated_moved_ref"}
    spent = 16 * int(default_lab.seen.sum())
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
    line = iterated.headline(res)
    assert "single" in line and "iterated(fixed ref)" in line and "iterated(moved ref)" in line
    assert f"{res['J_opt']:.3f}" in line and f"{finals['single']:.3f}" in line
