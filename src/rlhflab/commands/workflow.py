"""The entry layer: one function per ``rlhflab`` command, each taking its config dataclass.

Every entry function reads what its config names (policy, prompts, data files, reward sources),
hands it to the library below (``train/``, ``decoding``, ``evaluate``) and writes the outputs; the
library never imports this module. ``rlhflab CMD`` parses a config and calls the function
(``cli.COMMANDS``); ``rlhflab demo`` and ``rlhflab compare`` chain them; Python users call them
directly, optionally with an already loaded policy.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rlhflab.commands.language import ILFConfig, ReviseConfig, ilf_rounds, load_constitution, revise_train
from rlhflab.config import PolicyOptions, PromptOptions, SamplingOptions, default_run_dir, option, save_config
from rlhflab.data import Demonstration, Prompt, Samples, encode_prompts, load_prompts, read_records, write_records
from rlhflab.decoding.best_of_n import best_of_n, rad_decode
from rlhflab.errors import ConfigError
from rlhflab.evaluation.metrics import ensemble_uncertainty_report, evaluate_policy, reward_model_report
from rlhflab.feedback import annotators as ann
from rlhflab.feedback.agreement import oracle_agreement
from rlhflab.feedback.judge import JudgeAnnotator, is_judge_spec, load_judge
from rlhflab.feedback.oracles import load_oracle
from rlhflab.files import write_json
from rlhflab.models import apply_lora, load_policy, load_reward_model
from rlhflab.models.decoder_parts import context_length
from rlhflab.rewards.ensemble import (
    bootstrap_indices,
    centring_offset,
    feedback_completions,
    init_member_heads,
    member_seed,
    write_manifest,
)
from rlhflab.rewards.heads import (
    annotator_names,
    init_attribute_levels,
    load_head_scores,
    num_outputs,
    select_attributes,
    training_manifest,
)
from rlhflab.rewards.registry import load_reward_source
from rlhflab.sampling.rollout import sample as sample_rollout
from rlhflab.train.loop import latest_checkpoint, train
from rlhflab.train.offline import RewardAlgorithm, RewardConfig, SFTAlgorithm, SFTConfig, tokenize_demonstrations
from rlhflab.train.policy_optimization import PolicyOptimization, RLConfig
from rlhflab.train.preference import PreferenceConfig, RankingConfig, train_preferences, train_rankings
from rlhflab.train.rejection import (
    PositiveSFTConfig,
    RAFTConfig,
    RSOConfig,
    chosen_demonstrations,
    raft_rounds,
    rso_train,
)

FEEDBACK_KINDS = ["preference", "ranking", "rating", "binary", "language_feedback"]


# ---- sample ------------------------------------------------------------------------------------
@dataclass
class SampleConfig(SamplingOptions, PromptOptions, PolicyOptions):
    """Sample completions from a policy: the outputs that feedback will be collected on."""

    generation_batch_size: int = option(32, "Prompts per generate call.", aliases=["--batch_size"])
    num_samples: int = option(4, "Completions per prompt.")
    seed: int = option(0, "Random seed.")
    output: str = option("samples.jsonl", "Output JSONL: one row {prompt, completions} per prompt.")


def sample(cfg: SampleConfig, policy=None, tokenizer=None, prompts: list[Prompt] | None = None) -> list[Samples]:
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


# ---- annotate ----------------------------------------------------------------------------------
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


def annotate(cfg: AnnotateConfig, samples: list[Samples] | None = None) -> list:
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


# ---- sft / reward / policy optimisation --------------------------------------------------------
def sft(cfg: SFTConfig) -> Path:
    if not cfg.data:
        raise ConfigError("--data is required (demonstrations: prompt, completion)")
    demos = read_records(cfg.data, "demonstration")
    policy, tokenizer = load_policy(cfg.policy, cfg.dtype)
    policy = apply_lora(policy, cfg)
    examples = tokenize_demonstrations(
        [d.prompt for d in demos],
        [d.completion for d in demos],
        tokenizer,
        cfg,
        source=cfg.data,
        use_chat_template=cfg.use_chat_template,
    )
    return train(cfg, SFTAlgorithm(cfg, policy, tokenizer, examples))


def split_heldout(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded train / held-out split (at least one held-out record when fraction > 0)."""
    if fraction <= 0:
        return records, []
    order = np.random.default_rng(seed).permutation(len(records))
    n_held = max(1, int(round(fraction * len(records))))
    held = set(order[:n_held].tolist())
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def reward(cfg: RewardConfig, oracle: str | None = None, samples_seen=None, samples_unseen=None) -> tuple[Path, dict]:
    """Train a reward model (``cfg.ensemble`` > 1: an ensemble of them, see :func:`reward_ensemble`)
    and write ``reward_report.json`` (accuracy, calibration, oracle correlation on seen/unseen
    contexts when ``oracle`` and samples are given; for an ensemble, of its default objective)."""
    if not cfg.data:
        raise ConfigError("--data is required (preferences, rankings or ratings)")
    records = read_records(cfg.data, cfg.feedback)
    if cfg.per_annotator:
        annotator_names(records)  # every record names its annotator, held-out ones too, before any training
    if cfg.attributes:  # the ratings of the attributes trained, each named attribute rated at least once
        kept, names = select_attributes(records, cfg.attributes, cfg.data)
        if len(kept) < len(records):
            print(f"reward: {len(records) - len(kept)} ratings not of {', '.join(names)} left out", file=sys.stderr)
        records = kept
    if cfg.feedback == "preference" and cfg.eval_data:
        train_records, heldout = records, read_records(cfg.eval_data, "preference")
    elif cfg.feedback == "preference":
        train_records, heldout = split_heldout(records, cfg.eval_fraction, cfg.seed)
    else:
        train_records, heldout = records, (read_records(cfg.eval_data, "preference") if cfg.eval_data else [])
    run_dir = reward_ensemble(cfg, train_records) if cfg.ensemble > 1 else _train_reward_model(cfg, train_records)
    source = load_reward_source(str(run_dir / "reward_model"))
    report = {}
    if heldout or samples_seen is not None:
        oracle_source = load_reward_source(oracle) if oracle else None
        report = reward_model_report(source, heldout, oracle_source, samples_seen, samples_unseen)
        report["train_records"], report["heldout_records"] = len(train_records), len(heldout)
        write_json(run_dir / "reward_report.json", report)
    return run_dir, report


