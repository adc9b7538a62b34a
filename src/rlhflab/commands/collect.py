"""``rlhflab sample`` and ``rlhflab annotate``: the outputs feedback is collected on, and simulated
annotators driven by an oracle R* labelling them (Sections 4.1-4.2).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from rlhflab.config import PolicyOptions, PromptOptions, SamplingOptions, option
from rlhflab.data import Prompt, Samples, encode_prompts, load_prompts, read_records, write_records
from rlhflab.errors import ConfigError
from rlhflab.feedback import annotators as ann
from rlhflab.feedback.agreement import oracle_agreement
from rlhflab.feedback.judge import JudgeAnnotator, is_judge_spec, load_judge
from rlhflab.feedback.oracles import load_oracle
from rlhflab.files import write_json
from rlhflab.models import load_policy
from rlhflab.models.decoder_parts import context_length
from rlhflab.sampling.rollout import sample as sample_rollout

FEEDBACK_KINDS = ["preference", "ranking", "rating", "binary", "language_feedback"]


@dataclass
class SampleConfig(SamplingOptions, PromptOptions, PolicyOptions):
    """Sample completions from a policy: the outputs that feedback will be collected on."""

    generation_batch_size: int = option(32, "Prompts per generate call.", aliases=["--batch_size"])
    num_samples: int = option(4, "Completions per prompt.")
    seed: int = option(0, "Random seed.")
    output: str = option("samples.jsonl", "Output JSONL: one row {prompt, completions} per prompt.")


def run_sample(cfg: SampleConfig, policy=None, tokenizer=None, prompts: list[Prompt] | None = None) -> list[Samples]:
    if policy is None:
        policy, tokenizer = load_policy(cfg.policy)
    prompts = prompts if prompts is not None else load_prompts(cfg.prompts, cfg.limit)
    ids = encode_prompts(
        tokenizer, prompts, cfg.use_chat_template, context_length(policy), cfg.max_new_tokens, cfg.truncate
    )
    torch.manual_seed(cfg.seed)
    rollout = sample_rollout(
        policy,
        tokenizer,
        ids,
        num_samples=cfg.num_samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        batch_size=cfg.generation_batch_size,
    )
    k = cfg.num_samples
    records = [
        Samples(prompt=p.prompt, completions=rollout.completion_texts[i * k : (i + 1) * k])
        for i, p in enumerate(prompts)
    ]
    if cfg.output:
        write_records(records, cfg.output)
    return records


@dataclass
class AnnotateConfig:
    """Simulated annotators driven by an oracle R* label sampled completions (Sections 4.1-4.2)."""

    samples: str | None = option(None, "Samples JSONL from `rlhflab sample` (prompt, completions).")
    oracle: str = option("sentiment", "Oracle R*: 'sentiment', 'brevity' or package.module:function.")
    annotator_oracles: str | None = option(
        None,
        "An R* per pool member, comma-separated (e.g. sentiment,sentiment,brevity), as many as --annotators: "
        "member i labels by oracle i, so the pool disagrees on what it wants (Section 5.1). Default: --oracle for all.",
    )
    attribute_oracles: str | None = option(
        None,
        "Rating feedback on several attributes, NAME=ORACLE comma-separated (e.g. helpful=sentiment,short=brevity): "
        "each completion gets one rating per attribute, by one pool member, scored by that attribute's R* "
        "(the ratings' 'attribute' column; train with `rlhflab reward --feedback rating --attributes all`).",
    )
    feedback: str = option("preference", "Feedback type to produce.", choices=FEEDBACK_KINDS)
    annotators: int = option(3, "Annotators in the pool (members differ in noise and position bias).")
    annotator: str | None = option(
        None,
        "judge:MODEL: a causal LM labels the pairs itself, both orders averaged (preference feedback only), in "
        "place of the simulated pool; its position bias and agreement with --oracle go to OUTPUT.judge.json.",
    )
    temperature: float = option(
        0.1, "Bradley-Terry temperature of the least noisy annotator (Eq. 8); doubles per member."
    )
    bias: float = option(0.1, "Largest position bias in the pool (reward added to the first-shown output).")
    rating_noise: float = option(0.1, "Std of the noise added to R* before binning ratings.")
    pairs_per_prompt: int = option(6, "Preference pairs per prompt (distinct pairs of its completions).")
    scale: str = option("likert:5", "Rating scale: binary, likert:K, continuous or categorical:a|b|c.")
    seed: int = option(0, "Random seed (the same seed gives the same labels).")
    output: str = option("feedback.jsonl", "Output JSONL of feedback records.")

    def validate(self):
        if not self.samples:
            raise ConfigError("--samples is required (a file written by `rlhflab sample`)")
        if self.annotator is not None and not is_judge_spec(self.annotator):
            raise ConfigError(f"--annotator {self.annotator!r}: expected judge:MODEL")
        if self.annotator is not None and self.feedback != "preference":
            raise ConfigError("--annotator judge:MODEL labels pairs: use it with --feedback preference")
        if self.annotator_oracles and len(self.annotator_oracles.split(",")) != self.annotators:
            raise ConfigError(
                f"--annotator_oracles names {len(self.annotator_oracles.split(','))} oracles for "
                f"--annotators {self.annotators}; give one per annotator"
            )
        if self.attribute_oracles:
            if self.feedback not in ("rating", "binary"):
                raise ConfigError("--attribute_oracles rates attributes: use it with --feedback rating or binary")
            if self.annotator_oracles:
                raise ConfigError("--attribute_oracles and --annotator_oracles cannot be combined; choose one")
            ann.parse_attribute_oracles(self.attribute_oracles)


def run_annotate(cfg: AnnotateConfig, samples: list[Samples] | None = None) -> list:
    samples = samples if samples is not None else read_records(cfg.samples, "samples")
    oracle = load_oracle(cfg.oracle)
    member_oracles = None
    if cfg.annotator_oracles:
        member_oracles = [load_oracle(spec.strip()) for spec in cfg.annotator_oracles.split(",")]
    pool = ann.make_pool(
        oracle,
        n=cfg.annotators,
        base_temperature=cfg.temperature,
        max_bias=cfg.bias,
        rating_noise=cfg.rating_noise,
        member_oracles=member_oracles,
    )
    if cfg.annotator is not None:
        pool = JudgeAnnotator(load_judge(cfg.annotator))
    rng = np.random.default_rng(cfg.seed)
    prompts = [s.prompt for s in samples]
    completions = [[c for c in s.completions if isinstance(c, list) or c.strip()] for s in samples]
    if cfg.feedback == "preference":
        keep = [i for i, c in enumerate(completions) if len(c) >= 2]
        records = ann.annotate_pairs(
            pool, [prompts[i] for i in keep], [completions[i] for i in keep], rng, cfg.pairs_per_prompt
        )
    elif cfg.feedback == "ranking":
        keep = [i for i, c in enumerate(completions) if len(c) >= 2]
        records = ann.annotate_rankings(pool, [prompts[i] for i in keep], [completions[i] for i in keep], rng)
    elif cfg.feedback in ("rating", "binary") and cfg.attribute_oracles:
        scale = "binary" if cfg.feedback == "binary" else cfg.scale
        oracles = {name: load_oracle(spec) for name, spec in ann.parse_attribute_oracles(cfg.attribute_oracles)}
        records = ann.annotate_attribute_ratings(pool, oracles, prompts, completions, rng, scale=scale)
    elif cfg.feedback in ("rating", "binary"):
        scale = "binary" if cfg.feedback == "binary" else cfg.scale
        records = ann.annotate_ratings(pool, prompts, completions, rng, scale=scale)
    else:
        records = ann.annotate_language_feedback(pool, prompts, completions, rng)
    if not records:
        raise ConfigError(f"{cfg.samples}: no prompt has enough non-empty completions to annotate")
    if cfg.output:
        write_records(records, cfg.output)
    if isinstance(pool, JudgeAnnotator):
        report = {
            "judge": pool.name,
            "pairs": len(records),
            "position_bias": pool.verdicts.position_bias,
            "oracle": cfg.oracle,
            "agreement_with_oracle": oracle_agreement(records, oracle),
        }
        if cfg.output:
            write_json(f"{cfg.output}.judge.json", report)
        print(
            f"{pool.name}: position bias {report['position_bias']:+.3f} (mean P(first) - 0.5), agreement with "
            f"R* ({cfg.oracle}) {report['agreement_with_oracle']:.3f} over {len(records)} pairs",
            file=sys.stderr,
        )
    return records
