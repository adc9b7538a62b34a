"""Learning from language (Sections 7.3.2, 7.8, 7.9.2): critiques, refinements, principles.

- **ILF**, imitation learning from language feedback (Scheurer et al. 2022, 2023; Section 7.9.2:
  "the initial model is conditioned on input, feedback, and output, generating multiple refinements.
  The model is then fine-tuned on refinements with the highest similarity to human feedback"):
  per record (prompt c, output o, critique f) the policy writes N refinements through
  :data:`REFINEMENT_TEMPLATE`; the one most consistent with f is kept, by cosine similarity of
  sentence embeddings (the MiniLM backbone, mean-pooled) or by a model judge asked which of
  refinement and original better follows f; SFT on (c, kept refinement); rounds of fresh feedback
  on the current policy when the critiques are simulated.
- **Critique and revise with principles** (Constitutional AI's supervised stage, Bai et al. 2022b;
  Kundu et al. 2023; Section 7.9.2: "a list of human-encoded principles (Constitution) guide the
  model to critique its generations and self-refine the responses. The model is then fine-tuned on
  the refined responses"): the policy answers, critiques its answer under a principle drawn from a
  YAML constitution, revises it; SFT on the revisions, and the (revised ≻ original) pairs written as
  a preference file for ``rlhflab reward`` / ``rlhflab dpo`` (feedback from AI instead of people).

Both measure J (Eq. 12) under the oracle before and after, on the same prompts and sampling seed,
with the paired difference; the oracle never selects or trains anything here.
"""

from __future__ import annotations

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
    default_run_dir,
    option,
    save_config,
)
from rlhflab.data.prompts import load_evaluation_sets
from rlhflab.data.readers import write_records
from rlhflab.data.records import Prompt
from rlhflab.data.render import encode_prompts, prompt_text, render_completion
from rlhflab.errors import ConfigError
from rlhflab.evaluation.metrics import PolicyEvaluation, evaluate_on_sets, paired_difference
from rlhflab.feedback.agreement import oracle_agreement
from rlhflab.feedback.annotators import SimulatedAnnotator, annotate_language_feedback
from rlhflab.feedback.judge import load_judge

# ---- templates -----------------------------------------------------------------------------------
from rlhflab.feedback.language import (
    DEFAULT_CONSTITUTION,
    FOLLOWS_FEEDBACK_QUESTION,
    Principle,
    SentenceEmbedder,
    clean_generation,
    conversation,
    critique_turns,
    refinement_prompt,
    revision_preferences,
    revision_turns,
    select_by_similarity,
)
from rlhflab.feedback.oracles import load_oracle
from rlhflab.files import append_jsonl, write_json, write_jsonl
from rlhflab.models.decoder_parts import context_length
from rlhflab.models.loading import save_model
from rlhflab.models.registry import DEFAULT_POLICY, DEFAULT_REWARD_BACKBONE
from rlhflab.sampling.rollout import sample
from rlhflab.seeds import derive_seed
from rlhflab.train.offline import tokenize_demonstrations
from rlhflab.train.rejection import train_round


# ---- shared pieces: sampling a batch of prompts, one round of SFT, J before and after --------------
def sample_completions(
    policy, tokenizer, prompts: list, cfg, num_samples: int, max_new_tokens: int, seed: int
) -> list[str]:
    """``num_samples`` completions of each prompt (strings or message lists), cleaned, in order."""
    ids = encode_prompts(
        tokenizer, prompts, cfg.use_chat_template, context_length(policy), max_new_tokens, truncate=cfg.truncate
    )
    torch.manual_seed(seed)
    rollout = sample(
        policy,
        tokenizer,
        ids,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        batch_size=cfg.generation_batch_size,
    )
    return [clean_generation(t) for t in rollout.completion_texts]


def sft_on(cfg, policy, tokenizer, prompts: list, completions: list[str], run_dir: Path, source: str) -> int:
    """One round of SFT (the one loop, :class:`~rlhflab.train.offline.SFTAlgorithm`) of ``policy``
    on (prompt, completion) pairs, completion-only loss; returns the number of examples."""
    examples = tokenize_demonstrations(prompts, completions, tokenizer, cfg, source, cfg.use_chat_template)
    train_round(cfg, policy, tokenizer, examples, run_dir)
    return len(examples)