def _train_reward_model(cfg: RewardConfig, records: list) -> Path:
    # One output per annotator or attribute, or (mu, log sigma^2), else one; a record without its group fails here.
    heads = training_manifest(cfg.per_annotator, cfg.distributional, records, cfg.attributes)
    model, tokenizer = load_reward_model(cfg.model, cfg.dtype, num_labels=num_outputs(heads))
    if heads is not None and heads["kind"] == "attribute":
        init_attribute_levels(model, records, heads)
    return train(cfg, RewardAlgorithm(cfg, model, tokenizer, records))


def _shared_trunk_ensemble(cfg: RewardConfig, records: list) -> Path:
    """``--ensemble K --ensemble_trunk shared``: one run of one model with K heads, head k initialised
    from ``member_seed(cfg.seed, k)`` (and trained on that member's resample under bootstrap, see
    :class:`RewardAlgorithm`); then each head's centring offset and the manifests, OUT/ensemble.json
    last (:mod:`rlhflab.rewards.ensemble`). ``--resume OUT`` resumes the run, or keeps its model if it finished."""
    out = Path(cfg.resume or cfg.output_dir or default_run_dir("reward"))
    seeds = [member_seed(cfg.seed, k) for k in range(cfg.ensemble)]
    if not (out / "reward_model").is_dir():
        model, tokenizer = load_reward_model(cfg.model, cfg.dtype, num_labels=cfg.ensemble)
        init_member_heads(model, seeds)
        resume = str(out) if cfg.resume and latest_checkpoint(out) else None
        train(replace(cfg, output_dir=str(out), resume=resume), RewardAlgorithm(cfg, model, tokenizer, records))
    heads = load_head_scores(out / "reward_model", cfg.ensemble)
    contexts, outputs = feedback_completions(records, cfg.feedback)
    # Regression on ratings fixes R_phi's level itself; preferences and rankings leave it free.
    offsets = [0.0] * cfg.ensemble
    if cfg.feedback != "rating" and outputs:
        offsets = heads(contexts, outputs).double().mean(-1).tolist()
    members = [{"head": k, "seed": s, "offset": b} for k, (s, b) in enumerate(zip(seeds, offsets))]
    info = {"feedback": cfg.feedback, "ensemble_data": cfg.ensemble_data, "centred_on": len(outputs)}
    for directory in (out / "reward_model", out):  # OUT/ensemble.json last: its presence means finished
        write_manifest(directory, members, cfg.ensemble_objective, model=out / "reward_model", **info)
    return out


