"""Reward sources for policy optimisation and evaluation: one interface over a trained reward
model R_phi, a built-in oracle R* and a user's Python callable (``module:function``).

A reward source maps (contexts, outputs) as plain text to a tensor of rewards, so a reward model
with a different tokenizer than the policy simply re-tokenises the decoded text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlhflab.errors import TrainingError
from rlhflab.feedback.oracles import load_oracle, score_batch
from rlhflab.models.loading import load_reward_model
from rlhflab.models.scoring import score


class RewardSource:
    """Callable ``(contexts, outputs) -> Tensor (B,)`` with a name for logs and reports."""

    def __init__(self, name: str, fn, is_model: bool = False):
        self.name, self._fn, self.is_model = name, fn, is_model

    def __call__(self, contexts: Sequence[str], outputs: Sequence[str]) -> torch.Tensor:
        rewards = self._fn(list(contexts), list(outputs))
        rewards = torch.as_tensor(rewards, dtype=torch.float32).flatten()
        bad = ~torch.isfinite(rewards)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise TrainingError(f"reward source '{self.name}' returned {rewards[i].item()} for output {outputs[i]!r}")
        return rewards


def load_reward_source(spec: str, device: str | torch.device = "cpu", batch_size: int = 32) -> RewardSource:
    """``spec`` is a saved reward-model directory (or a registry name / hub id of one), an oracle
    name (``sentiment``, ``brevity``) or ``package.module:function``."""
    if Path(spec).is_dir():
        model, tokenizer = load_reward_model(spec)
        model.to(device).eval().requires_grad_(False)
        return RewardSource(
            f"reward model {spec}", lambda c, o: score(model, tokenizer, c, o, batch_size=batch_size), is_model=True
        )
    oracle = load_oracle(spec)
    return RewardSource(str(spec), lambda c, o: score_batch(oracle, c, o))
