"""The training commands: ``sft``, ``reward``, the RL commands (``ppo``, ``a2c``, ``reinforce``, ``rloo``,
``grpo``), the direct preference and ranking methods (``dpo``, ``ipo``, ``slic``, ``rrhf``, ``pro``), ``kto`` on
unpaired good / bad labels,
``sft-positive``, and rejection sampling (``raft``, ``rso``). Each reads what its config names, builds
the method's algorithm and runs it on the one loop (:func:`rlhflab.train.loop.train`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhflab.config import load_yaml
from rlhflab.data import Preference, Rating, dataset_type, load_prompts, read_records, read_rows, record_type
from rlhflab.data.trl_types import PREFERENCE, PROMPT_COMPLETION, TAKEN_BY
from rlhflab.errors import ConfigError, DataError
from rlhflab.evaluation.metrics import reward_model_report
from rlhflab.files import write_json
from rlhflab.models import load_policy, load_reward_model, load_trainable_policy
from rlhflab.rewards.heads import (
    annotator_names,
    select_attributes,
)
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.loop import train
from rlhflab.train.offline import SFTAlgorithm, SFTConfig, demonstration_examples
from rlhflab.train.policy_optimization import PolicyOptimization, RLConfig
from rlhflab.train.preference import (
    KTO_DATA,
    KTOConfig,
    PreferenceConfig,
    RankingConfig,
    train_kto,
    train_preferences,
    train_rankings,
    unpair,
    unpaired_labels,
)
from rlhflab.train.rejection import (
    PositiveSFTConfig,
    RAFTConfig,
    RSOConfig,
    raft_rounds,
    rso_train,
    train_positive_sft,
)
from rlhflab.train.reward_model import RewardConfig, split_heldout, train_reward_ensemble, train_reward_model


def run_sft(cfg: SFTConfig, policy=None, tokenizer=None, records=None) -> Path:
    """Supervised fine-tuning on ``cfg.data`` (or the given Demonstration records)."""
    demos = _read(cfg, "demonstration", "demonstrations: prompt, completion", records)
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    examples = demonstration_examples(demos, tokenizer, cfg, cfg.data or "<demonstrations>")
    return train(cfg, SFTAlgorithm(cfg, policy, tokenizer, examples))


def run_reward(
    cfg: RewardConfig, oracle: str | None = None, samples_seen=None, samples_unseen=None
) -> tuple[Path, dict]:
    """Train a reward model (``cfg.ensemble`` > 1: an ensemble of them, see
    :func:`rlhflab.train.reward_model.train_reward_ensemble`) and write ``reward_report.json`` (accuracy, calibration, oracle correlation on seen/unseen
    contexts when ``oracle`` and samples are given; for an ensemble, of its default objective)."""
    records = _read(cfg, cfg.feedback, "preferences, rankings or ratings")
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
    run_dir = train_reward_ensemble(cfg, train_records) if cfg.ensemble > 1 else train_reward_model(cfg, train_records)
    source = load_reward_source(str(run_dir / "reward_model"))
    report = {}
    if heldout or samples_seen is not None:
        oracle_source = load_reward_source(oracle) if oracle else None
        report = reward_model_report(source, heldout, oracle_source, samples_seen, samples_unseen)
        report["train_records"], report["heldout_records"] = len(train_records), len(heldout)
        write_json(run_dir / "reward_report.json", report)
    return run_dir, report


def run_policy_optimization(
    cfg: RLConfig, policy=None, tokenizer=None, reward_source=None, oracle_source=None, reference=None, should_stop=None
) -> Path:
    """RL against ``cfg.reward``; the KL anchor is ``reference`` if given, else the initial policy.
    ``should_stop(iteration)``: the loop's after-iteration hook (:func:`rlhflab.train.loop.train`)."""
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    prompts = load_prompts(cfg.prompts, cfg.limit)
    reward_source = reward_source or load_reward_source(cfg.reward, template=cfg.reward_template)
    if oracle_source is None and cfg.oracle:
        oracle_source = load_reward_source(cfg.oracle)
    ptx = None
    if cfg.ptx_coef > 0:
        ptx = demonstration_examples(read_records(cfg.ptx_data, "demonstration"), tokenizer, cfg, cfg.ptx_data)
    algorithm = PolicyOptimization(cfg, policy, tokenizer, prompts, reward_source, oracle_source, ptx, reference)
    return train(cfg, algorithm, should_stop=should_stop)


def _read(cfg, kind: str, what: str, records=None) -> list:
    """The records a run trains on: ``records`` if given — record objects as they are, or any source
    :func:`rlhflab.data.read_records` reads (a list of dicts, a ``datasets.Dataset``, a path) — else
    ``cfg.data``'s. A ``cfg.data`` that is a dataset object rather than a path is read, then replaced
    in ``cfg`` by a description of it, so that the run's config.yaml can still be written."""
    if records is not None:
        cls = record_type(kind)
        if isinstance(records, list) and records and all(isinstance(r, cls) for r in records):
            return records
        return read_records(records, kind, getattr(cfg, "format", None))
    if not cfg.data:
        raise ConfigError(f"--data is required ({what})")
    if isinstance(cfg.data, (str, os.PathLike)):
        return read_records(cfg.data, kind, getattr(cfg, "format", None))
    records = read_records(cfg.data, kind, getattr(cfg, "format", None))
    cfg.data = f"<{type(cfg.data).__name__} of {len(records)} rows>"
    return records


