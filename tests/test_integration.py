"""A few integration tests on the real offline default models and the whole demo pipeline.

The first run converts SmolLM2's GGUF to safetensors in $RLHFLAB_CACHE (~30-60 s); later runs load
it in about a second.
"""

import json

import pytest
import torch

pytestmark = pytest.mark.integration


def test_default_policy_loads_offline_and_follows_its_chat_template():
    from rlhflab.data import render_prompt
    from rlhflab.models import load_policy
    from rlhflab.sampling.rollout import sample

    policy, tokenizer = load_policy("smollm2-135m-instruct")
    assert policy.config.vocab_size == 49152 and tokenizer.chat_template
    ids = tokenizer(render_prompt("Say hello.", tokenizer), add_special_tokens=False).input_ids
    torch.manual_seed(0)
    rollout = sample(policy, tokenizer, [ids], num_samples=2, max_new_tokens=8)
    assert len(rollout.completion_texts) == 2 and all(t.strip() for t in rollout.completion_texts)


def test_default_reward_backbone_scores_pairs_offline():
    from rlhflab.models import load_reward_model
    from rlhflab.models.scoring import score

    model, tokenizer = load_reward_model("minilm-l6")
    rewards = score(model, tokenizer, ["How was your day?"] * 2, ["Wonderful!", "Awful."])
    assert rewards.shape == (2,) and torch.isfinite(rewards).all()


def test_quick_demo_runs_the_whole_workflow_and_writes_its_report(tmp_path):
    from rlhflab.commands.demo import DemoConfig, run_demo

    run_dir = run_demo(
        DemoConfig(
            quick=True,
            output_dir=str(tmp_path / "demo"),
            feedback_prompts=16,
            eval_prompts=8,
            policy_iterations=3,
            prompts_per_iteration=8,
            max_new_tokens=12,
        )
    )
    for name in (
        "summary.md",
        "training_curves.png",
        "before_after.png",
        "evaluation.json",
        "reward/reward_model/config.json",
        "ppo/policy/config.json",
        "ppo/metrics.jsonl",
    ):
        assert (run_dir / name).exists(), name
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert set(evaluation) == {"initial", "final"} and set(evaluation["final"]) == {"seen", "unseen"}
    assert evaluation["final"]["seen"]["kl"] is not None
    summary = (run_dir / "summary.md").read_text()
    assert "J (oracle)" in summary and "GFLOP/s" in summary
    assert "seen contexts: ΔJ = " in summary and "standard errors" in summary
    assert evaluation["final"]["seen"]["n"] == 8 * 2  # the quick preset's two samples per evaluation prompt
