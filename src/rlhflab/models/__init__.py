"""Loading policies and reward models; the offline default-model registry."""

from rlhflab.models.loading import (
    apply_lora,
    load_policy,
    load_reward_model,
    load_tokenizer,
    load_trainable_policy,
    save_model,
)
from rlhflab.models.registry import DEFAULT_POLICY, DEFAULT_REWARD_BACKBONE, resolve_model

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_REWARD_BACKBONE",
    "apply_lora",
    "load_policy",
    "load_reward_model",
    "load_tokenizer",
    "load_trainable_policy",
    "resolve_model",
    "save_model",
]
