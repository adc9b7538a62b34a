"""Reward-model ensembles against over-optimisation on the toy MDP (Coste et al. 2023):
rlhflab.toy.experiments.ensemble."""

import json
import math

import pytest

from rlhflab.toy.experiments import ensemble


def test_ensemble_experiment_writes_json_and_png_and_headline(default_lab, tmp_path):
    res = ensemble.run(
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
    line = ensemble.headline(res)
    assert line.startswith("J at KL=0.5 (K=2, ρ=0.1, 2 repeats, paired): BoN: single ")
    assert "ensemble − single: seeds mean " in line and "; bootstrap mean " in line and " uwo " in line
    assert "| Eq.17: single " in line and "nan" not in line
    assert f"(J_ref {res['J_ref']:.3f})" in line
