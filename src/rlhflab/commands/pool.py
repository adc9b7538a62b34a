"""The shared pool of simulated feedback behind ``rlhflab demo`` and ``rlhflab compare``:

    sample π_0 on the feedback prompts -> simulated annotators (driven by R*) label pairs
        -> a reward model R_phi (Bradley-Terry, Eq. 11) fitted to them

and the prompt sets the policies are evaluated on: the feedback prompts' head (seen contexts,
C_rew) and the shipped unseen set.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from rlhflab.commands.collect import AnnotateConfig, SampleConfig, run_annotate, run_sample
from rlhflab.commands.train import run_reward
from rlhflab.config import (
    REPORT_TO_HELP,
    PrecisionOption,
    default_run_dir,
    option,
    preset_option,
    save_config,
    tracker_names,
)
from rlhflab.data import Prompt, Samples, load_prompts
from rlhflab.errors import ConfigError
from rlhflab.hardware import autocast, resolve_mixed_precision
from rlhflab.rewards.registry import RewardSource, load_reward_source
from rlhflab.train.policy_optimization import RLConfig
from rlhflab.train.reward_model import RewardConfig

T = TypeVar("T")


@dataclass
class Pool:
    """What every method of a run learns from (R* itself is never part of it)."""

    feedback_prompts: list[Prompt]
    seen_prompts: list[Prompt]  # evaluation contexts covered by feedback (C_rew)
    unseen_prompts: list[Prompt]  # evaluation contexts no feedback was collected on
    samples: list[Samples]  # π_0's samples of the feedback prompts
    preferences: list  # the simulated annotators' Preference records
    reward_dir: Path
    reward_report: dict
    reward_model: RewardSource

    @property
    def prompt_sets(self) -> dict[str, list[Prompt]]:
        return {"seen": self.seen_prompts, "unseen": self.unseen_prompts}

    @property
    def num_samples(self) -> int:
        return sum(len(s.completions) for s in self.samples)


def resolve_precision(cfg: T) -> tuple[T, contextlib.AbstractContextManager]:
    """``cfg`` with its ``mixed_precision`` resolved once for the whole command (``auto`` measured and
    announced once), and the autocast context its sampling and scoring outside the training loop run
    under; the training runs it starts get the resolved value, so they compute alike."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_mixed_precision(cfg.mixed_precision, device_type)
    return dataclasses.replace(cfg, mixed_precision=precision), autocast(precision, device_type)


def pool_ppo_config(
    cfg, reward_dir: Path, output_dir: Path, use_chat: bool, algorithm: str = "ppo", **overrides
) -> RLConfig:
    """PPO (or another estimator: ``algorithm``) against the pool's reward model with a KL penalty to
    ``cfg.policy`` (π_0), sized by the command's preset (``policy_iterations``, ``policy_learning_rate``,
    ``policy_epochs``); R* is only watched. The demo's step 5, and the frontier's RL curves."""
    settings = dict(
        algorithm=algorithm,
        policy=cfg.policy,
        reward=str(reward_dir / "reward_model"),
        oracle=cfg.oracle,
        num_iterations=cfg.policy_iterations,
        prompts_per_iteration=cfg.prompts_per_iteration,
        max_new_tokens=cfg.max_new_tokens,
        kl_coef=cfg.kl_coef,
        learning_rate=cfg.policy_learning_rate,
        epochs=cfg.policy_epochs,
        use_chat_template=use_chat,
        seed=cfg.seed,
        output_dir=str(output_dir),
        report_to=cfg.report_to,
        mixed_precision=cfg.mixed_precision,
    )
    return RLConfig(**{**settings, **overrides})


def open_run_dir(cfg, command: str) -> Path:
    """A fresh run directory for ``command`` (``cfg.output_dir``, else runs/COMMAND-TIMESTAMP) with the
    resolved config saved in it; an existing non-empty directory is a ConfigError (nothing is overwritten)."""
    run_dir = Path(cfg.output_dir or default_run_dir(command))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: output directory exists and is not empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / f"{command}_config.yaml")
    return run_dir


