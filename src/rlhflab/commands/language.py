"""``rlhflab ilf`` and ``rlhflab revise``: learning from language feedback (Sections 7.3.2, 7.9.2).
The procedures are :func:`rlhflab.train.language.ilf_rounds` and :func:`rlhflab.train.language.revise_train`."""

from __future__ import annotations

from pathlib import Path

from rlhflab.data import load_prompts, read_records
from rlhflab.feedback.language import load_constitution
from rlhflab.models import load_trainable_policy
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.language import ILFConfig, ReviseConfig, ilf_rounds, revise_train


def run_ilf(cfg: ILFConfig, policy=None, tokenizer=None) -> tuple[Path, dict]:
    """Imitation learning from language feedback on ``cfg.data`` or simulated critiques."""
    records = read_records(cfg.data, "language_feedback") if cfg.data else None
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    prompts = load_prompts(cfg.prompts, cfg.limit)
    return ilf_rounds(cfg, policy, tokenizer, prompts, load_reward_source(cfg.oracle), records)


def run_revise(cfg: ReviseConfig, policy=None, tokenizer=None) -> tuple[Path, dict]:
    """Critique and revise under a constitution, SFT on the revisions, pairs as preferences."""
    principles = load_constitution(cfg.constitution)
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    oracle = load_reward_source(cfg.oracle) if cfg.oracle else None
    return revise_train(cfg, policy, tokenizer, load_prompts(cfg.prompts, cfg.limit), principles, oracle)
