"""Policy optimisation with a KL penalty (Sections 6.1-6.3, 7.6): PPO, A2C, REINFORCE, RLOO, GRPO.

All five share one iteration, readable top to bottom in :meth:`PolicyOptimization.collect`
(steps 1-4, filling an :class:`Experience`) and :meth:`PolicyOptimization.loss` (step 5):

    1. rollout: sample, then old log-probs and values (one pass with a shared critic)
    2. reference log-probs
    3. rewards: reward source, shaping (EOS penalty, normalisation, clipping)
    4. advantages: KL penalty to the reference, then GAE with a critic | batch or leave-one-out
       baselines | group normalisation
    5. epochs of minibatch updates of the estimator's pure loss (``rlhflab.losses``)

With a single update on the whole rollout (:meth:`PolicyOptimization._single_pass`), the update's
own forward gives the old log-probs and values, so step 1's extra pass is skipped and step 4 runs
on the first micro-batch of step 5 (:meth:`PolicyOptimization._finish_from_update`).

The objective is max E[R(c, o)] - beta * KL(pi || pi_ref), whose optimum is Eq. 17.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from rlhflab.config import (
    DEFAULT_POLICY,
    LoopOptions,
    PolicyOptions,
    PromptOptions,
    ResumeOptions,
    SamplingOptions,
    option,
    reward_template_option,
)
from rlhflab.data.render import encode_prompts, prompt_text
from rlhflab.errors import ConfigError
from rlhflab.losses import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    entropy_from_logits,
    gae_advantages,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    policy_gradient_loss,
    potential_shaped_rewards,
    ppo_clip_loss,
    reinforce_advantages,
    rloo_advantages,
    sft_loss,
    value_loss,
)
from rlhflab.models.decoder_parts import context_length
from rlhflab.models.loading import disable_dropout, save_model
from rlhflab.models.registry import resolve_model
from rlhflab.sampling.rollout import (
    SequenceBatch,
    completion_logits,
    join_prompt_completion,
    logprobs_from_logits,
    position_ids_from_mask,
    sample,
)
from rlhflab.seeds import derive_seed
from rlhflab.train.loop import shard, split

ESTIMATORS = ["ppo", "a2c", "reinforce", "rloo", "grpo"]
# Passes over each rollout when --epochs is unset: PPO's clipped ratio (Eq. 16) is what makes reusing
# a rollout safe; the other estimators are on-policy and take one pass.
DEFAULT_EPOCHS = {"ppo": 4, "a2c": 1, "reinforce": 1, "rloo": 1, "grpo": 1}


@dataclass
class RLConfig(LoopOptions, ResumeOptions, SamplingOptions, PromptOptions, PolicyOptions):
    """Online policy optimisation against a reward source, with a KL penalty to the reference."""

    algorithm: str = option("ppo", "Policy-gradient estimator.", choices=ESTIMATORS)
    policy: str = option(
        DEFAULT_POLICY,
        "Initial policy (also the reference pi_ref): registry name, hub id or path.",
        aliases=["--model"],
    )
    reward: str = option(
        "sentiment", "Reward source: a reward-model directory, an oracle name or package.module:function."
    )
    reward_template: str = reward_template_option()
    oracle: str | None = option(
        None, "Oracle R* also scored on every rollout (logged as oracle_reward, never optimised)."
    )
    num_iterations: int = option(20, "Rollout-then-update iterations.")
    prompts_per_iteration: int = option(8, "Prompts sampled per iteration (across all processes).")
    samples_per_prompt: int = option(1, "Completions per prompt (>= 2 for RLOO and GRPO).")
    top_k: int = option(0, "Top-k sampling (0: off).")
    kl_coef: float = option(0.05, "beta: weight of the KL penalty to the reference policy (Section 6.2).")
    kl_estimator: str = option("k1", "Per-token KL estimator in the penalty.", choices=["k1", "k2", "k3"])
    kl_in_loss: bool = option(
        False, "Put beta*KL(k3) in the loss (GRPO style) instead of in the reward (default for grpo)."
    )
    adaptive_kl: bool = option(False, "Adapt beta toward target_kl (Ziegler et al. 2019).")
    target_kl: float = option(6.0, "Target sequence KL of the adaptive controller (nats).")
    kl_horizon: int = option(10000, "Horizon of the adaptive KL controller.")
    entropy_coef: float = option(0.0, "Entropy bonus weight.")
    epochs: int | None = option(
        None,
        "Passes over each rollout (unset: the estimator's own, "
        + ", ".join(f"{name} {n}" for name, n in DEFAULT_EPOCHS.items())
        + ").",
    )
    num_minibatches: int = option(1, "Minibatches (optimiser steps) per pass over a rollout.")
    clip_eps: float = option(0.2, "PPO ratio clip epsilon (Eq. 16).")
    value_clip_eps: float = option(0.2, "Value clipping range (0: unclipped).")
    vf_coef: float = option(0.1, "Weight of the value loss.")
    gamma: float = option(1.0, "Discount.")
    lam: float = option(0.95, "GAE lambda.")
    critic: str = option(
        "shared",
        "Critic for ppo/a2c: a value head on the policy's trunk, or a separate value model.",
        choices=["shared", "separate"],
    )
    whiten_advantages: bool = option(True, "Normalise advantages per rollout (ppo, a2c).")
    baseline: str = option("batch_mean", "REINFORCE baseline.", choices=["none", "batch_mean"])
    scale_by_std: bool = option(True, "GRPO: divide group advantages by the group std (False: Dr. GRPO).")
    reward_normalization: bool = option(False, "Standardise rewards with running mean/std.")
    reward_clip: float = option(0.0, "Clip (normalised) rewards to [-c, c] (0: off).")
    missing_eos_penalty: float = option(0.0, "Subtracted from the reward of completions cut at max_new_tokens.")
    dense_rewards: bool = option(
        False,
        "ppo/a2c: a reward at every token from the reward source's scores of each prefix, by potential-based "
        "shaping (the optimum is unchanged; one reward call per token).",
    )
    ptx_coef: float = option(0.0, "Weight of the pretraining-mix (PPO-ptx) language-modelling loss.")
    ptx_data: str | None = option(None, "Demonstrations (prompt, completion) for the PPO-ptx term.")
    generation_batch_size: int = option(64, "Prompts per generate call.")

    def validate(self):
        super().validate()
        if self.algorithm in ("rloo", "grpo") and self.samples_per_prompt < 2:
            raise ConfigError(f"{self.algorithm} needs samples_per_prompt >= 2 (a group to compare within)")
        if self.prompts_per_iteration <= 0 or self.num_iterations <= 0:
            raise ConfigError("prompts_per_iteration and num_iterations must be positive")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs} (leave it unset for the estimator's own)")
        if self.dense_rewards and not self.uses_critic:
            raise ConfigError(
                f"dense_rewards needs a critic (ppo, a2c): {self.algorithm} credits whole sequences, where "
                "shaping only adds a per-context constant"
            )
        if self.dense_rewards and self.reward_normalization:
            raise ConfigError("dense_rewards and reward_normalization do not mix: the potentials are raw rewards")
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ConfigError("ptx_coef > 0 needs --ptx_data")

    @property
    def num_epochs_per_rollout(self) -> int:
        return DEFAULT_EPOCHS[self.algorithm] if self.epochs is None else self.epochs

    @property
    def uses_critic(self) -> bool:
        return self.algorithm in ("ppo", "a2c")


class PolicyWithValueHead(nn.Module):
    """The policy and a scalar value head on its last hidden state: one forward gives both
    pi(. | s_t) and V(s_t) (the critic shares the trunk)."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: SequenceBatch):
        logits, hidden = completion_logits(self.policy, batch, output_hidden_states=True)
        return logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()