def reward_ensemble(cfg: RewardConfig, records: list) -> Path:
    """K = ``cfg.ensemble`` reward models on ``records``, each a run of the one loop in
    ``OUT/member-KK`` with seed ``member_seed(cfg.seed, k)`` (and, with ``ensemble_data=bootstrap``,
    on its own resample of the records); then each member's centring offset and the manifests
    ``OUT/reward_model/ensemble.json`` and, last, ``OUT/ensemble.json`` (layout and centring:
    :mod:`rlhflab.rewards.ensemble`). ``--resume OUT`` keeps finished members and resumes the others from
    their checkpoints. Returns OUT. With ``ensemble_trunk=shared``: :func:`_shared_trunk_ensemble`."""
    if cfg.ensemble_trunk == "shared":
        return _shared_trunk_ensemble(cfg, records)
    out = Path(cfg.resume or cfg.output_dir or default_run_dir("reward"))
    if not cfg.resume:
        save_config(cfg, out / "config.yaml")
    contexts, outputs = feedback_completions(records, cfg.feedback)
    members = []
    for k in range(cfg.ensemble):
        seed, member_dir = member_seed(cfg.seed, k), out / f"member-{k:02d}"
        data = records
        if cfg.ensemble_data == "bootstrap":
            data = [records[i] for i in bootstrap_indices(len(records), seed)]
        if not (member_dir / "reward_model").is_dir():  # a finished member is kept as it is
            resume = str(member_dir) if latest_checkpoint(member_dir) else None
            member_cfg = replace(cfg, ensemble=1, seed=seed, output_dir=str(member_dir), resume=resume)
            torch.manual_seed(seed)  # the backbone's fresh scalar head is drawn from the global RNG
            _train_reward_model(member_cfg, data)
        # Regression on ratings fixes R_phi's level itself; preferences and rankings leave it free.
        member_source = load_reward_source(str(member_dir / "reward_model"))
        offset = 0.0 if cfg.feedback == "rating" else centring_offset(member_source, contexts, outputs)
        members.append(
            {"path": member_dir / "reward_model", "seed": seed, "offset": offset, "train_records": len(data)}
        )
    info = {"feedback": cfg.feedback, "ensemble_data": cfg.ensemble_data, "centred_on": len(outputs)}
    for directory in (out / "reward_model", out):  # OUT/ensemble.json last: its presence means finished
        write_manifest(directory, members, cfg.ensemble_objective, **info)
    return out


