"""The named sizes of the commands that build a feedback pool (``demo``, ``compare``, ``frontier``,
``loop``), in one table and one vocabulary.

``full`` is the offline default models (SmolLM2-135M-Instruct, MiniLM, the sentiment oracle);
``quick`` is tiny in-process models and a character-level oracle. A value left unset on the command
line (``None``) is filled from the chosen preset by :func:`rlhflab.config.apply_preset`.

One name per knob in every command: ``policy_iterations``, ``policy_learning_rate`` and
``policy_epochs`` are the policy update's, whichever estimator runs it (``--ppo_*`` are accepted as
aliases, as the demo once spelt them).
"""

from __future__ import annotations

# The real models compute in bf16 where a start-up measurement finds it faster; the tiny ones stay fp32.
_FULL_MODELS = dict(
    policy="smollm2-135m-instruct", reward_backbone="minilm-l6", oracle="sentiment", mixed_precision="auto"
)
_QUICK_MODELS = dict(policy="tiny-policy", reward_backbone="tiny-reward", oracle="keyword:e", mixed_precision="no")

_DEMO_FULL = dict(
    **_FULL_MODELS,
    feedback_prompts=160,
    eval_prompts=64,
    eval_samples=4,
    max_new_tokens=24,
    policy_iterations=12,
    prompts_per_iteration=16,
    policy_learning_rate=5e-5,
    policy_epochs=2,
    reward_learning_rate=5e-5,
    reward_epochs=2.0,
)

_DEMO_QUICK = dict(
    **_QUICK_MODELS,
    feedback_prompts=64,
    eval_prompts=32,
    eval_samples=2,
    max_new_tokens=48,
    policy_iterations=30,
    prompts_per_iteration=16,
    policy_learning_rate=3e-3,
    policy_epochs=2,
    reward_learning_rate=1e-3,
    reward_epochs=4.0,
)

PRESETS: dict[str, dict[str, dict]] = {
    "demo": {
        "full": _DEMO_FULL,
        "quick": _DEMO_QUICK,
    },
    "compare": {
        "full": dict(
            **_FULL_MODELS,
            # The demo's pool and PPO budget (160 prompts' 960 pairs; 12 iterations of 16 prompts at
            # 5e-5), the budget the demo showed PPO needs: at 48 prompts' 288 pairs the reward model
            # ranked held-out pairs at chance (0.517) and every method's ΔJ was inside the noise.
            # The offline methods take the frontier's 48 steps (DPO at its 1e-5).
            methods="ppo,dpo,bon,sft-positive",
            feedback_prompts=160,
            eval_prompts=32,
            eval_samples=4,
            max_new_tokens=24,
            online_samples=192,
            offline_steps=48,
            preference_learning_rate=1e-5,
            sft_learning_rate=2e-5,
            policy_learning_rate=5e-5,
            reward_learning_rate=5e-5,
            reward_epochs=2.0,
        ),
        "quick": dict(
            **_QUICK_MODELS,
            methods="ppo,dpo,ipo,slic,kto,rrhf,raft,rso,bon,sft-positive",
            feedback_prompts=64,
            eval_prompts=32,
            eval_samples=2,
            max_new_tokens=32,
            online_samples=256,
            offline_steps=30,
            preference_learning_rate=3e-3,
            sft_learning_rate=3e-3,
            policy_learning_rate=3e-3,
            reward_learning_rate=1e-3,
            reward_epochs=4.0,
        ),
    },
    "frontier": {
        # The demo's pool and PPO budget, on half its evaluation prompts: every policy is evaluated
        # along training, and π_0 drawn bon_max_n times per evaluation prompt (best-of-n, reference).
        "full": {
            **_DEMO_FULL,
            "eval_prompts": 32,
            "bon_max_n": 32,
            "eval_every": 3,
            "preference_steps": 48,
            "preference_eval_every": 12,
            "preference_learning_rate": 1e-5,
            "raft_rounds": 4,
            "raft_learning_rate": 2e-5,
        },
        "quick": dict(
            _DEMO_QUICK,
            max_new_tokens=32,
            bon_max_n=32,
            eval_every=6,
            preference_steps=30,
            preference_eval_every=6,
            preference_learning_rate=3e-3,
            raft_rounds=3,
            raft_learning_rate=3e-3,
        ),
    },
    "loop": {
        # Exactly the demo's sizes, split evenly over the rounds.
        "full": _DEMO_FULL,
        "quick": dict(
            **_QUICK_MODELS,
            feedback_prompts=48,
            eval_prompts=24,
            eval_samples=2,
            max_new_tokens=32,
            policy_iterations=24,
            prompts_per_iteration=16,
            policy_learning_rate=3e-3,
            policy_epochs=2,
            reward_learning_rate=1e-3,
            reward_epochs=4.0,
        ),
    },
}