class ValueModel(nn.Module):
    """A separate critic: a transformer trunk (initialised from the policy) and a scalar head."""

    def __init__(self, name_or_path: str, dtype):
        super().__init__()
        from transformers import AutoModel

        self.trunk = disable_dropout(AutoModel.from_pretrained(resolve_model(name_or_path), dtype=dtype))
        self.value_head = nn.Linear(self.trunk.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, batch: SequenceBatch):
        T = batch.num_completion_tokens
        hidden = self.trunk(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_from_mask(batch.attention_mask),
        ).last_hidden_state
        return self.value_head(hidden[:, -(T + 1) : -1]).squeeze(-1).float()  # fp32 under autocast too


class _Clock:
    """Seconds spent in each stage of an iteration, logged as ``time_<stage>``."""

    def __init__(self):
        import time

        self._now, self.seconds = time.perf_counter, {}
        self._last = self._now()

    def lap(self, stage: str) -> None:
        now = self._now()
        self.seconds[f"time_{stage}"] = now - self._last
        self._last = now


@dataclass
class Experience:
    """One iteration's rollout as the updates read it, on the CPU: B rows (this process's prompts ×
    samples_per_prompt), each a left-padded prompt and T completion tokens (``SequenceBatch``).

    Steps 1-3 of the iteration fill the first four fields; step 4 (:meth:`PolicyOptimization._advantages`)
    fills the rest. ``old_logprobs`` and ``values`` are None until then when the update's own forward
    supplies them (the single-pass shortcut)."""

    batch: SequenceBatch  # input_ids, attention_mask (B, P + T); completion_mask (B, T)
    ref_logprobs: torch.Tensor  # (B, T) log pi_ref of each sampled token
    rewards: torch.Tensor  # (B,) shaped sequence rewards (before the KL penalty)
    rows: int  # B
    old_logprobs: torch.Tensor | None = None  # (B, T) log pi_old of each sampled token
    values: torch.Tensor | None = None  # (B, T) critic's V_old(s_t) (ppo, a2c)
    advantages: torch.Tensor | None = None  # (B, T) per token with a critic, (B,) per sequence otherwise
    returns: torch.Tensor | None = None  # (B, T) value targets (ppo, a2c)
    token_rewards: torch.Tensor | None = None  # (B, T) dense shaped rewards (dense_rewards), else None

    @property
    def has_advantages(self) -> bool:
        return self.advantages is not None