def policy_optimization(
    cfg: RLConfig, policy=None, tokenizer=None, reward_source=None, oracle_source=None, reference=None
) -> Path:
    """RL against ``cfg.reward``; the KL anchor is ``reference`` if given, else the initial policy."""
    if policy is None:
        policy, tokenizer = load_policy(cfg.policy, cfg.dtype)
    policy = apply_lora(policy, cfg)
    prompts = load_prompts(cfg.prompts, cfg.limit)
    reward_source = reward_source or load_reward_source(cfg.reward)
    if oracle_source is None and cfg.oracle:
        oracle_source = load_reward_source(cfg.oracle)
    ptx = None
    if cfg.ptx_coef > 0:
        demos = read_records(cfg.ptx_data, "demonstration")
        ptx = tokenize_demonstrations(
            [d.prompt for d in demos],
            [d.completion for d in demos],
            tokenizer,
            cfg,
            source=cfg.ptx_data,
            use_chat_template=cfg.use_chat_template,
        )
    algorithm = PolicyOptimization(cfg, policy, tokenizer, prompts, reward_source, oracle_source, ptx, reference)
    return train(cfg, algorithm)


# ---- eval --------------------------------------------------------------------------------------
@dataclass
class EvalConfig(SamplingOptions, PromptOptions, PolicyOptions):
    """Evaluate a policy on in-distribution and unseen prompts: J (oracle, Eq. 12), J_hat (reward
    model, Eq. 14), KL to a reference, length and diversity (Sections 4.3, 6.2)."""

    prompts: str = option("train", "In-distribution prompts: 'train' or a file.", aliases=["--seen_prompts"])
    limit: int = option(48, "Prompts per set (0: all).")
    unseen_prompts: str | None = option("unseen", "Unseen (out-of-distribution) prompts: 'unseen', a file, or none.")
    reference: str | None = option(None, "Reference policy for KL(pi || pi_ref) (none: KL not reported).")
    oracle: str | None = option("sentiment", "Oracle R* for J.")
    reward_model: str | None = option(
        None,
        "Reward model directory (or reward source) for J_hat. An ensemble (DIR[::objective]) also reports, "
        "per context set, how well its members' disagreement tracks its error against the oracle (uncertainty).",
    )
    num_samples: int = option(1, "Completions per prompt.")
    seed: int = option(0, "Random seed.")
    output: str | None = option(None, "Write the evaluation JSON here.")


def evaluate(
    cfg: EvalConfig, policy=None, tokenizer=None, reference=None, oracle_source=None, reward_source=None
) -> dict:
    if policy is None:
        policy, tokenizer = load_policy(cfg.policy)
    if reference is None and cfg.reference:
        reference, _ = load_policy(cfg.reference)
    oracle_source = oracle_source or (load_reward_source(cfg.oracle) if cfg.oracle else None)
    reward_source = reward_source or (load_reward_source(cfg.reward_model) if cfg.reward_model else None)
    sets = {"seen": cfg.prompts, "unseen": cfg.unseen_prompts}
    results = {}
    for name, spec in sets.items():
        if not spec:
            continue
        results[name] = evaluate_policy(
            policy,
            tokenizer,
            load_prompts(spec, cfg.limit),
            oracle_source,
            reward_source,
            reference=reference,
            num_samples=cfg.num_samples,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            use_chat_template=cfg.use_chat_template,
            seed=cfg.seed,
            batch_size=cfg.generation_batch_size,
            truncate=cfg.truncate,
        )
    ensemble = getattr(reward_source, "ensemble", None)
    if ensemble is not None and oracle_source is not None and results:
        samples = {name: (ev.contexts, ev.texts) for name, ev in results.items()}
        for name, entry in ensemble_uncertainty_report(ensemble, oracle_source, samples).items():
            results[name].uncertainty = entry
    if cfg.output:
        write_json(cfg.output, {k: v.to_dict() for k, v in results.items()})
    return results


# ---- direct preference and ranking methods -------------------------------------------------------
def _load_policy(cfg, policy, tokenizer):
    """The policy ``cfg`` names unless one is given, with LoRA adapters when ``cfg.lora_r > 0``."""
    if policy is None:
        policy, tokenizer = load_policy(cfg.policy, cfg.dtype)
    return apply_lora(policy, cfg), tokenizer


