"""Reward sources for policy optimisation and evaluation: one interface over a trained reward
model R_phi, a built-in oracle R* and a user's Python callable (``module:function``).

A reward source maps (contexts, outputs) as plain text to a tensor of rewards, so a reward model
with a different tokenizer than the policy simply re-tokenises the decoded text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhflab.errors import ConfigError
from rlhflab.feedback.judge import is_judge_spec, load_judge
from rlhflab.feedback.oracles import load_oracle, score_batch
from rlhflab.models.loading import load_reward_model
from rlhflab.models.scoring import reward_template, score
from rlhflab.rewards.base import RewardSource
from rlhflab.rewards.composite import composite_reward, is_composite_spec
from rlhflab.rewards.ensemble import is_ensemble, load_ensemble
from rlhflab.rewards.heads import is_reward_heads, load_head_scores, load_reward_heads

__all__ = ["RewardSource", "load_reward_source"]


def load_reward_source(
    spec: str, device: str | torch.device = "cpu", batch_size: int = 32, template: str = "auto"
) -> RewardSource:
    """``spec`` is a saved reward-model directory (or a registry name / hub id of one), an oracle
    name (``sentiment``, ``brevity``) or ``package.module:function``, a model judge
    (``judge:MODEL``, scored against a reference reply: :mod:`rlhflab.feedback.judge`), or a composite of these
    (``"0.7*DIR + 0.3*brevity"`` or a YAML file, see :mod:`rlhflab.rewards.composite`). ``template``
    (chat, plain, text, auto): how a reward-model directory's input is laid out (:func:`reward_template`),
    passed on to every member of a composite or an ensemble."""
    if is_composite_spec(spec):
        return composite_reward(spec, lambda part: load_reward_source(part, device, batch_size, template))
    if Path(spec.partition("::")[0]).is_dir():
        # An ensemble folder (ensemble.json), optionally DIR::OBJECTIVE: see rlhflab.rewards.ensemble.
        path, sep, objective = spec.partition("::")
        if is_reward_heads(path):  # DIR[::annotator=|attribute=NAME], a head per group or (mu, sigma): reward_heads
            heads = load_reward_heads(path, objective if sep else None, device, batch_size)
            return RewardSource(f"reward model {spec}", heads, is_model=True, heads=heads)
        if sep or is_ensemble(path):
            ensemble = load_ensemble(
                path,
                objective if sep else None,
                lambda p: load_reward_source(p, device, batch_size, template),
                lambda p, k: load_head_scores(p, k, device, batch_size),  # a shared-trunk ensemble's K heads
            )
            return RewardSource(
                f"reward ensemble {path} ({ensemble.objective})", ensemble, is_model=True, ensemble=ensemble
            )
        # A reward model's own directory (rlhflab's, TRL's, OpenRLHF's): its input laid out as it was
        # trained (recorded in its config, or chosen by --reward_template; reward_template says which).
        model, tokenizer = load_reward_model(spec)
        model.to(device).eval().requires_grad_(False)
        layout = reward_template(model, tokenizer, template, f"reward model {spec}")
        return RewardSource(
            f"reward model {spec}",
            lambda c, o: score(model, tokenizer, c, o, batch_size=batch_size, template=layout),
            is_model=True,
        )
    if is_judge_spec(spec):  # a causal LM comparing each output with a fixed reference reply (rlhflab.feedback.judge)
        return RewardSource(spec, load_judge(spec, batch_size=batch_size).reward)
    path = spec.partition("::")[0]
    if ":" not in path and ("/" in path or path.startswith(".")):  # no oracle spec looks like this: a path
        raise ConfigError(f"reward {spec!r}: no such directory (a reward model, ensemble or reward-heads folder)")
    oracle = load_oracle(spec)
    return RewardSource(str(spec), lambda c, o: score_batch(oracle, c, o))
