"""Learning from samples a reward model has ranked, without an RL algorithm (Section 7.9).

- RAFT / ReST / expert iteration (Dong et al. 2023; Gulcehre et al. 2023; Anthony et al. 2017):
  rounds of  sample n per prompt from the current policy → score with a reward source → keep the
  top fraction → SFT on the kept samples (the existing :class:`SFTAlgorithm`) → repeat.
- RSO (Liu et al. 2023c): statistical rejection sampling from the KL-regularised optimum
  π*(y|x) ∝ π_ref(y|x)·exp(R(x,y)/β) (Eq. 17) with candidates from π_ref, then pairs of accepted
  samples labelled by the reward model, then the DPO or SLiC loss of :mod:`train.preference`.
- Positive-only SFT: SFT on the chosen responses of a preference file, the baseline Section 7.9.2
  contrasts against (it never sees the negatives).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhflab.config import (
    DatasetOptions,
    LoopOptions,
    PolicyOptions,
    PromptOptions,
    SamplingOptions,
    TrainConfig,
    default_run_dir,
    option,
    reward_template_option,
)
from rlhflab.data.readers import write_records
from rlhflab.data.records import Demonstration, Preference
from rlhflab.data.render import encode_prompts, prompt_text
from rlhflab.errors import ConfigError
from rlhflab.files import append_jsonl, write_json
from rlhflab.models.decoder_parts import context_length
from rlhflab.models.loading import load_trainable_policy, save_model
from rlhflab.sampling.rollout import sample
from rlhflab.seeds import derive_seed
from rlhflab.train.loop import train
from rlhflab.train.offline import SFTAlgorithm, SFTConfig, demonstration_examples
from rlhflab.train.preference import PreferenceConfig, train_preferences

# ---- RAFT / ReST ---------------------------------------------------------------------------------


def select_top(rewards: torch.Tensor, keep_fraction: float, per_prompt: bool = True) -> torch.Tensor:
    """Indices (into the flattened (P, n) grid) of the samples to fine-tune on.

    per_prompt (RAFT): the ceil(f·n) best samples of every prompt, so every prompt keeps something.
    global (ReST's threshold / expert iteration): the ceil(f·P·n) best samples overall, so prompts
    where the policy does well contribute more. Ties keep the earlier sample.
    """
    if not 0 < keep_fraction <= 1:
        raise ConfigError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    P, n = rewards.shape
    if per_prompt:
        k = math.ceil(keep_fraction * n)
        order = torch.sort(rewards, dim=-1, descending=True, stable=True).indices[:, :k]
        return (order + torch.arange(P)[:, None] * n).flatten().sort().values
    k = math.ceil(keep_fraction * P * n)
    return torch.sort(rewards.flatten(), descending=True, stable=True).indices[:k].sort().values


@dataclass
class RAFTConfig(LoopOptions, DatasetOptions, SamplingOptions, PromptOptions, PolicyOptions):
    """Rejection-sampling fine-tuning (RAFT / ReST / expert iteration): rounds of sampling from
    the current policy, keeping the best samples by the reward source, and SFT on them."""

    prompts_per_round: int = option(0, "Prompts sampled per round, a fresh seeded subset each round (0: all).")
    reward: str = option(
        "sentiment",
        "Reward source that ranks samples: a reward-model directory, an oracle name or package.module:function.",
    )
    reward_template: str = reward_template_option()
    oracle: str | None = option(None, "Oracle R* also scored on every round's samples (logged, never used to select).")
    num_rounds: int = option(3, "Sample-select-fine-tune rounds.")
    samples_per_prompt: int = option(4, "Samples drawn per prompt per round (n).")
    keep_fraction: float = option(0.25, "Fraction of samples kept (1/n with per_prompt selection = RAFT's best-of-n).")
    selection: str = option(
        "per_prompt",
        "per_prompt: the best of each prompt (RAFT); global: the best overall (ReST threshold).",
        choices=["per_prompt", "global"],
    )
    temperature: float = option(1.0, "Sampling temperature (RAFT suggests > 1 for diversity).")
    num_epochs: float = option(1.0, "SFT passes over each round's kept samples.")
    learning_rate: float = option(2e-5, "Peak learning rate of AdamW (the optimiser restarts every round).")

    def validate(self):
        LoopOptions.validate(self)
        DatasetOptions.validate(self)
        if self.num_rounds <= 0 or self.samples_per_prompt <= 0:
            raise ConfigError("num_rounds and samples_per_prompt must be positive")
        if not 0 < self.keep_fraction <= 1:
            raise ConfigError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")


class RoundSFT(SFTAlgorithm):
    """SFT for one round; only the last round's policy is written (by :func:`raft`)."""

    samples_from_policy = True  # the rounds sample from the policy between their fine-tunings

    def save_final(self, run_dir: Path):
        pass


def train_fields(cfg) -> dict:
    """The training-loop options of ``cfg`` that a round's SFT takes over."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(cfg, f.name)}


def train_round(cfg, policy, tokenizer, examples: list, run_dir: Path) -> None:
    """One round's SFT of ``policy`` on tokenised (prompt ids, completion ids) ``examples``, through
    the one training loop with ``cfg``'s training options; nothing is saved (the caller saves)."""
    sft_cfg = SFTConfig(
        **{
            **train_fields(cfg),
            "output_dir": str(run_dir),
            "resume": None,
            "batch_size": min(cfg.batch_size, len(examples)),
            "gradient_accumulation_steps": 1,
            "save_steps": 0,
        },
        policy=cfg.policy,
        use_chat_template=cfg.use_chat_template,
    )
    train(sft_cfg, RoundSFT(sft_cfg, policy, tokenizer, examples))


def raft_rounds(
    cfg: RAFTConfig, policy, tokenizer, prompts: list, reward_source, oracle_source=None, after_round=None
) -> Path:
    """Run the rounds on ``policy`` (LoRA already applied, if any); writes ``rounds.jsonl`` (samples
    drawn, kept, rewards, seconds per round) and the final ``policy`` into the run directory, and
    returns it. ``after_round(r)`` runs after each round's fine-tuning; every round seeds its own
    sampling (``derive_seed``), so a hook that draws does not change the rounds after it."""
    ids = encode_prompts(
        tokenizer, prompts, cfg.use_chat_template, context_length(policy), cfg.max_new_tokens, cfg.truncate
    )
    run_dir = Path(cfg.output_dir or default_run_dir("raft"))
    if (run_dir / "rounds.jsonl").exists():
        raise ConfigError(f"{run_dir}: holds a finished or partial RAFT run (rounds.jsonl); choose a new --output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    n, per_round = cfg.samples_per_prompt, cfg.prompts_per_round or len(prompts)
    for r in range(cfg.num_rounds):
        t0 = time.perf_counter()
        prompt_order = torch.Generator().manual_seed(derive_seed(cfg.seed, "raft round prompts", r))
        chosen = torch.randperm(len(prompts), generator=prompt_order)[:per_round].tolist()
        torch.manual_seed(derive_seed(cfg.seed, "raft round samples", r))
        rollout = sample(
            policy,
            tokenizer,
            [ids[i] for i in chosen],
            num_samples=n,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            batch_size=cfg.generation_batch_size,
        )
        contexts = [prompt_text(prompts[chosen[i]].prompt) for i in rollout.prompt_index.tolist()]
        rewards = reward_source(contexts, rollout.completion_texts)
        keep = select_top(rewards.view(len(chosen), n), cfg.keep_fraction, cfg.selection == "per_prompt")
        mask = rollout.batch.completion_mask
        examples = [
            (ids[chosen[int(rollout.prompt_index[i])]], rollout.batch.completion_ids[i][: int(mask[i].sum())].tolist())
            for i in keep.tolist()
        ]
        examples = [e for e in examples if e[1]]  # an empty completion teaches nothing
        if not examples:
            raise ConfigError(f"round {r}: every kept sample is empty; raise --max_new_tokens or --keep_fraction")
        train_round(cfg, policy, tokenizer, examples, run_dir / f"round-{r}")
        row = {
            "round": r,
            "samples_drawn": len(rollout.completion_texts),
            "kept": len(examples),
            "reward": float(rewards.mean()),
            "reward_kept": float(rewards[keep].mean()),
        }
        if oracle_source is not None:
            oracle = oracle_source(contexts, rollout.completion_texts)
            row.update(oracle_reward=float(oracle.mean()), oracle_reward_kept=float(oracle[keep].mean()))
        row["seconds"] = time.perf_counter() - t0
        append_jsonl(run_dir / "rounds.jsonl", row)
        if after_round is not None:
            after_round(r)
    save_model(policy, tokenizer, str(run_dir / "policy"), method="raft", config=cfg)
    return run_dir


# ---- RSO ---------------------------------------------------------------------------------------
def rso_acceptance_probabilities(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """exp((R(y) − max_y' R(y')) / β) for each candidate (Liu et al. 2023c, Algorithm 1).

    Rejection sampling from π* ∝ π_ref·exp(R/β) with proposal π_ref accepts y with probability
    π*(y) / (M π_ref(y)); the bound M is estimated by the best candidate in hand, so the best one
    is always accepted. (..., n) → (..., n)."""
    return torch.exp((rewards - rewards.max(dim=-1, keepdim=True).values) / beta)


def statistical_rejection_sample(
    rewards: torch.Tensor, num_accepted: int, beta: float, rng: np.random.Generator
) -> list[int]:
    """Indices of up to ``num_accepted`` candidates drawn (without replacement) from π* by
    Algorithm 1 of Liu et al. (2023c): sweep the remaining candidates, accepting each with
    probability exp((R − max R_remaining)/β); accepted ones leave the pool, whose max then drops."""
    remaining = list(range(len(rewards)))
    accepted: list[int] = []
    num_accepted = min(num_accepted, len(remaining))
    while len(accepted) < num_accepted:
        probs = rso_acceptance_probabilities(rewards[remaining], beta)
        taken = []
        for j, p in zip(list(remaining), probs.tolist()):
            if rng.uniform() < p:
                accepted.append(j)
                taken.append(j)
                if len(accepted) == num_accepted:
                    break
        remaining = [j for j in remaining if j not in taken]
    return accepted


def rso_pairs(accepted: list[int], rewards: torch.Tensor) -> list[tuple[int, int]]:
    """Consecutive accepted samples form pairs (y1, y2), (y3, y4), ...; the reward model labels
    each, the higher being chosen. Pairs of equal reward carry no preference and are dropped."""
    pairs = []
    for a, b in zip(accepted[0::2], accepted[1::2]):
        if rewards[a] != rewards[b]:
            pairs.append((a, b) if rewards[a] > rewards[b] else (b, a))
    return pairs


@dataclass
class RSOConfig(PreferenceConfig, PromptOptions):
    """RSO: candidates from pi_ref, statistical rejection sampling toward pi* = pi_ref exp(R/beta)/Z
    with a reward model, pairs ranked by it, then the DPO (sigmoid) or SLiC (hinge) loss."""

    reward: str = option(
        "sentiment",
        "Reward source that scores candidates and labels pairs (a reward-model directory, oracle or module:function).",
    )
    reward_template: str = reward_template_option()
    num_candidates: int = option(8, "Candidates sampled from pi_ref per prompt.")
    num_accepted: int = option(4, "Samples accepted per prompt (consecutive ones are paired).")
    sampling_kl_coef: float = option(
        0.0, "beta of the target pi* in the rejection sampler (0: the same as --kl_coef).", aliases=["--sampling_beta"]
    )
    max_new_tokens: int = option(32, "Maximum completion length in tokens.")
    generation_batch_size: int = option(32, "Prompts per generate call.")

    def validate(self):
        super().validate()
        if self.loss not in ("dpo", "slic"):
            raise ConfigError("RSO trains with --loss dpo (sigmoid-norm) or slic (hinge)")
        if self.num_accepted < 2 or self.num_candidates < self.num_accepted:
            raise ConfigError("need 2 <= num_accepted <= num_candidates")


def rso_preferences(cfg: RSOConfig, policy, tokenizer, prompts, reward_source) -> tuple[list[Preference], dict]:
    """The RSO preference pairs: sample from π_ref (the policy as given), accept toward π*, pair."""
    ids = encode_prompts(
        tokenizer, prompts, cfg.use_chat_template, context_length(policy), cfg.max_new_tokens, cfg.truncate
    )
    torch.manual_seed(cfg.seed)
    n = cfg.num_candidates
    rollout = sample(
        policy,
        tokenizer,
        ids,
        num_samples=n,
        max_new_tokens=cfg.max_new_tokens,
        temperature=1.0,
        batch_size=cfg.generation_batch_size,
    )
    contexts = [prompt_text(p.prompt) for p in prompts]
    texts = rollout.completion_texts
    rewards = reward_source([contexts[i] for i in rollout.prompt_index.tolist()], texts).view(len(prompts), n)
    rng = np.random.default_rng(cfg.seed)
    beta = cfg.sampling_kl_coef or cfg.kl_coef
    records, accepted_rewards, identical, blank = [], [], 0, 0
    for i, p in enumerate(prompts):
        accepted = statistical_rejection_sample(rewards[i], cfg.num_accepted, beta, rng)
        accepted_rewards += rewards[i, accepted].tolist()
        for c, r in rso_pairs(accepted, rewards[i]):
            chosen, rejected = texts[i * n + c], texts[i * n + r]
            # Two samples of one prompt are often the same text; a batched reward model can still
            # score them a rounding error apart, so equal rewards do not catch every such pair.
            # An empty sample (an immediate end token) is no completion a record can hold.
            if chosen == rejected:
                identical += 1
            elif not chosen.strip() or not rejected.strip():
                blank += 1
            else:
                records.append(Preference(prompt=p.prompt, chosen=chosen, rejected=rejected))
    stats = {
        "samples_drawn": len(texts),
        "pairs": len(records),
        "identical_pairs_skipped": identical,
        "blank_pairs_skipped": blank,
        "mean_reward_candidates": float(rewards.mean()),
        "mean_reward_accepted": float(np.mean(accepted_rewards)),
        "sampling_beta": beta,
    }
    if identical or blank:
        print(
            f"rso: skipped {identical} pair(s) of identical samples and {blank} with an empty sample "
            "(no preference to label)",
            file=sys.stderr,
        )
    if not records:
        raise ConfigError("RSO produced no pairs (all accepted pairs tied in reward)")
    return records, stats


def rso_train(cfg: RSOConfig, policy, tokenizer, prompts: list, reward_source, reference=None) -> Path:
    """Sample from ``policy`` (π_ref), accept, pair (written to ``rso_preferences.jsonl`` with
    ``rso_sampling.json``), then train it with :func:`train.preference.train_preferences`."""
    run_dir = Path(cfg.output_dir or default_run_dir("rso"))
    cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
    records, stats = rso_preferences(cfg, policy, tokenizer, prompts, reward_source)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_records(records, run_dir / "rso_preferences.jsonl")
    write_json(run_dir / "rso_sampling.json", stats)
    cfg.batch_size = min(cfg.batch_size, len(records))
    # LoRA (if asked) only now: the candidates were sampled from the plain π_ref, on the fast path.
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    return train_preferences(cfg, policy, tokenizer, records, reference)


# ---- positive-only SFT -------------------------------------------------------------------------
@dataclass
class PositiveSFTConfig(SFTConfig):
    """SFT on the chosen responses of a preference file only: the baseline that ignores negative
    feedback (Section 7.9.2)."""

    data: str | None = option(None, "Preferences (prompt, chosen, rejected); only prompt and chosen are used.")


def chosen_demonstrations(records: list[Preference]) -> list[Demonstration]:
    """Each preference's chosen response as a demonstration (duplicates kept: a response preferred
    in several pairs is weighted by how often it won)."""
    return [Demonstration(prompt=r.prompt, completion=r.chosen) for r in records]


def train_positive_sft(cfg: PositiveSFTConfig, policy, tokenizer, records: list[Preference]) -> Path:
    """SFT of ``policy`` (LoRA already applied, if any) on the chosen side of the records."""
    examples = demonstration_examples(chosen_demonstrations(records), tokenizer, cfg, cfg.data or "<preferences>")
    return train(cfg, SFTAlgorithm(cfg, policy, tokenizer, examples))