def _read(cfg, kind: str, what: str) -> list:
    if not cfg.data:
        raise ConfigError(f"--data is required ({what})")
    return read_records(cfg.data, kind)


def preference_optimization(cfg: PreferenceConfig, policy=None, tokenizer=None, records=None, reference=None) -> Path:
    """Train with a direct preference loss on ``cfg.data`` (or the given Preference records)."""
    records = records if records is not None else _read(cfg, "preference", "preferences: prompt, chosen, rejected")
    if policy is None and cfg.reference:
        reference = load_policy(cfg.reference, cfg.dtype)[0]
    policy, tokenizer = _load_policy(cfg, policy, tokenizer)
    return train_preferences(cfg, policy, tokenizer, records, reference, cfg.data or "<preferences>")


def ranking_optimization(cfg: RankingConfig, policy=None, tokenizer=None, records=None) -> Path:
    """Train with RRHF or PRO on ``cfg.data`` (or the given Ranking records)."""
    records = records if records is not None else _read(cfg, "ranking", "rankings: prompt, completions best first")
    policy, tokenizer = _load_policy(cfg, policy, tokenizer)
    return train_rankings(cfg, policy, tokenizer, records, cfg.data or "<rankings>")


def positive_sft(cfg: PositiveSFTConfig, policy=None, tokenizer=None, records=None) -> Path:
    """SFT on the chosen responses of ``cfg.data`` (or the given Preference records)."""
    records = records if records is not None else _read(cfg, "preference", "preferences: prompt, chosen, rejected")
    policy, tokenizer = _load_policy(cfg, policy, tokenizer)
    demos = chosen_demonstrations(records)
    examples = tokenize_demonstrations(
        [d.prompt for d in demos],
        [d.completion for d in demos],
        tokenizer,
        cfg,
        source=cfg.data or "<preferences>",
        use_chat_template=cfg.use_chat_template,
    )
    return train(cfg, SFTAlgorithm(cfg, policy, tokenizer, examples))


# ---- rejection sampling: RAFT and RSO --------------------------------------------------------------
def raft(cfg: RAFTConfig, policy=None, tokenizer=None, reward_source=None, oracle_source=None) -> Path:
    """Rounds of sample → keep the best by ``cfg.reward`` → SFT; returns the run directory."""
    policy, tokenizer = _load_policy(cfg, policy, tokenizer)
    reward_source = reward_source or load_reward_source(cfg.reward)
    if oracle_source is None and cfg.oracle:
        oracle_source = load_reward_source(cfg.oracle)
    return raft_rounds(cfg, policy, tokenizer, load_prompts(cfg.prompts, cfg.limit), reward_source, oracle_source)


def rso(cfg: RSOConfig, policy=None, tokenizer=None, reward_source=None) -> Path:
    """Statistical rejection sampling toward π*, then DPO or SLiC on the pairs; returns the run directory."""
    if policy is None:
        policy, tokenizer = load_policy(cfg.policy, cfg.dtype)
    reward_source = reward_source or load_reward_source(cfg.reward)
    return rso_train(cfg, policy, tokenizer, load_prompts(cfg.prompts, cfg.limit), reward_source)


# ---- learning from language: ILF and critique-and-revise ------------------------------------------
def ilf(cfg: ILFConfig, policy=None, tokenizer=None) -> tuple[Path, dict]:
    """Imitation learning from language feedback on ``cfg.data`` or simulated critiques (rlhflab.commands.language)."""
    records = read_records(cfg.data, "language_feedback") if cfg.data else None
    policy, tokenizer = _load_policy(cfg, policy, tokenizer)
    prompts = load_prompts(cfg.prompts, cfg.limit)
    return ilf_rounds(cfg, policy, tokenizer, prompts, load_reward_source(cfg.oracle), records)


