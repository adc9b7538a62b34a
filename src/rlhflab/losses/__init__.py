"""Losses as pure functions of tensors; each docstring cites its equation."""

from rlhflab.losses.common import RunningMoments, masked_mean, masked_sum, masked_whiten
from rlhflab.losses.kl import AdaptiveKLController, FixedKLController, kl_penalty
from rlhflab.losses.policy_gradient import (
    entropy_from_logits,
    gae_advantages,
    grpo_advantages,
    policy_gradient_loss,
    potential_shaped_rewards,
    ppo_clip_loss,
    reinforce_advantages,
    rloo_advantages,
    sequence_logprob,
    value_loss,
)
from rlhflab.losses.preference import dpo_loss, ipo_loss, kto_loss, pro_loss, robust_dpo_loss, rrhf_loss, slic_loss
from rlhflab.losses.reward import (
    bradley_terry_loss,
    mean_variance_bradley_terry_loss,
    pairwise_accuracy,
    plackett_luce_loss,
    regression_loss,
)
from rlhflab.losses.sft import sft_loss

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "gae_advantages",
    "grpo_advantages",
    "ipo_loss",
    "kl_penalty",
    "kto_loss",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "mean_variance_bradley_terry_loss",
    "pairwise_accuracy",
    "plackett_luce_loss",
    "policy_gradient_loss",
    "potential_shaped_rewards",
    "ppo_clip_loss",
    "pro_loss",
    "regression_loss",
    "reinforce_advantages",
    "rloo_advantages",
    "robust_dpo_loss",
    "rrhf_loss",
    "sequence_logprob",
    "sft_loss",
    "slic_loss",
    "value_loss",
]