@dataclass
class EvaluationOptions:
    """Where J (Eq. 12) is measured before and after training."""

    oracle: str = option("sentiment", "Oracle R* under which J is measured before and after (never used to train).")
    eval_prompts: str = option("train", "In-distribution prompts for J ('train' or a file).")
    eval_unseen_prompts: str | None = option("unseen", "Unseen prompts for J ('unseen', a file, or none).")
    eval_limit: int = option(24, "Prompts per evaluation set (0: all).")
    eval_samples: int = option(2, "Completions per evaluation prompt.")


def measure_j(cfg, policy, tokenizer, oracle_source) -> dict[str, PolicyEvaluation]:
    """J of ``policy`` on the seen and unseen evaluation prompts, sampled with the seed of ``cfg``
    (so before and after are paired by prompt and random stream)."""
    return evaluate_on_sets(
        policy,
        tokenizer,
        load_evaluation_sets(cfg.eval_prompts, cfg.eval_unseen_prompts, cfg.eval_limit),
        oracle=oracle_source,
        reward_model=None,
        num_samples=cfg.eval_samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        use_chat_template=cfg.use_chat_template,
        seed=derive_seed(cfg.seed, "evaluation"),
        batch_size=cfg.generation_batch_size,
        truncate=cfg.truncate,
    )


def measured_j(summary: dict) -> dict:
    """The after-training J of each prompt set of a :func:`before_after` summary, for the model card."""
    return {f"J on {name} prompts (oracle R*)": row["J_after"] for name, row in summary.items()}


def before_after(before: dict[str, PolicyEvaluation], after: dict[str, PolicyEvaluation]) -> dict:
    """{set: {J_before, J_before_se, J_after, J_after_se, delta_J, delta_J_se, n}}: ΔJ paired by prompt."""
    out = {}
    for name in before:
        delta, se = paired_difference(before[name], after[name])
        out[name] = {
            "J_before": before[name].J,
            "J_before_se": before[name].J_se,
            "J_after": after[name].J,
            "J_after_se": after[name].J_se,
            "delta_J": delta,
            "delta_J_se": se,
            "n": after[name].n,
        }
    return out