def revise(cfg: ReviseConfig, policy=None, tokenizer=None) -> tuple[Path, dict]:
    """Critique and revise under a constitution, SFT on the revisions, pairs as preferences (rlhflab.commands.language)."""
    principles = load_constitution(cfg.constitution)
    policy, tokenizer = _load_policy(cfg, policy, tokenizer)
    oracle = load_reward_source(cfg.oracle) if cfg.oracle else None
    return revise_train(cfg, policy, tokenizer, load_prompts(cfg.prompts, cfg.limit), principles, oracle)


# ---- inference-time alignment: best-of-n and RAD ---------------------------------------------------
@dataclass
class DecodeConfig(PromptOptions, PolicyOptions):
    """Options of both inference-time methods (bon, rad)."""

    limit: int = option(16, "Use only the first N prompts (0: all).")
    reward: str = option(
        "sentiment", "Reward source that steers: a reward-model directory, an oracle name or package.module:function."
    )
    oracle: str | None = option(None, "Oracle R* also scored on the outputs (reported, never used to steer).")
    seed: int = option(0, "Random seed.")
    output: str = option("decoded.jsonl", "Output JSONL of (prompt, completion) rows.")


@dataclass
class BestOfNConfig(DecodeConfig, SamplingOptions):
    """Best-of-n: sample n completions per prompt, keep the one the reward source scores highest."""

    n: int = option(4, "Samples per prompt.")


@dataclass
class RADConfig(DecodeConfig):
    """Reward-augmented decoding: at every step the top-k next tokens are reweighted by the reward source."""

    reward_weight: float = option(
        1.0, "Weight of the reward added to the top-k logits (RAD's beta).", aliases=["--beta"]
    )
    top_k: int = option(10, "Next-token candidates scored per step.")
    max_new_tokens: int = option(32, "Maximum completion length in tokens.")


def _load_for_decoding(cfg: DecodeConfig):
    policy, tokenizer = load_policy(cfg.policy)
    oracle = load_reward_source(cfg.oracle) if cfg.oracle else None
    return policy, tokenizer, load_prompts(cfg.prompts, cfg.limit), load_reward_source(cfg.reward), oracle


def _write_outputs(cfg, prompts, completions) -> None:
    write_records([Demonstration(prompt=p.prompt, completion=c) for p, c in zip(prompts, completions)], cfg.output)


def bon(cfg: BestOfNConfig) -> dict:
    policy, tokenizer, prompts, reward, oracle = _load_for_decoding(cfg)
    bon = best_of_n(
        policy,
        tokenizer,
        prompts,
        reward,
        cfg.n,
        cfg.max_new_tokens,
        cfg.temperature,
        top_p=cfg.top_p,
        use_chat_template=cfg.use_chat_template,
        seed=cfg.seed,
        batch_size=cfg.generation_batch_size,
        truncate=cfg.truncate,
    )
    _write_outputs(cfg, prompts, bon.completions)
    summary = bon.summary()
    if oracle is not None:
        first = [c[0] for c in bon.all_completions]
        summary.update(
            oracle_chosen=float(oracle(bon.contexts, bon.completions).mean()),
            oracle_single_sample=float(oracle(bon.contexts, first).mean()),
        )
    return summary


def rad(cfg: RADConfig) -> dict:
    policy, tokenizer, prompts, reward, oracle = _load_for_decoding(cfg)
    out = rad_decode(
        policy,
        tokenizer,
        prompts,
        reward,
        cfg.reward_weight,
        cfg.top_k,
        cfg.max_new_tokens,
        cfg.use_chat_template,
        cfg.seed,
        truncate=cfg.truncate,
    )
    _write_outputs(cfg, prompts, out.completions)
    summary = {
        "prompts": len(prompts),
        "beta": cfg.reward_weight,
        "top_k": cfg.top_k,
        "reward_calls": out.reward_calls,
        "mean_reward": float(reward(out.contexts, out.completions).mean()),
    }
    if oracle is not None:
        summary["oracle"] = float(oracle(out.contexts, out.completions).mean())
    return summary
