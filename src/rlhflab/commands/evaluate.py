"""``rlhflab eval``: J (R*), Ĵ (R_phi), KL to a reference, length and diversity of one policy on seen
and unseen prompts (Sections 4.3, 6.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhflab.config import (
    PolicyOptions,
    PrecisionOption,
    PromptOptions,
    SamplingOptions,
    option,
    reward_template_option,
)
from rlhflab.data import load_evaluation_sets
from rlhflab.evaluation.metrics import ensemble_uncertainty_report, evaluate_on_sets
from rlhflab.files import write_json
from rlhflab.hardware import model_autocast
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source


@dataclass
class EvalConfig(PrecisionOption, SamplingOptions, PromptOptions, PolicyOptions):
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
    reward_template: str = reward_template_option()
    num_samples: int = option(1, "Completions per prompt.")
    seed: int = option(0, "Random seed.")
    output: str | None = option(None, "Write the evaluation JSON here.")


def run_eval(
    cfg: EvalConfig, policy=None, tokenizer=None, reference=None, oracle_source=None, reward_source=None
) -> dict:
    if policy is None:
        policy, tokenizer = load_policy(cfg.policy)
    if reference is None and cfg.reference:
        reference, _ = load_policy(cfg.reference)
    oracle_source = oracle_source or (load_reward_source(cfg.oracle) if cfg.oracle else None)
    reward_source = reward_source or (
        load_reward_source(cfg.reward_model, template=cfg.reward_template) if cfg.reward_model else None
    )
    with model_autocast(cfg.mixed_precision, policy):
        results = evaluate_on_sets(
            policy,
            tokenizer,
            load_evaluation_sets(cfg.prompts, cfg.unseen_prompts, cfg.limit),
            oracle=oracle_source,
            reward_model=reward_source,
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
    ensemble = reward_source.ensemble if reward_source is not None else None
    if ensemble is not None and oracle_source is not None and results:
        samples = {name: (ev.contexts, ev.texts) for name, ev in results.items()}
        for name, entry in ensemble_uncertainty_report(ensemble, oracle_source, samples).items():
            results[name].uncertainty = entry
    if cfg.output:
        write_json(cfg.output, {k: v.to_dict() for k, v in results.items()})
    return results