def _fresh_run_dir(cfg, command: str, marker: str) -> Path:
    run_dir = Path(cfg.output_dir or default_run_dir(command))
    if (run_dir / marker).exists():
        raise ConfigError(f"{run_dir}: holds a finished or partial {command} run ({marker}); choose a new --output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


# ---- ILF -----------------------------------------------------------------------------------------
@dataclass
class ILFConfig(EvaluationOptions, LoopOptions, DatasetOptions, SamplingOptions, PromptOptions, PolicyOptions):
    """Imitation learning from language feedback (Scheurer et al. 2022, 2023; Section 7.9.2): the
    policy refines its outputs given critiques, the refinement most consistent with the critique is
    kept, SFT on the kept refinements; rounds."""

    data: str | None = option(
        None,
        "Language feedback (prompt, completion, feedback[, correction]): JSONL, JSON, Parquet or a saved "
        "dataset, e.g. the app's critique export. Default: simulated critiques of the policy's own samples "
        "from --oracle, fresh every round.",
    )
    num_rounds: int = option(1, "Critique-refine-fine-tune rounds (more than 1 needs simulated feedback, no --data).")
    prompts_per_round: int = option(16, "Prompts whose samples are critiqued per round, a fresh subset each (0: all).")
    num_refinements: int = option(4, "Refinements the policy writes per critiqued output (N).")
    selection: str = option(
        "embedding",
        "How the kept refinement is chosen: embedding (cosine similarity to the critique, Scheurer et al. 2022) "
        "or judge (the --judge model asked whether it follows the critique better than the original).",
        choices=["embedding", "judge"],
    )
    embedder: str = option(DEFAULT_REWARD_BACKBONE, "Sentence-embedding encoder for --selection embedding.")
    judge: str = option(DEFAULT_POLICY, "Judge causal LM for --selection judge.")
    use_corrections: bool = option(
        True, "A record's own correction (a person's rewrite) is its target instead of any sampled refinement."
    )
    rating_noise: float = option(0.1, "Std of the noise on R* that picks the simulated critique's tone.")
    num_epochs: float = option(2.0, "SFT passes over each round's kept refinements.")
    learning_rate: float = option(2e-5, "Peak learning rate of AdamW (the optimiser restarts every round).")

    def validate(self):
        LoopOptions.validate(self)
        DatasetOptions.validate(self)
        if self.num_rounds < 1 or self.num_refinements < 1:
            raise ConfigError("num_rounds and num_refinements must be at least 1")
        if self.data and self.num_rounds > 1:
            raise ConfigError("--num_rounds > 1 needs fresh feedback on the current policy: drop --data to simulate it")


def simulated_feedback(cfg: ILFConfig, policy, tokenizer, prompts: list[Prompt], round_: int) -> list:
    """One sample of the current policy per prompt, critiqued by a simulated annotator whose
    critiques quote what lowers R* (:func:`~rlhflab.feedback.annotators.oracle_critique`)."""
    outputs = sample_completions(
        policy, tokenizer, prompts, cfg, 1, cfg.max_new_tokens, derive_seed(cfg.seed, "ilf outputs", round_)
    )
    annotator = SimulatedAnnotator("simulated", load_oracle(cfg.oracle), rating_noise=cfg.rating_noise)
    keep = [i for i, o in enumerate(outputs) if o.strip()]
    rng = np.random.default_rng(derive_seed(cfg.seed, "ilf critiques", round_))
    return annotate_language_feedback(annotator, [prompts[i].prompt for i in keep], [[outputs[i]] for i in keep], rng)


def choose_refinements(cfg: ILFConfig, records: list, refinements: list[list[str]], embedder=None, judge=None):
    """Index of the kept refinement of each record (−1: none usable) and its selection score.
    A refinement is usable when it is not empty and not the original output again."""
    valid = torch.tensor(
        [
            [bool(x.strip()) and x.strip() != render_completion(r.completion).strip() for x in xs]
            for r, xs in zip(records, refinements)
        ]
    )
    if cfg.selection == "embedding":
        n = len(refinements[0])
        feedback = embedder([r.feedback for r in records])
        candidates = embedder([x if x.strip() else " " for xs in refinements for x in xs]).view(len(records), n, -1)
        return select_by_similarity(feedback, candidates, valid)
    contexts, outputs, originals, questions = [], [], [], []
    for r, xs in zip(records, refinements):
        for x in xs:
            contexts.append(r.prompt)
            outputs.append(x if x.strip() else " ")
            originals.append(r.completion)
            questions.append(FOLLOWS_FEEDBACK_QUESTION.format(feedback=r.feedback))
    scores = judge.compare(contexts, outputs, originals, questions).preference.view(len(records), -1)
    scores = scores.masked_fill(~valid, float("-inf"))
    best, index = scores.max(dim=-1)
    return torch.where(valid.any(-1), index, torch.full_like(index, -1)), best


def ilf_rounds(
    cfg: ILFConfig, policy, tokenizer, prompts: list[Prompt], oracle_source, records: list | None = None
) -> tuple[Path, dict]:
    """The ILF rounds on ``policy`` (LoRA already applied, if any): per round, feedback (``records``
    in round 0, else simulated on fresh samples), N refinements per record, the selection, SFT.
    Writes ``round-K/refinements.jsonl``, ``rounds.jsonl``, ``evaluation.json`` (J before and after)
    and the final ``policy``; returns (run directory, the before/after summary)."""
    run_dir = _fresh_run_dir(cfg, "ilf", "rounds.jsonl")
    embedder = SentenceEmbedder(cfg.embedder) if cfg.selection == "embedding" else None
    judge = load_judge(cfg.judge) if cfg.selection == "judge" else None
    before = measure_j(cfg, policy, tokenizer, oracle_source)
    per_round = cfg.prompts_per_round or len(prompts)
    for r in range(cfg.num_rounds):
        t0 = time.perf_counter()
        if records is not None and r == 0:
            round_records = records
        else:
            order = torch.Generator().manual_seed(derive_seed(cfg.seed, "ilf round prompts", r))
            chosen = torch.randperm(len(prompts), generator=order)[:per_round].tolist()
            round_records = simulated_feedback(cfg, policy, tokenizer, [prompts[i] for i in chosen], r)
        if not round_records:
            raise ConfigError(f"round {r}: no output to critique (every sample was empty); raise --max_new_tokens")
        inputs = [refinement_prompt(x.prompt, x.completion, x.feedback) for x in round_records]
        flat = sample_completions(
            policy,
            tokenizer,
            inputs,
            cfg,
            cfg.num_refinements,
            cfg.max_new_tokens,
            derive_seed(cfg.seed, "ilf refinements", r),
        )
        n = cfg.num_refinements
        refinements = [flat[i * n : (i + 1) * n] for i in range(len(round_records))]
        index, score = choose_refinements(cfg, round_records, refinements, embedder, judge)
        rows, kept_prompts, kept = [], [], []
        for x, xs, j, s in zip(round_records, refinements, index.tolist(), score.tolist()):
            target = None
            if cfg.use_corrections and getattr(x, "correction", None) is not None:
                target = render_completion(x.correction)
            elif j >= 0:
                target = xs[j]
            rows.append({**x.to_dict(), "refinements": xs, "kept": target, "score": s if j >= 0 else None})
            if target is not None:
                kept_prompts.append(x.prompt)
                kept.append(target)
        write_jsonl(run_dir / f"round-{r}" / "refinements.jsonl", rows)
        if not kept:
            raise ConfigError(f"round {r}: no usable refinement (all empty or equal to the original output)")
        sft_on(cfg, policy, tokenizer, kept_prompts, kept, run_dir / f"round-{r}", f"<ilf round {r}>")
        contexts = [prompt_text(p) for p in kept_prompts]
        originals = [render_completion(x.completion) for x, row in zip(round_records, rows) if row["kept"] is not None]
        row = {
            "round": r,
            "records": len(round_records),
            "kept": len(kept),
            "selection_score_kept": float(np.mean([s for s in score.tolist() if s != float("-inf")] or [0.0])),
            "oracle_original": float(oracle_source(contexts, originals).mean()),
            "oracle_kept": float(oracle_source(contexts, kept).mean()),
            "seconds": time.perf_counter() - t0,
        }
        append_jsonl(run_dir / "rounds.jsonl", row)
    summary = before_after(before, measure_j(cfg, policy, tokenizer, oracle_source))
    write_json(run_dir / "evaluation.json", summary)
    save_model(policy, tokenizer, str(run_dir / "policy"), method="ilf", config=cfg, results=measured_j(summary))
    return run_dir, summary


# ---- critique and revise with principles ------------------------------------------------------------
@dataclass
class ReviseConfig(EvaluationOptions, LoopOptions, DatasetOptions, SamplingOptions, PromptOptions, PolicyOptions):
    """Critique and revise with principles (Constitutional AI's supervised stage, Bai et al. 2022b;
    Section 7.9.2): the policy critiques its own sample under a drawn principle, revises it; SFT on
    the revisions; (revised, original) pairs written as preferences."""

    constitution: str = option(DEFAULT_CONSTITUTION, "YAML constitution ('default': the shipped one).")
    limit: int = option(16, "Prompts whose answers are critiqued and revised (0: all).")
    num_revisions: int = option(1, "Critique-revision passes per answer, each under a freshly drawn principle.")
    critique_max_new_tokens: int = option(48, "Maximum length of a critique in tokens.")
    preferences_output: str | None = option(
        None, "Where the (revised ≻ original) pairs go (default: RUN_DIR/revise_preferences.jsonl)."
    )
    train: bool = option(True, "SFT the policy on the revisions (False: only write revisions and pairs).")
    num_epochs: float = option(2.0, "SFT passes over the revisions.")
    learning_rate: float = option(2e-5, "Peak learning rate of AdamW.")

    def validate(self):
        LoopOptions.validate(self)
        DatasetOptions.validate(self)
        if self.num_revisions < 1:
            raise ConfigError("num_revisions must be at least 1")


def critique_and_revise(
    cfg: ReviseConfig, policy, tokenizer, prompts: list[Prompt], principles: list[Principle]
) -> list[dict]:
    """Per prompt: the policy's answer, then ``num_revisions`` passes of (principle drawn uniformly,
    critique, revision). A pass whose revision comes out empty keeps the answer it was given.
    Rows {prompt, original, passes: [{principle, critique, revision}], revision}."""
    answers = sample_completions(
        policy, tokenizer, prompts, cfg, 1, cfg.max_new_tokens, derive_seed(cfg.seed, "revise answers")
    )
    rng = np.random.default_rng(derive_seed(cfg.seed, "revise principles"))
    rows = [{"prompt": p.prompt, "original": a, "passes": [], "revision": a} for p, a in zip(prompts, answers)]
    for k in range(cfg.num_revisions):
        drawn = [principles[int(i)] for i in rng.integers(len(principles), size=len(rows))]
        critiques = sample_completions(
            policy,
            tokenizer,
            [
                conversation(critique_turns(r["prompt"], r["revision"], p), tokenizer, cfg.use_chat_template)
                for r, p in zip(rows, drawn)
            ],
            cfg,
            1,
            cfg.critique_max_new_tokens,
            derive_seed(cfg.seed, "revise critiques", k),
        )
        revisions = sample_completions(
            policy,
            tokenizer,
            [
                conversation(revision_turns(r["prompt"], r["revision"], p, c), tokenizer, cfg.use_chat_template)
                for r, p, c in zip(rows, drawn, critiques)
            ],
            cfg,
            1,
            cfg.max_new_tokens,
            derive_seed(cfg.seed, "revise revisions", k),
        )
        for row, p, c, v in zip(rows, drawn, critiques, revisions):
            row["passes"].append({"principle": p.name, "critique": c, "revision": v})
            if v.strip():
                row["revision"] = v
    return rows


def revise_train(
    cfg: ReviseConfig, policy, tokenizer, prompts: list[Prompt], principles: list[Principle], oracle_source
) -> tuple[Path, dict]:
    """Critique and revise, write ``revisions.jsonl`` and the preference file, SFT on the revisions
    (``cfg.train``; the loop's metrics in ``sft/``), and measure J before and after. The pairs' agreement with R*, how often the
    AI's revision is the output the oracle prefers, goes into ``evaluation.json`` with J."""
    run_dir = _fresh_run_dir(cfg, "revise", "revisions.jsonl")
    before = measure_j(cfg, policy, tokenizer, oracle_source) if cfg.train else None
    rows = critique_and_revise(cfg, policy, tokenizer, prompts, principles)
    write_jsonl(run_dir / "revisions.jsonl", rows)
    pairs = revision_preferences(rows)
    if not pairs:
        raise ConfigError("no revision differs from its original answer; nothing to learn from")
    preferences = Path(cfg.preferences_output or run_dir / "revise_preferences.jsonl")
    write_records(pairs, preferences)
    oracle = oracle_source.name if oracle_source is not None else None
    summary: dict = {"pairs": len(pairs), "preferences": str(preferences), "oracle": oracle}
    if oracle_source is not None:
        summary["pairs_agreement_with_oracle"] = oracle_agreement(pairs, lambda c, o: float(oracle_source([c], [o])[0]))
    if cfg.train:
        sft_prompts, revisions = [p.prompt for p in pairs], [p.chosen for p in pairs]
        sft_on(cfg, policy, tokenizer, sft_prompts, revisions, run_dir / "sft", "<revisions>")
        summary["J"] = before_after(before, measure_j(cfg, policy, tokenizer, oracle_source))
        save_model(
            policy, tokenizer, str(run_dir / "policy"), method="revise", config=cfg, results=measured_j(summary["J"])
        )
    write_json(run_dir / "evaluation.json", summary)
    return run_dir, summary


def format_before_after(summary: dict) -> str:
    """One line per context set: J before → after, ΔJ ± its standard error (paired by prompt)."""
    lines = []
    for name, s in summary.items():
        se = f" ± {s['delta_J_se']:.3f}" if s["delta_J_se"] is not None else ""
        lines.append(
            f"J {name}: {s['J_before']:.3f} -> {s['J_after']:.3f}  (ΔJ = {s['delta_J']:+.3f}{se}, n = {s['n']})"
        )
    return "\n".join(lines)
