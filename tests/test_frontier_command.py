"""rlhflab frontier: every method's points against KL, the fits and the reference curve, on tiny models."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlhflab.commands.frontier import FrontierConfig, _Evaluations, run_frontier
from rlhflab.commands.train import run_policy_optimization
from rlhflab.data import load_prompts
from rlhflab.errors import ConfigError
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.policy_optimization import RLConfig

# Smaller than --quick: 8 feedback prompts, 4 evaluation prompts per set, 8 draws for best-of-n.
TINY_FRONTIER = dict(
    quick=True,
    feedback_prompts=8,
    eval_prompts=4,
    eval_samples=2,
    max_new_tokens=8,
    bon_max_n=8,
    policy_iterations=4,
    prompts_per_iteration=4,
    eval_every=2,
    preference_steps=4,
    preference_eval_every=2,
    batch_size=4,
    num_bootstrap=50,
)


@pytest.mark.integration
def test_quick_frontier_writes_points_along_each_method_with_fits_and_a_reference_curve(model_cache, tmp_path):
    run_dir = run_frontier(FrontierConfig(output_dir=str(tmp_path / "f"), **TINY_FRONTIER))
    for name in ("frontier.json", "frontier.md", "frontier.png", "frontier_config.yaml"):
        assert (run_dir / name).is_file(), name
    result = json.loads((run_dir / "frontier.json").read_text())
    points = result["points"]
    for method in ("bon", "ppo", "dpo"):
        for contexts in ("seen", "unseen"):
            mine = sorted(
                (p for p in points if p["method"] == method and p["contexts"] == contexts), key=lambda p: p["step"]
            )
            assert len(mine) >= 3, (method, contexts)
            assert mine[0]["kl"] == 0.0 and mine[0]["delta_J"] == pytest.approx(0.0)  # π_0 (n = 1) first
            assert all(len(p["per_prompt_J"]) == 4 for p in mine)
            if method == "bon":
                assert [p["n"] for p in mine] == [1, 2, 4, 8]
                assert all(b["kl"] > a["kl"] for a, b in zip(mine, mine[1:]))
                assert all(b["kl_estimate"] >= a["kl_estimate"] for a, b in zip(mine, mine[1:]))
            else:  # π_0, then every 2 steps of 4
                assert [p["step"] for p in mine] == [0, 2, 4]
            fit = result["fits"][method][contexts]
            assert (fit["J"] is None) == ("note" in fit)  # a fit, or the reason there is none
    for ref in result["reference"].values():
        assert ref[0]["beta"] == math.inf and ref[0]["kl"] == 0.0
        assert all(b["J"] >= a["J"] - 1e-9 for a, b in zip(ref, ref[1:]))
    report = (run_dir / "frontier.md").read_text()
    assert "## Gao et al. fits" in report and report.count("| bon |") == 8 and report.count("| ppo |") == 6
    # the same view in `rlhflab report`: the plot, and each fit's line as a headline
    from rlhflab.evaluation.html_report import write_report

    html = write_report([run_dir]).read_text()
    assert "The frontier: J (oracle)" in html and "data:image/png;base64," in html
    assert "ppo, seen contexts: measured: J is highest at" in html and "the pool&#39;s reward model" in html


def test_frontier_rejects_an_unknown_method_before_writing_anything(tmp_path):
    out = tmp_path / "f"
    with pytest.raises(ConfigError, match="choose from bon, ppo, rloo, grpo, dpo, ipo, kto, raft"):
        run_frontier(FrontierConfig(quick=True, methods="bon,slic", output_dir=str(out)))
    with pytest.raises(ConfigError, match="preference_betas: every beta must be > 0"):
        run_frontier(FrontierConfig(quick=True, preference_betas="0.1,0", output_dir=str(out)))
    assert not out.exists()


@pytest.mark.integration
def test_the_group_estimators_kto_ipo_across_beta_and_raft_rounds_have_curves(model_cache, tmp_path):
    settings = {**TINY_FRONTIER, "policy_iterations": 2, "eval_every": 1, "raft_rounds": 2}
    cfg = FrontierConfig(
        output_dir=str(tmp_path / "f"), methods="rloo,grpo,ipo,kto,raft", preference_betas="0.1,0.5", **settings
    )
    result = json.loads((run_frontier(cfg) / "frontier.json").read_text())
    steps = {}
    for p in result["points"]:
        if p["contexts"] == "seen":
            steps.setdefault(p["method"], []).append(p["step"])
    expected_methods = ["rloo", "grpo", "ipo β=0.1", "ipo β=0.5", "kto β=0.1", "kto β=0.5", "raft"]
    assert list(steps) == expected_methods
    assert steps["rloo"] == steps["grpo"] == [0, 1, 2] and steps["raft"] == [0, 1, 2]
    assert steps["ipo β=0.1"] == steps["kto β=0.5"] == [0, 2, 4]
    assert set(result["fits"]) == set(expected_methods)
    trained = {p["method"]: p for p in result["points"] if p["contexts"] == "seen" and p["step"] > 0}
    # each moved away from π_0 (a KL estimate on 8 draws may be below 0; only π_0 itself gives exactly 0)
    assert not [m for m, p in trained.items() if p["kl"] == 0.0]


@pytest.mark.integration
def test_evaluating_along_training_leaves_the_training_run_as_it_would_have_been(model_cache, tmp_path):
    reference, tokenizer = load_policy("tiny-policy")
    oracle = load_reward_source("keyword:e")
    prompts = load_prompts("train", 4)
    run = SimpleNamespace(
        tokenizer=tokenizer,
        pool=SimpleNamespace(prompt_sets={"seen": prompts}),
        eval_kw=dict(oracle=oracle, reward_model=oracle, reference=reference, num_samples=2, max_new_tokens=8, seed=1),
        baseline={"seen": {"J": np.zeros(4), "J_hat": np.zeros(4)}},
    )

    def ppo(name, evaluate):
        policy = load_policy("tiny-policy")[0]
        cfg = RLConfig(
            policy="tiny-policy",
            reward="keyword:e",
            num_iterations=4,
            prompts_per_iteration=4,
            max_new_tokens=8,
            learning_rate=3e-3,
            use_chat_template="false",
            progress=False,
            output_dir=str(tmp_path / name),
        )
        hook = _Evaluations("ppo", policy, 4, 1, run, "iteration") if evaluate else None
        run_policy_optimization(cfg, policy, tokenizer, oracle, None, reference, should_stop=hook)
        return policy.state_dict(), hook

    plain, _ = ppo("plain", evaluate=False)
    watched, hook = ppo("watched", evaluate=True)
    assert [p["step"] for p in hook.points] == [0, 1, 2, 3, 4]
    assert any(not torch.equal(plain[k], load_policy("tiny-policy")[0].state_dict()[k]) for k in plain)  # it trained
    assert all(torch.equal(plain[k], watched[k]) for k in plain)


def test_frontier_presets_name_only_its_options_and_quick_fills_them():
    import dataclasses

    from rlhflab.commands.presets import PRESETS

    fields = {f.name for f in dataclasses.fields(FrontierConfig)}
    for preset, values in PRESETS["frontier"].items():
        assert set(values) <= fields, (preset, set(values) - fields)
    quick = FrontierConfig(quick=True, bon_max_n=4).resolved()
    assert (quick.preset, quick.policy, quick.bon_max_n) == ("quick", "tiny-policy", 4)
    with pytest.raises(ConfigError, match="eval_every must be >= 1"):
        FrontierConfig(quick=True, eval_every=0).resolved()
