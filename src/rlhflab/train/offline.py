"""Offline methods on the one loop: a fixed dataset, a deterministic order, one optimiser step per
iteration. Supervised fine-tuning (Section 7.4) lives here; reward modelling (``train/reward_model.py``)
and the direct preference methods (``train/preference.py``) build on :class:`OfflineAlgorithm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.config import PolicyOptions, TrainConfig, chat_template_option, data_format_option, option
from rlhflab.data.render import encode_prompt_completion
from rlhflab.errors import ConfigError, DataError
from rlhflab.losses import (
    sft_loss,
)
from rlhflab.models.loading import save_model
from rlhflab.sampling.rollout import completion_logprobs, join_prompt_completion
from rlhflab.seeds import derive_seed
from rlhflab.train.loop import optimizer_batch_size, shard, split


class OfflineSchedule:
    """Which examples each iteration uses: a fresh permutation per epoch, seeded, so that any
    iteration's batch is known without replaying the ones before it (exact resume for free).

    With ``groups`` (a group key per example, e.g. its prompt) the groups come in a random order and
    a group's examples, shuffled, stay next to each other, so a batch holds whole groups (one may
    straddle two batches)."""

    def __init__(self, num_examples: int, config: TrainConfig, groups: Sequence | None = None):
        batch = optimizer_batch_size(config)
        if num_examples < batch:
            raise ConfigError(
                f"batch_size {config.batch_size} x gradient_accumulation_steps {config.gradient_accumulation_steps} "
                f"= {batch} examples per step is larger than the dataset ({num_examples} examples)"
            )
        self.n, self.batch_size, self.seed = num_examples, batch, config.seed
        self.steps_per_epoch = num_examples // batch
        epochs_steps = math.ceil(config.num_epochs * self.steps_per_epoch)
        self.total = config.max_steps if config.max_steps > 0 else max(1, epochs_steps)
        self.group_of: torch.Tensor | None = None
        if groups is not None:
            if len(groups) != num_examples:
                raise ValueError(f"{len(groups)} group keys for {num_examples} examples")
            ids: dict = {}
            self.group_of = torch.tensor([ids.setdefault(key, len(ids)) for key in groups])

    def indices(self, iteration: int) -> list[int]:
        epoch, position = divmod(iteration, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "example order", epoch))
        order = torch.randperm(self.n, generator=generator)
        if self.group_of is not None:
            # groups in a random order, each group's examples in the random order drawn above
            group_position = torch.randperm(int(self.group_of.max()) + 1, generator=generator)
            order = order[torch.sort(group_position[self.group_of[order]], stable=True).indices]
        order = order.tolist()
        return order[position * self.batch_size : (position + 1) * self.batch_size]


def tokenize_demonstrations(
    prompts, completions, tokenizer, config: TrainConfig, source: str = "<data>", use_chat_template="auto"
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) per example, with the length check of ``max_length``."""
    examples = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        p, c = encode_prompt_completion(tokenizer, prompt, completion, use_chat_template, source, i + 1)
        if len(p) + len(c) > config.max_length and prompt is None and config.truncate:
            c = c[: config.max_length - len(p)]  # a whole text keeps its start, as TRL truncates text rows
        if len(p) + len(c) > config.max_length:
            if not config.truncate or len(c) >= config.max_length:
                raise DataError(
                    source,
                    i + 1,
                    "completion",
                    f"prompt + completion is {len(p) + len(c)} tokens, over max_length {config.max_length} "
                    "(raise --max_length or pass --truncate)",
                )
            p = p[len(p) + len(c) - config.max_length :]
        if not p:
            raise DataError(source, i + 1, "prompt", "renders to no tokens")
        examples.append((p, c))
    return examples


def demonstration_examples(demos, tokenizer, config: TrainConfig, source: str = "<data>") -> list:
    """:func:`tokenize_demonstrations` over Demonstration records, rendered as ``config`` says."""
    prompts, completions = [d.prompt for d in demos], [d.completion for d in demos]
    return tokenize_demonstrations(prompts, completions, tokenizer, config, source, config.use_chat_template)


class OfflineAlgorithm:
    """What every offline method shares on the loop: the seeded schedule, this process's shard of
    each global batch, micro-batches weighted by their share, no per-iteration collection, and
    saving the trained model. Subclasses implement ``loss`` (and may override ``updates``)."""

    module_name = "policy"  # key in trainable_modules, and the output directory's name
    samples_from_policy = False  # trains on a fixed dataset

    def __init__(self, config: TrainConfig, model, tokenizer, num_examples: int, groups: Sequence | None = None):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.schedule = OfflineSchedule(num_examples, config, groups)

    def trainable_modules(self):
        return {self.module_name: self.model}

    def bind(self, accelerator, modules):
        self.accelerator, self.model = accelerator, modules[self.module_name]

    def num_iterations(self):
        return self.schedule.total

    def total_optimizer_steps(self):
        return self.schedule.total

    def collect(self, iteration):
        return {}

    def updates(self, iteration):
        """Example indices of this process, split into micro-batches; each micro-batch's mean loss
        is weighted by its share of this process's examples."""
        mine = shard(self.schedule.indices(iteration), self.accelerator)
        yield [(m, len(m) / len(mine)) for m in split(mine, self.config.gradient_accumulation_steps)]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def save_final(self, run_dir: Path):
        model = self.accelerator.unwrap_model(self.model)
        save_model(model, self.tokenizer, str(run_dir / self.module_name), method=self.name, config=self.config)


@dataclass
class SFTConfig(TrainConfig, PolicyOptions):
    """Supervised fine-tuning on demonstrations: completion-only loss (Section 7.4)."""

    data: str | None = option(
        None, "Demonstrations (prompt, completion | messages): JSONL, JSON, Parquet or a saved dataset."
    )
    format: str | None = data_format_option()
    use_chat_template: str = chat_template_option()
    learning_rate: float = option(2e-5, "Peak learning rate of AdamW.")


class SFTAlgorithm(OfflineAlgorithm):
    """Maximise log pi(o | c) on demonstrations; prompt tokens carry no loss (the paper's SFT
    objective of Section 6.3, max E[ln pi_theta(o_w | c)])."""

    name = "sft"

    def __init__(self, config: SFTConfig, model, tokenizer, examples: list[tuple[list[int], list[int]]]):
        super().__init__(config, model, tokenizer, len(examples))
        self.examples = examples

    def updates(self, iteration):
        chosen = [self.examples[i] for i in self.schedule.indices(iteration)]
        # Token-mean over the *global* batch, so 1 process and N processes compute the same loss.
        total_tokens = sum(len(c) for _, c in chosen)
        mine = shard(chosen, self.accelerator)
        micro = split(mine, self.config.gradient_accumulation_steps)
        scale = self.accelerator.num_processes / total_tokens
        yield [
            (join_prompt_completion([p for p, _ in m], [c for _, c in m], self.tokenizer.pad_token_id), scale)
            for m in micro
        ]

    def loss(self, micro):
        batch, scale = micro
        batch = batch.to(self.accelerator.device)
        logprobs = completion_logprobs(self.model, batch)
        mask = batch.completion_mask
        # sft_loss is this micro-batch's token mean; rescale it to its share of the global mean.
        return sft_loss(logprobs, mask) * (mask.sum() * scale), {"tokens": float(mask.sum())}
