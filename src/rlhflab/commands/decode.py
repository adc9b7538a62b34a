"""``rlhflab bon`` and ``rlhflab rad``: inference-time alignment, no training (best-of-n, reward-augmented
decoding).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhflab.config import (
    PolicyOptions,
    PrecisionOption,
    PromptOptions,
    SamplingOptions,
    option,
    reward_template_option,
)
from rlhflab.data import Demonstration, load_prompts, write_records
from rlhflab.decoding.best_of_n import best_of_n, rad_decode
from rlhflab.hardware import model_autocast
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source


@dataclass
class DecodeConfig(PrecisionOption, PromptOptions, PolicyOptions):
    """Options of both inference-time methods (bon, rad)."""

    limit: int = option(16, "Use only the first N prompts (0: all).")
    reward: str = option(
        "sentiment", "Reward source that steers: a reward-model directory, an oracle name or package.module:function."
    )
    reward_template: str = reward_template_option()
    oracle: str | None = option(None, "Oracle R* also scored on the outputs (reported, never used to steer).")
    seed: int = option(0, "Random seed.")
    output: str = option("decoded.jsonl", "Output JSONL of (prompt, completion) rows.")


@dataclass
class BestOfNConfig(DecodeConfig, SamplingOptions):
    """Best-of-n: sample n completions per prompt, keep the one the reward source scores highest."""

    n: int = option(4, "Samples per prompt.")


@dataclass
class RADConfig(DecodeConfig):
    """Reward-augmented decoding: at every step the top-k next tokens are reweighted by the reward source."""

    reward_weight: float = option(
        1.0, "Weight of the reward added to the top-k logits (RAD's beta).", aliases=["--beta"]
    )
    top_k: int = option(10, "Next-token candidates scored per step.")
    max_new_tokens: int = option(32, "Maximum completion length in tokens.")


def _load_for_decoding(cfg: DecodeConfig):
    policy, tokenizer = load_policy(cfg.policy)
    oracle = load_reward_source(cfg.oracle) if cfg.oracle else None
    return (
        policy,
        tokenizer,
        load_prompts(cfg.prompts, cfg.limit),
        load_reward_source(cfg.reward, template=cfg.reward_template),
        oracle,
    )


def _write_outputs(cfg, prompts, completions) -> None:
    write_records([Demonstration(prompt=p.prompt, completion=c) for p, c in zip(prompts, completions)], cfg.output)


def run_bon(cfg: BestOfNConfig) -> dict:
    policy, tokenizer, prompts, reward, oracle = _load_for_decoding(cfg)
    with model_autocast(cfg.mixed_precision, policy):
        bon = best_of_n(
            policy,
            tokenizer,
            prompts,
            reward,
            cfg.n,
            cfg.max_new_tokens,
            cfg.temperature,
            top_p=cfg.top_p,
            use_chat_template=cfg.use_chat_template,
            seed=cfg.seed,
            batch_size=cfg.generation_batch_size,
            truncate=cfg.truncate,
        )
    _write_outputs(cfg, prompts, bon.completions)
    summary = bon.summary()
    if oracle is not None:
        first = [c[0] for c in bon.all_completions]
        summary.update(
            oracle_chosen=float(oracle(bon.contexts, bon.completions).mean()),
            oracle_single_sample=float(oracle(bon.contexts, first).mean()),
        )
    return summary


def run_rad(cfg: RADConfig) -> dict:
    policy, tokenizer, prompts, reward, oracle = _load_for_decoding(cfg)
    with model_autocast(cfg.mixed_precision, policy):
        out = rad_decode(
            policy,
            tokenizer,
            prompts,
            reward,
            cfg.reward_weight,
            cfg.top_k,
            cfg.max_new_tokens,
            cfg.use_chat_template,
            cfg.seed,
            truncate=cfg.truncate,
        )
    _write_outputs(cfg, prompts, out.completions)
    summary = {
        "prompts": len(prompts),
        "beta": cfg.reward_weight,
        "top_k": cfg.top_k,
        "reward_calls": out.reward_calls,
        "mean_reward": float(reward(out.contexts, out.completions).mean()),
    }
    if oracle is not None:
        summary["oracle"] = float(oracle(out.contexts, out.completions).mean())
    return summary