def pool_options(presets: dict[str, dict], command: str) -> type:
    """The options :func:`build_feedback_pool` reads, declared once for every command that builds a
    pool (``demo``, ``compare``); each passes its own named ``presets``, whose values ``--help`` shows."""

    @dataclass
    class PoolOptions(PrecisionOption):
        preset: str = option(
            "full", "Named sizes: full (the offline default models) or quick (tiny models).", choices=list(presets)
        )
        quick: bool = option(
            False,
            "Shorthand for --preset quick: tiny random in-process models and a character-level oracle (keyword:e).",
        )
        output_dir: str | None = option(None, f"Run directory (default runs/{command}-TIMESTAMP).")
        seed: int = option(0, "Seed for sampling, annotation, training and evaluation.")
        policy: str | None = preset_option(presets, "policy", "Initial policy pi_0, also the reference.")
        reward_backbone: str | None = preset_option(presets, "reward_backbone", "Reward-model backbone.")
        oracle: str | None = preset_option(presets, "oracle", "Oracle R* of the simulated annotators and of J.")
        feedback_prompts: int | None = preset_option(
            presets, "feedback_prompts", "Training prompts sampled and annotated for the feedback pool."
        )
        samples_per_prompt: int = option(4, "Samples per feedback prompt; every pair of them is annotated.")
        eval_prompts: int | None = preset_option(
            presets, "eval_prompts", "Prompts per evaluation set, seen and unseen."
        )
        eval_samples: int | None = preset_option(
            presets, "eval_samples", "Samples per evaluation prompt; J is averaged per prompt."
        )
        max_new_tokens: int | None = preset_option(presets, "max_new_tokens", "Completion length in tokens.")
        reward_learning_rate: float | None = preset_option(
            presets, "reward_learning_rate", "Reward-model learning rate."
        )
        reward_epochs: float | None = preset_option(
            presets, "reward_epochs", "Reward-model passes over the preference pairs."
        )
        report_to: str = option("none", REPORT_TO_HELP + " Every training stage of the run logs there.")

        def validate(self) -> None:
            tracker_names(self.report_to)

    return PoolOptions


def _call(name: str, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def build_feedback_pool(
    cfg,
    run_dir: Path,
    policy,
    tokenizer,
    stage: Callable = _call,
    before_reward: Callable | None = None,
    progress: bool = False,
) -> Pool:
    """Sample ``cfg.policy`` (loaded as ``policy``, ``tokenizer``) on ``cfg.feedback_prompts`` training
    prompts, annotate pairs with a pool driven by ``cfg.oracle``, and fit a reward model on
    ``cfg.reward_backbone``; samples, preferences and the reward model go under ``run_dir``.

    ``stage(name, fn, *args)`` runs each step (the demo times and prints them). ``before_reward(seen,
    unseen)``, run between annotation and the reward model, may return π_0's (contexts, texts) on the
    seen and unseen prompts: the reward model is then also compared with R* on them.
    """
    use_chat = not cfg.quick  # the tiny model has a template but no training to follow it
    feedback_prompts = load_prompts("train")[: cfg.feedback_prompts]
    seen_prompts = feedback_prompts[: cfg.eval_prompts]
    unseen_prompts = load_prompts("unseen", cfg.eval_prompts)

    sample_cfg = SampleConfig(
        policy=cfg.policy,
        num_samples=cfg.samples_per_prompt,
        max_new_tokens=cfg.max_new_tokens,
        use_chat_template=use_chat,
        seed=cfg.seed,
        output=str(run_dir / "samples.jsonl"),
    )
    samples = stage("sample initial policy", run_sample, sample_cfg, policy, tokenizer, feedback_prompts)
    annotate_cfg = AnnotateConfig(
        samples=sample_cfg.output,
        oracle=cfg.oracle,
        feedback="preference",
        seed=cfg.seed,
        output=str(run_dir / "preferences.jsonl"),
    )
    prefs = stage("annotate (simulated pool)", run_annotate, annotate_cfg, samples)

    policy_samples = before_reward(seen_prompts, unseen_prompts) if before_reward is not None else None
    reward_cfg = RewardConfig(
        model=cfg.reward_backbone,
        data=annotate_cfg.output,
        output_dir=str(run_dir / "reward"),
        seed=cfg.seed,
        progress=progress,
        report_to=cfg.report_to,
        mixed_precision="no",  # the reward model stays fp32 (models.scoring): see README, Precision
        learning_rate=cfg.reward_learning_rate,
        num_epochs=cfg.reward_epochs,
    )
    if policy_samples is None:
        reward_dir, reward_report = stage("train reward model", run_reward, reward_cfg)
    else:
        reward_dir, reward_report = stage("train reward model", run_reward, reward_cfg, cfg.oracle, *policy_samples)
    reward_model = load_reward_source(str(reward_dir / "reward_model"))
    return Pool(feedback_prompts, seen_prompts, unseen_prompts, samples, prefs, reward_dir, reward_report, reward_model)
