"""Offline methods on the one loop: a fixed dataset, a deterministic order, one optimiser step per
iteration. Supervised fine-tuning (Section 7.4) and reward modelling (Sections 4.2, 7.5) live here;
direct preference methods reuse :class:`OfflineSchedule` and :func:`tokenize_pairs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rlhflab.config import TrainConfig, option
from rlhflab.data.render import prompt_text, render_completion, render_prompt
from rlhflab.errors import ConfigError, DataError
from rlhflab.losses import bradley_terry_loss, plackett_luce_loss, regression_loss, pairwise_accuracy, sft_loss
from rlhflab.models.loading import save_model
from rlhflab.models.scoring import encode_for_reward, reward_forward
from rlhflab.rollout import SequenceBatch, completion_logprobs, join_prompt_completion
from rlhflab.train.loop import shard, split


class OfflineSchedule:
    """Which examples each iteration uses: a fresh permutation per epoch, seeded, so that any
    iteration's batch is known without replaying the ones before it (exact resume for free)."""

    def __init__(self, num_examples: int, config: TrainConfig):
        if num_examples < config.batch_size:
            raise ConfigError(f"batch_size {config.batch_size} is larger than the dataset ({num_examples} examples)")
        self.n, self.batch_size, self.seed = num_examples, config.batch_size, config.seed
        self.steps_per_epoch = num_examples // config.batch_size
        epochs_steps = math.ceil(config.num_epochs * self.steps_per_epoch)
        self.total = config.max_steps if config.max_steps > 0 else max(1, epochs_steps)

    def indices(self, iteration: int) -> list[int]:
        epoch, position = divmod(iteration, self.steps_per_epoch)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return order[position * self.batch_size: (position + 1) * self.batch_size].tolist()


def tokenize_demonstrations(prompts, completions, tokenizer, config: TrainConfig, source: str = "<data>",
                            use_chat_template: bool = True) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) per example, with the length check of ``max_length``."""
    examples = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        p = tokenizer(render_prompt(prompt, tokenizer, use_chat_template), add_special_tokens=False).input_ids
        c = tokenizer(render_completion(completion), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(p) + len(c) > config.max_length:
            if not config.truncate or len(c) >= config.max_length:
                raise DataError(source, i + 1, "completion",
                                f"prompt + completion is {len(p) + len(c)} tokens, over max_length {config.max_length} "
                                "(raise --max_length or pass --truncate)")
            p = p[len(p) + len(c) - config.max_length:]
        if not p:
            raise DataError(source, i + 1, "prompt", "renders to no tokens")
        examples.append((p, c))
    return examples


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on demonstrations: completion-only loss (Section 7.4)."""

    model: str = option("smollm2-135m-instruct", "Policy to fine-tune: a registry name, hub id or local path.")
    data: str | None = option(None, "Demonstrations (prompt, completion | messages): JSONL, JSON, Parquet or a saved dataset.")
    use_chat_template: bool = option(True, "Render string prompts with the tokenizer's chat template.")
    learning_rate: float = option(2e-5, "Peak learning rate of AdamW.")


class SFTAlgorithm:
    """Maximise log pi(o | c) on demonstrations; prompt tokens carry no loss (the paper's SFT
    objective of Section 6.3, max E[ln pi_theta(o_w | c)])."""

    name = "sft"

    def __init__(self, config: SFTConfig, model, tokenizer, examples: list[tuple[list[int], list[int]]]):
        self.config, self.model, self.tokenizer, self.examples = config, model, tokenizer, examples
        self.schedule = OfflineSchedule(len(examples), config)

    def trainable_modules(self):
        return {"policy": self.model}

    def bind(self, accelerator, modules):
        self.accelerator, self.model = accelerator, modules["policy"]

    def num_iterations(self):
        return self.schedule.total

    def total_optimizer_steps(self):
        return self.schedule.total

    def collect(self, iteration):
        return {}

    def updates(self, iteration):
        chosen = [self.examples[i] for i in self.schedule.indices(iteration)]
        # Token-mean over the *global* batch, so 1 process and N processes compute the same loss.
        total_tokens = sum(len(c) for _, c in chosen)
        mine = shard(chosen, self.accelerator)
        micro = split(mine, self.config.gradient_accumulation_steps)
        scale = self.accelerator.num_processes / total_tokens
        yield [(join_prompt_completion([p for p, _ in m], [c for _, c in m], self.tokenizer.pad_token_id), scale)
               for m in micro]

    def loss(self, micro):
        batch, scale = micro
        batch = batch.to(self.accelerator.device)
        logprobs = completion_logprobs(self.model, batch)
        mask = batch.completion_mask
        # sft_loss is this micro-batch's token mean; rescale it to its share of the global mean.
        return sft_loss(logprobs, mask) * (mask.sum() * scale), {"tokens": float(mask.sum())}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def save_final(self, run_dir: Path):
        save_model(self.accelerator.unwrap_model(self.model), self.tokenizer, str(run_dir / "policy"))