def run_preference_optimization(
    cfg: PreferenceConfig, policy=None, tokenizer=None, records=None, reference=None, should_stop=None
) -> Path:
    """Train with a direct preference loss on ``cfg.data`` (or the given Preference records);
    ``should_stop(iteration)``: the loop's after-step hook."""
    records = _read(cfg, "preference", "preferences: prompt, chosen, rejected", records)
    if policy is None and cfg.reference:
        reference = load_policy(cfg.reference, cfg.dtype)[0]
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    return train_preferences(cfg, policy, tokenizer, records, reference, cfg.data or "<preferences>", should_stop)


def _unpaired_records(cfg: KTOConfig, records=None) -> list:
    """KTO's examples: binary ratings (TRL's unpaired rows, the app's binary export) as they are, or
    preference pairs unpaired as TRL's KTOTrainer unpairs them (said in one line)."""
    source = records if records is not None else cfg.data
    if isinstance(source, list) and source and all(isinstance(r, Preference) for r in source):
        pairs = source
    elif source is not None and not (isinstance(source, list) and source and isinstance(source[0], Rating)):
        name, rows = ("<list>", source) if isinstance(source, list) else read_rows(source)
        kind = dataset_type(rows)
        first = rows[0][1] if rows and isinstance(rows[0], tuple) else (rows[0] if rows else {})
        if kind == PROMPT_COMPLETION and isinstance(first, dict) and "score" not in first:
            raise DataError(
                name,
                1,
                None,
                f"rows are TRL's prompt-completion type, with no good / bad label for kto; {TAKEN_BY[kind]}",
            )
        if kind != PREFERENCE:
            return _read(cfg, "rating", KTO_DATA, records)
        pairs = _read(cfg, "preference", KTO_DATA, records)
    else:
        return _read(cfg, "rating", KTO_DATA, records)
    print(
        f"kto: {len(pairs)} preference pairs read as {2 * len(pairs)} unpaired examples "
        "(chosen desirable, rejected undesirable, as TRL's KTOTrainer does)",
        file=sys.stderr,
    )
    return unpair(pairs)


def run_kto(cfg: KTOConfig, policy=None, tokenizer=None, records=None, reference=None, should_stop=None) -> Path:
    """Train with KTO on ``cfg.data`` (or the given binary Rating records): unpaired good / bad
    feedback, as TRL's unpaired-preference rows or the feedback app's binary-task export.
    ``should_stop(iteration)``: the loop's after-step hook."""
    records = _unpaired_records(cfg, records)
    unpaired_labels(records, cfg.data or "<feedback>")  # every row a good / bad verdict, before any loading
    if policy is None and cfg.reference:
        reference = load_policy(cfg.reference, cfg.dtype)[0]
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    return train_kto(cfg, policy, tokenizer, records, reference, cfg.data or "<feedback>", should_stop)


def run_ranking_optimization(cfg: RankingConfig, policy=None, tokenizer=None, records=None) -> Path:
    """Train with RRHF or PRO on ``cfg.data`` (or the given Ranking records)."""
    records = _read(cfg, "ranking", "rankings: prompt, completions best first", records)
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    return train_rankings(cfg, policy, tokenizer, records, cfg.data or "<rankings>")


def run_positive_sft(cfg: PositiveSFTConfig, policy=None, tokenizer=None, records=None) -> Path:
    """SFT on the chosen responses of ``cfg.data`` (or the given Preference records)."""
    records = _read(cfg, "preference", "preferences: prompt, chosen, rejected", records)
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    return train_positive_sft(cfg, policy, tokenizer, records)


def run_raft(
    cfg: RAFTConfig, policy=None, tokenizer=None, reward_source=None, oracle_source=None, after_round=None
) -> Path:
    """Rounds of sample → keep the best by ``cfg.reward`` → SFT; returns the run directory.
    ``after_round(r)``: called after round ``r``'s fine-tuning (an evaluation hook)."""
    policy, tokenizer = load_trainable_policy(cfg, policy, tokenizer)
    reward_source = reward_source or load_reward_source(cfg.reward, template=cfg.reward_template)
    if oracle_source is None and cfg.oracle:
        oracle_source = load_reward_source(cfg.oracle)
    prompts = load_prompts(cfg.prompts, cfg.limit)
    return raft_rounds(cfg, policy, tokenizer, prompts, reward_source, oracle_source, after_round)


def run_rso(cfg: RSOConfig, policy=None, tokenizer=None, reward_source=None) -> Path:
    """Statistical rejection sampling toward π*, then DPO or SLiC on the pairs; returns the run directory."""
    if policy is None:  # LoRA, if asked, after sampling (rso_train)
        policy, tokenizer = load_policy(cfg.policy, cfg.dtype)
    reward_source = reward_source or load_reward_source(cfg.reward, template=cfg.reward_template)
    return rso_train(cfg, policy, tokenizer, load_prompts(cfg.prompts, cfg.limit), reward_source)


@dataclass
class Run:
    """A finished run as a notebook wants it: its directory, the trained model and tokenizer, the
    metrics it logged (one dict per logged iteration) and the options it ran with."""

    dir: Path
    model: object
    tokenizer: object
    metrics: list[dict]
    config: dict


def load_run(run_dir: str | os.PathLike) -> Run:
    """The :class:`Run` in ``run_dir`` (what every ``run_*`` function returns the directory of): its
    ``policy`` or ``reward_model``, ``metrics.jsonl`` and ``config.yaml``."""
    run_dir = Path(run_dir)
    if (run_dir / "policy").is_dir():
        model, tokenizer = load_policy(str(run_dir / "policy"))
    elif (run_dir / "reward_model").is_dir():
        model, tokenizer = load_reward_model(str(run_dir / "reward_model"))
    else:
        raise ConfigError(f"{run_dir}: no trained model (policy/ or reward_model/) in this directory")
    path = run_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    config = load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    return Run(run_dir, model, tokenizer, metrics, config)
