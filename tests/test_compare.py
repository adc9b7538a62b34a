"""rlhflab compare: one pool, several methods, each method's ΔJ against π_0 paired by prompt."""

import json
import math

import pytest

from rlhflab.commands.compare import CompareConfig, noise_verdicts, run_compare
from rlhflab.errors import ConfigError

# A compare run small enough for a test: tiny models, 8 feedback prompts, 4 × 2 evaluation samples.
TINY_COMPARE = dict(quick=True, feedback_prompts=8, eval_prompts=4, eval_samples=2, offline_steps=2, max_new_tokens=8)


def test_noise_verdicts_say_beyond_noise_or_which_evaluation_budget_would_show_the_effect():
    rows = [
        {"method": "initial", "contexts": "seen"},
        {"method": "ppo", "contexts": "seen", "delta_J": 0.30, "delta_J_se": 0.10},
        {"method": "dpo", "contexts": "seen", "delta_J": 0.10, "delta_J_se": 0.08},
        {"method": "bon", "contexts": "seen", "delta_J": 0.01, "delta_J_se": 0.08},
        {"method": "raft", "contexts": "seen", "delta_J": 0.0, "delta_J_se": 0.0},
    ]
    ppo, dpo, bon, raft = noise_verdicts(rows, eval_prompts=32)
    assert "every prompt alike" in raft
    assert "3.0 se, beyond noise" in ppo
    # se scales as 1/sqrt(prompts): 32 * (2 * 0.08 / 0.10)^2 = 81.92 -> 82 prompts reach 2 se
    assert f"--eval_prompts {math.ceil(32 * (2 * 0.08 / 0.10) ** 2)}" in dpo and "--eval_prompts 82" in dpo
    assert "larger training budget" in bon


@pytest.mark.integration
def test_quick_compare_reports_each_methods_paired_change_and_a_verdict(model_cache, tmp_path):
    run_dir = run_compare(
        CompareConfig(methods="ppo,dpo,kto,bon", output_dir=str(tmp_path / "cmp"), online_samples=16, **TINY_COMPARE)
    )
    rows = json.loads((run_dir / "comparison.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"initial", "ppo", "dpo", "kto", "bon"}
    for r in rows:
        assert r["n"] == 4 * 2  # every method, best-of-n included, judged on 2 samples of each of 4 prompts
        if r["method"] != "initial":
            assert r["delta_J_se"] is not None
            assert r["z"] == (pytest.approx(r["delta_J"] / r["delta_J_se"]) if r["delta_J_se"] else None)
    report = (run_dir / "comparison.md").read_text()
    assert "## Beyond noise?" in report and report.count("- ") >= 8  # 4 methods × 2 context sets


@pytest.mark.integration
def test_compare_optimises_and_measures_the_given_reward_in_place_of_the_pools(model_cache, tmp_path):
    run_dir = run_compare(
        CompareConfig(
            methods="bon",
            reward="length",  # minus the word count: nothing like the pool's reward model
            output_dir=str(tmp_path / "cmp"),
            **TINY_COMPARE,
        )
    )
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    for method in ("initial", "bon"):
        for contexts in ("seen", "unseen"):
            e = evaluation[method][contexts]
            assert e["proxy_rewards"] == [-float(len(t.split())) for t in e["texts"]], (method, contexts)
    assert "optimise `length` (`--reward`)" in (run_dir / "comparison.md").read_text()


def test_compare_rejects_a_bad_reward_spec_before_writing_anything(tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(ConfigError, match="no-such-dir': no such directory"):
        run_compare(CompareConfig(quick=True, methods="bon", reward=str(tmp_path / "no-such-dir"), output_dir=str(out)))
    assert not out.exists()