class PolicyOptimization:
    """PPO / A2C / REINFORCE / RLOO / GRPO on the shared loop (see the module docstring)."""

    samples_from_policy = True  # every iteration's rollout

    def __init__(
        self,
        config: RLConfig,
        policy,
        tokenizer,
        prompts: list,
        reward_source,
        oracle=None,
        ptx_examples=None,
        reference=None,
    ):
        self.config, self.tokenizer, self.prompts = config, tokenizer, prompts
        self.reward_source, self.oracle = reward_source, oracle
        self.ptx_examples = ptx_examples or []
        self.name = config.algorithm
        self.use_lora = hasattr(policy, "disable_adapter")
        # With LoRA the reference is the same weights with adapters off: no second copy in memory.
        self.reference = None if self.use_lora else (reference or copy.deepcopy(policy))
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)
        if config.uses_critic and config.critic == "shared":
            self.model = PolicyWithValueHead(policy)
            self.critic = None
        else:
            self.model = policy
            self.critic = ValueModel(config.policy, policy.dtype) if config.uses_critic else None
        self.kl_controller = (
            AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.kl_coef)
        )
        self.reward_moments = RunningMoments()
        self.prompt_ids = encode_prompts(
            tokenizer, prompts, config.use_chat_template, context_length(policy), config.max_new_tokens, config.truncate
        )
        self.contexts = [prompt_text(p.prompt) for p in prompts]
        if len(prompts) < config.prompts_per_iteration:
            raise ConfigError(f"prompts_per_iteration {config.prompts_per_iteration} > {len(prompts)} prompts")
        self.experience = None

    # ---- the loop's interface -------------------------------------------------------------------
    def trainable_modules(self):
        modules = {"policy": self.model}
        if self.critic is not None:
            modules["critic"] = self.critic
        return modules

    def bind(self, accelerator, modules):
        self.accelerator = accelerator
        self.model = modules["policy"]
        self.critic = modules.get("critic")
        if self.reference is not None:
            self.reference.to(accelerator.device)

    def num_iterations(self):
        return self.config.num_iterations

    def total_optimizer_steps(self):
        return self.config.num_iterations * self.config.num_epochs_per_rollout * self.config.num_minibatches

    def state_dict(self):
        state = {"kl_coef": self.kl_controller.state_dict(), "reward_moments": self.reward_moments.state_dict()}
        # A composite reward (or oracle) standardises each component by running moments: part of the run's state.
        for key, source in (("reward_source", self.reward_source), ("oracle", self.oracle)):
            if source is not None and source.state_dict() is not None:
                state[key] = source.state_dict()
        return state

    def load_state_dict(self, state):
        self.kl_controller.load_state_dict(state["kl_coef"])
        self.reward_moments.load_state_dict(state["reward_moments"])
        for key, source in (("reward_source", self.reward_source), ("oracle", self.oracle)):
            if source is not None and key in state:
                source.load_state_dict(state[key])

    def save_final(self, run_dir: Path):
        save_model(self._policy(), self.tokenizer, str(run_dir / "policy"), method=self.name, config=self.config)

    # ---- helpers ------------------------------------------------------------------------------
    def _policy(self):
        """The bare causal LM (for generation and saving), whatever wraps it."""
        model = self.accelerator.unwrap_model(self.model)
        return model.policy if isinstance(model, PolicyWithValueHead) else model

    def _forward(self, batch: SequenceBatch):
        """Logits at completion positions and, for a shared critic, values — in one pass."""
        if isinstance(self.accelerator.unwrap_model(self.model), PolicyWithValueHead):
            return self.model(batch)
        logits, _ = completion_logits(self.model, batch)
        return logits, None

    def _values(self, batch, shared_values):
        if self.critic is not None:
            return self.critic(batch)
        return shared_values

    @torch.no_grad()
    def _reference_logprobs(self, batch: SequenceBatch) -> torch.Tensor:
        if self.use_lora:
            with self._policy().disable_adapter():
                logits, _ = completion_logits(self._policy(), batch)
        else:
            logits, _ = completion_logits(self.reference, batch)
        return logprobs_from_logits(logits, batch.completion_ids, self.config.temperature)

    def _iteration_prompts(self, iteration: int) -> list[int]:
        n, k = len(self.prompts), self.config.prompts_per_iteration
        per_epoch = n // k
        epoch, position = divmod(iteration, per_epoch)
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, "iteration prompts", epoch))
        order = torch.randperm(n, generator=generator)
        return order[position * k : (position + 1) * k].tolist()

    # ---- one iteration ------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, iteration: int) -> dict[str, float]:
        """Steps 1-4: sample this iteration's prompts and build its :class:`Experience`."""
        cfg, device = self.config, self.accelerator.device
        mine = shard(self._iteration_prompts(iteration), self.accelerator)
        clock = _Clock()
        # 1. rollout
        rollout = sample(
            self._policy(),
            self.tokenizer,
            [self.prompt_ids[i] for i in mine],
            num_samples=cfg.samples_per_prompt,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            batch_size=cfg.generation_batch_size,
        )
        batch = rollout.batch.to(device)
        clock.lap("generate")
        old_logprobs = values = None
        if not self._single_pass():  # (single pass: the update's forward gives them, see the module docstring)
            self.model.eval()
            logits, shared_values = self._forward(batch)
            old_logprobs = logprobs_from_logits(logits, batch.completion_ids, cfg.temperature)
            del logits
            clock.lap("policy_forward")
            values = self._values(batch, shared_values) if cfg.uses_critic else None
            if self.critic is not None:
                clock.lap("critic_forward")
            self.model.train()
        # 2. reference log-probs
        ref_logprobs = self._reference_logprobs(batch)
        clock.lap("reference_forward")
        # 3. rewards: the reward source scores decoded text (any tokenizer), then shaping
        contexts = [self.contexts[mine[int(i)]] for i in rollout.prompt_index]
        scores = self.reward_source(contexts, rollout.completion_texts).to(device)
        stats = {"reward": float(scores.mean())}
        # A composite reward's objectives, each logged raw: the optimised sum alone hides trade-offs.
        components = self.reward_source.components_last
        stats.update({f"reward/{name}": float(values.mean()) for name, values in components.items()})
        if self.oracle is not None:
            stats["oracle_reward"] = float(self.oracle(contexts, rollout.completion_texts).mean())
        clock.lap("score")
        rewards = scores - cfg.missing_eos_penalty * rollout.truncated.to(device).float()
        if cfg.reward_normalization:
            self.reward_moments.update(rewards)
            rewards = (rewards - self.reward_moments.mean) / (self.reward_moments.std + 1e-8)
        if cfg.reward_clip > 0:
            rewards = rewards.clamp(-cfg.reward_clip, cfg.reward_clip)
        token_rewards = None
        if cfg.dense_rewards:
            potentials = self._prefix_potentials(contexts, batch)
            lengths = batch.completion_mask.sum(-1).clamp(min=1)
            token_rewards = potential_shaped_rewards(potentials, rewards, lengths)
            clock.lap("score_prefixes")
        stats.update(
            {
                "completion_length": float(batch.completion_mask.float().sum(-1).mean()),
                "truncated": float(rollout.truncated.float().mean()),
                **clock.seconds,
            }
        )
        self.experience = Experience(
            batch=batch,
            ref_logprobs=ref_logprobs,
            rewards=rewards,
            rows=len(mine) * cfg.samples_per_prompt,
            old_logprobs=old_logprobs,
            values=values,
            token_rewards=token_rewards,
        )
        # 4. advantages (single pass: on the first micro-batch of the update instead)
        if old_logprobs is not None:
            self.experience, kl_stats = self._advantages(self.experience)
            stats.update(kl_stats)
        self.experience = _to_cpu(self.experience)
        return stats

    def _prefix_potentials(self, contexts: list[str], batch: SequenceBatch) -> torch.Tensor:
        """Φ_k = R(c, o_<k), the reward source's score of each completion's first k tokens
        (k = 0 … n − 1, the empty prefix included), each distinct (context, prefix) scored once."""
        ids, mask = batch.completion_ids.cpu(), batch.completion_mask.cpu()
        keys, where = {}, []
        for row, context in enumerate(contexts):
            for k in range(int(mask[row].sum())):
                prefix = self.tokenizer.decode(ids[row, :k], skip_special_tokens=True)
                where.append((row, k, keys.setdefault((context, prefix), len(keys))))
        scores = self.reward_source([c for c, _ in keys], [p for _, p in keys])
        potentials = torch.zeros(mask.shape, dtype=torch.float32)
        for row, k, key in where:
            potentials[row, k] = scores[key]
        return potentials.to(batch.completion_mask.device)

    def _single_pass(self) -> bool:
        """One optimiser step on the whole rollout: the old policy (and critic) are the current ones,
        so the update's own forward gives the old log-probs and values (detached) exactly, and the
        ratio starts at 1 and the value clip at 0 as they would after a separate pass."""
        cfg = self.config
        return cfg.num_epochs_per_rollout == 1 and cfg.num_minibatches == 1 and cfg.gradient_accumulation_steps == 1

    def _advantages(self, exp: Experience) -> tuple[Experience, dict[str, float]]:
        """Step 4: rewards with the KL penalty -> advantages, and the KL statistics (which also
        update the adaptive KL controller)."""
        cfg, old_logprobs, ref_logprobs = self.config, exp.old_logprobs, exp.ref_logprobs
        device = old_logprobs.device
        mask = exp.batch.completion_mask.float().to(device)
        beta = self.kl_controller.value
        kl_tokens = kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask
        kl_in_loss = cfg.kl_in_loss or cfg.algorithm == "grpo"
        sequence_kl = kl_tokens.sum(-1)
        rewards = exp.rewards.to(device)
        if cfg.uses_critic:
            # Per-token reward: -beta*KL at every token, the sequence reward at the last one.
            last = (exp.batch.completion_mask.to(device).sum(-1) - 1).clamp(min=0)
            token_rewards = torch.zeros_like(old_logprobs) if kl_in_loss else -beta * kl_tokens
            if exp.token_rewards is not None:  # dense: shaped rewards at every token, summing to R − Φ_0
                token_rewards = token_rewards + exp.token_rewards.to(device)
            else:
                token_rewards[torch.arange(len(last), device=device), last] += rewards
            advantages, returns = gae_advantages(token_rewards, exp.values.to(device), mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
        else:
            returns = None
            sequence_return = rewards if kl_in_loss else rewards - beta * sequence_kl
            if cfg.algorithm == "reinforce":
                advantages = reinforce_advantages(sequence_return, cfg.baseline)
            elif cfg.algorithm == "rloo":
                advantages = rloo_advantages(sequence_return, cfg.samples_per_prompt)
            else:
                advantages = grpo_advantages(sequence_return, cfg.samples_per_prompt, cfg.scale_by_std)
        k1 = (old_logprobs - ref_logprobs) * mask
        self.kl_controller.update(float(k1.sum(-1).mean()), exp.rows)
        stats = {
            "kl": float(k1.sum(-1).mean()),  # sequence KL(pi || pi_ref) estimate (k1, unbiased)
            "kl_k2": float((kl_penalty(old_logprobs, ref_logprobs, "k2") * mask).sum(-1).mean()),
            "kl_k3": float((kl_penalty(old_logprobs, ref_logprobs, "k3") * mask).sum(-1).mean()),
            "kl_coef": beta,
        }
        return replace(exp, advantages=advantages, returns=returns), stats

    def _finish_from_update(self, index, logprobs: torch.Tensor, values: torch.Tensor | None) -> dict[str, float]:
        """The single-pass shortcut's step 4: this micro-batch is the whole rollout, so its (detached)
        log-probs and values are the old ones; the advantages follow from them."""
        exp, rows = self.experience, torch.as_tensor(index)
        old_logprobs = torch.empty_like(exp.ref_logprobs)
        old_logprobs[rows] = logprobs.detach().cpu()
        old_values = None
        if values is not None:
            old_values = torch.empty_like(exp.ref_logprobs)
            old_values[rows] = values.detach().float().cpu()
        exp, stats = self._advantages(replace(exp, old_logprobs=old_logprobs, values=old_values))
        self.experience = _to_cpu(exp)
        return stats

    def updates(self, iteration: int):
        """Step 5's schedule: epochs x minibatches x micro-batches of rollout rows, weighted by their share."""
        cfg = self.config
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "update order", iteration))
        for _ in range(cfg.num_epochs_per_rollout):
            order = torch.randperm(self.experience.rows, generator=generator).tolist()
            for minibatch in split(order, cfg.num_minibatches):
                micro = split(minibatch, cfg.gradient_accumulation_steps)
                yield [(m, len(m) / len(minibatch)) for m in micro]

    def loss(self, micro):
        """Step 5: the estimator's loss on one micro-batch of the experience."""
        index, weight = micro
        cfg, device = self.config, self.accelerator.device
        batch = self.experience.batch.select(index).to(device)
        mask = batch.completion_mask.float()
        logits, shared_values = self._forward(batch)
        logprobs = logprobs_from_logits(logits, batch.completion_ids, cfg.temperature)
        values = self._values(batch, shared_values) if cfg.uses_critic else None
        stats = {} if self.experience.has_advantages else self._finish_from_update(index, logprobs, values)
        exp = self.experience
        take = lambda t: None if t is None else t[index].to(device)  # noqa: E731
        old_logprobs, advantages, ref_logprobs = take(exp.old_logprobs), take(exp.advantages), take(exp.ref_logprobs)
        if cfg.algorithm in ("ppo", "rloo", "grpo"):
            adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(logprobs)
            loss, clip_stats = ppo_clip_loss(logprobs, old_logprobs, adv, mask, cfg.clip_eps)
            stats.update(clip_stats)
        else:  # a2c, reinforce: the plain policy-gradient update of Section 6.3 (Eq. 15)
            loss = policy_gradient_loss(logprobs, advantages, mask)
        stats["policy_loss"] = float(loss.detach())
        if cfg.uses_critic:
            clip = cfg.value_clip_eps if (cfg.algorithm == "ppo" and cfg.value_clip_eps > 0) else None
            vloss = value_loss(values, take(exp.values), take(exp.returns), mask, clip)
            loss = loss + cfg.vf_coef * vloss
            stats["value_loss"] = float(vloss.detach())
        if cfg.kl_in_loss or cfg.algorithm == "grpo":
            kl = masked_mean(kl_penalty(logprobs, ref_logprobs, "k3"), mask)
            loss = loss + self.kl_controller.value * kl
        if cfg.entropy_coef > 0:
            entropy = masked_mean(entropy_from_logits(logits.float()), mask)
            loss = loss - cfg.entropy_coef * entropy
            stats["entropy"] = float(entropy.detach())
        if cfg.ptx_coef > 0:
            loss = loss + cfg.ptx_coef * self._ptx_loss(index)
        return loss * weight, stats

    def _ptx_loss(self, index) -> torch.Tensor:
        """Language-modelling loss on demonstrations (PPO-ptx, Ouyang et al. 2022): the counterweight
        to the alignment tax."""
        n = len(index)
        start = (sum(index) * 31) % len(self.ptx_examples)
        chosen = [self.ptx_examples[(start + j) % len(self.ptx_examples)] for j in range(n)]
        batch = join_prompt_completion([p for p, _ in chosen], [c for _, c in chosen], self.tokenizer.pad_token_id)
        batch = batch.to(self.accelerator.device)
        logits, _ = completion_logits(self._policy(), batch)
        return sft_loss(logprobs_from_logits(logits, batch.completion_ids), batch.completion_mask)


def _to_cpu(exp: Experience) -> Experience:
    """The experience off the accelerator: the updates move each micro-batch back as they need it."""
    move = lambda t: None if t is None else t.cpu()  # noqa: E731
    return replace(
        exp,
        batch=exp.batch.to("cpu"),
        ref_logprobs=move(exp.ref_logprobs),
        rewards=move(exp.rewards),
        old_logprobs=move(exp.old_logprobs),
        values=move(exp.values),
        advantages=move(exp.advantages),
        returns=move(exp.returns),
        token_rewards=move(exp.token_rewards),
    )