@dataclass
class RewardConfig(TrainConfig):
    """Reward modelling: Bradley-Terry on pairs (Eq. 11), Plackett-Luce on rankings, regression
    on ratings (Eq. 7)."""

    model: str = option("minilm-l6", "Reward-model backbone (encoder or decoder) or a saved reward model.")
    data: str | None = option(None, "Feedback file: preferences, rankings or ratings.")
    feedback: str = option("preference", "Kind of feedback in --data.", choices=["preference", "ranking", "rating"])
    eval_data: str | None = option(None, "Held-out preferences for accuracy and calibration (default: a split of --data).")
    eval_fraction: float = option(0.1, "Fraction of --data held out when --eval_data is not given.")
    use_margin: bool = option(False, "Use the 'margin' column in the Bradley-Terry loss (Touvron et al. 2023).")
    learning_rate: float = option(5e-5, "Peak learning rate of AdamW.")
    num_epochs: float = option(2.0, "Passes over the training data.")
    batch_size: int = option(16, "Feedback records per optimiser step across all processes.")


class RewardAlgorithm:
    """R_phi trained by maximum likelihood of the feedback (Eq. 5-6), one forward per step over all
    completions of the batch (chosen and rejected together)."""

    name = "reward"

    def __init__(self, config: RewardConfig, model, tokenizer, records: Sequence):
        self.config, self.model, self.tokenizer, self.records = config, model, tokenizer, list(records)
        self.schedule = OfflineSchedule(len(self.records), config)

    def trainable_modules(self):
        return {"reward_model": self.model}

    def bind(self, accelerator, modules):
        self.accelerator, self.model = accelerator, modules["reward_model"]

    def num_iterations(self):
        return self.schedule.total

    def total_optimizer_steps(self):
        return self.schedule.total

    def collect(self, iteration):
        return {}

    def updates(self, iteration):
        chosen = [self.records[i] for i in self.schedule.indices(iteration)]
        mine = shard(chosen, self.accelerator)
        micro = split(mine, self.config.gradient_accumulation_steps)
        # Each micro-batch's mean loss is weighted by its share of this process's examples.
        yield [(m, len(m) / len(mine)) for m in micro]

    def _rewards(self, contexts, outputs):
        encoded = encode_for_reward(self.tokenizer, contexts, outputs, self.config.max_length)
        encoded = {k: v.to(self.accelerator.device) for k, v in encoded.items()}
        return self.model(**encoded).logits.squeeze(-1).float()

    def loss(self, micro):
        records, weight = micro
        kind = self.config.feedback
        if kind == "preference":
            contexts = [prompt_text(r.prompt) for r in records] * 2
            outputs = [render_completion(r.chosen) for r in records] + [render_completion(r.rejected) for r in records]
            rewards = self._rewards(contexts, outputs)
            chosen, rejected = rewards[: len(records)], rewards[len(records):]
            margin = None
            if self.config.use_margin:
                margin = torch.tensor([r.margin or 0.0 for r in records], device=rewards.device)
            loss = bradley_terry_loss(chosen, rejected, margin)
            stats = {"accuracy": pairwise_accuracy(chosen.detach(), rejected.detach()),
                     "reward_gap": float((chosen - rejected).detach().mean())}
        elif kind == "ranking":
            k = max(len(r.completions) for r in records)
            contexts, outputs, ranks, mask = [], [], [], []
            for r in records:
                groups = r.ties if r.ties is not None else list(range(len(r.completions)))
                pad = k - len(r.completions)
                contexts += [prompt_text(r.prompt)] * k
                outputs += [render_completion(c) for c in r.completions] + ["."] * pad
                ranks.append(list(groups) + [10**6] * pad)
                mask.append([True] * len(r.completions) + [False] * pad)
            rewards = self._rewards(contexts, outputs).view(len(records), k)
            ranks_t = torch.tensor(ranks, device=rewards.device)
            mask_t = torch.tensor(mask, device=rewards.device)
            loss = plackett_luce_loss(rewards, ranks_t, mask_t)
            stats = {"top1_accuracy": float((rewards.masked_fill(~mask_t, -1e9).argmax(-1) == 0).float().mean())}
        else:
            contexts = [prompt_text(r.prompt) for r in records]
            outputs = [render_completion(r.completion) for r in records]
            rewards = self._rewards(contexts, outputs)
            targets = torch.tensor([r.score for r in records], device=rewards.device, dtype=rewards.dtype)
            loss = regression_loss(rewards, targets)
            stats = {}
        return loss * weight, stats

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def save_final(self, run_dir: Path):
        save_model(self.accelerator.unwrap_model(self.model), self.tokenizer, str(run_dir / "reward_model"))
