"""The trainers of ``rlhflab.train`` verified against the closed form of Eq. 17.

Each trainer runs *unchanged*, through ``rlhflab.train.loop.train``, on the toy MDP's tiny HF GPT-2:
the policy samples token strings, a :class:`~rlhflab.rewards.registry.RewardSource` scores the decoded text
with R* (looked up in the instance's table), and the trained model's exact output table (batched
enumeration) is scored by :func:`~rlhflab.toy.exact.evaluate_model_against_optimum`. The bar is the
fraction of the gap between π_ref's objective J − β·KL and the optimum β·Σ_c d_C(c)·log Z(c) (Eq. 17)
that the trained policy closes; since obj(π*) − obj(π) = β·E_{d_C} KL(π‖π*), it is a KL to π*.

How d_C enters. The objective is Σ_c d_C(c)·(E_π[R*(c,·)] − β·KL(π(·|c)‖π_ref(·|c))): a sum of
per-context terms, each maximised by the same π*(·|c) ∝ π_ref·exp(R*/β) whatever weight d_C(c) it
carries. The policy-gradient trainers therefore enumerate the contexts evenly — every context once
per iteration (``prompts_per_iteration`` = number of contexts), each with ``samples_per_prompt``
rollouts — which has exactly the same maximiser; d_C only weights the *evaluation*, as in the exact
objective. (Weighting the reward by C·d_C(c) would be wrong: it scales R* but not the KL penalty the
trainer adds, i.e. it changes β per context and so moves the optimum.)

DPO gets Bradley-Terry preferences labelled from R*, without label *sampling* noise: per context,
every unordered pair {o, o'} of distinct outputs appears once, as a soft label — chosen ≻ rejected
with probability p = σ((R*(c,chosen) − R*(c,rejected)) / T), T = 1 — through the DPO loss's per-pair
label smoothing ε = 1 − p (the DPO loss with smoothing ε is exactly the cross-entropy against soft
label 1 − ε). Equivalently: the pair appears with label o ≻ o' in proportion σ(R*(o) − R*(o')) and
o' ≻ o in proportion 1 − σ, so the empirical label frequencies *equal* the BT probabilities (expected-
count labelling with infinitely many annotators). Each pair's term is minimised at
β·(log π/π_ref(o) − log π/π_ref(o')) = R*(o) − R*(o'); with all pairs of a context present these
pin every log-ratio up to one constant per context, i.e. β·log π/π_ref = R* − β·log Z(c):
**with DPO β = the KL coefficient β and BT temperature 1, the population (here: exact) minimiser of
the DPO loss is π*_β ∝ π_ref·exp(R*/β) (Eq. 17)** — the same target as the policy-gradient trainers.
The pair weighting (uniform over all O(O−1)/2 pairs per context, every context equally) does not move
that minimiser, which is why the pairs need not be drawn from π_ref; it only conditions the
optimisation. Sampled binary labels (o_1, o_2 ~ π_ref, one Bradley-Terry coin flip each) are
unbiased but noisy — a free table fit to them needs ~16k pairs per context for 98.5% — and left DPO
at ~0.34 of the gap on the full instance (1000 pairs per context, and a learning rate of 1e-2 that
is itself too high here); ``preference_pairs(..., labels="sampled")`` keeps them for comparison.

GRPO is measured, not asserted: its rewards are standardised per group (÷ the group's std, unless
``scale_by_std=False``, Dr. GRPO) and its KL is k3 per token in the loss, so its fixed point is not
π*_β. The report gives the gap it closes and where (J, KL) it lands against the π*_β' frontier.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhflab.data.records import Prompt
from rlhflab.rewards.registry import RewardSource
from rlhflab.seeds import derive_seed
from rlhflab.toy.exact import (
    evaluate_model_against_optimum,
    kl_divergence,
    kl_regularised_optimum,
    performance,
)
from rlhflab.toy.mdp import ToyInstance, _ids, build_lab, content
from rlhflab.train.loop import train
from rlhflab.train.policy_optimization import PolicyOptimization, RLConfig
from rlhflab.train.preference import PreferenceAlgorithm, PreferenceConfig

DEFAULT_BETA = 0.25
POLICY_GRADIENT = ("ppo", "a2c", "reinforce", "rloo")


# ---------------------------------------------------------------------------------------------
# Instances.

REDUCED = {"tokens": ("a", "b", "c"), "horizon": 2}


def reduced_lab(seed: int = 0, steps: int = 150):
    """The test instance: 3 tokens, 2-token contexts, horizon 2 (9 contexts × 13 outputs), π_ref
    pre-trained on it. Returns (instance with π_ref table, π_ref model, tokenizer)."""
    return build_lab(seed, steps=steps, **REDUCED)


# ---------------------------------------------------------------------------------------------
# R* as a reward source over decoded text.


def output_index(instance: ToyInstance) -> dict[tuple[str, ...], int]:
    """Content tokens -> output column. The content determines the output: an output with fewer than
    ``horizon`` content tokens ended with the end token (which decoding drops as a special token), one
    with exactly ``horizon`` was cut."""
    return {content(o): j for j, o in enumerate(instance.outputs)}


def oracle_reward_source(instance: ToyInstance, reward: torch.Tensor | None = None) -> RewardSource:
    """R*(c, o) (or any (C, O) table) as a :class:`RewardSource` over the text the trainers see:
    contexts are the prompts' text ("a b"), outputs the decoded completions ("c a", "" for an
    immediate end token)."""
    table = instance.oracle_reward if reward is None else torch.as_tensor(reward, dtype=torch.float64)
    ctx = {instance.context_text(i): i for i in range(instance.num_contexts)}
    out = output_index(instance)

    def score(contexts, outputs):
        rows = [ctx[c] for c in contexts]
        cols = [out[tuple(o.split())] for o in outputs]
        return table[rows, cols].float()

    return RewardSource("toy R*", score)


def context_prompts(instance: ToyInstance) -> list[Prompt]:
    return [Prompt(prompt=instance.context_text(i)) for i in range(instance.num_contexts)]


# ---------------------------------------------------------------------------------------------
# Settings per trainer: public config knobs only.


@dataclass
class TrainerSettings:
    """One trainer's RLConfig (or PreferenceConfig) overrides and, for DPO, its data size."""

    algorithm: str
    overrides: dict = field(default_factory=dict)
    label: str | None = None
    dpo_labels: str = "expected"  # DPO only: "expected" (soft BT labels, all pairs) or "sampled"
    pairs_per_context: int = 0  # DPO with sampled labels only

    @property
    def name(self) -> str:
        return self.label or self.algorithm


def default_settings(
    num_iterations: int = 300, samples_per_prompt: int = 32, dpo_steps: int = 2000, dpo_batch_size: int = 256
) -> list[TrainerSettings]:
    """The tuned knobs. Shared: temperature 1 (samples from π itself), KL k1 per token in the reward,
    the learning rate decayed linearly to 0 so the last iterations average out the sampling noise
    around the optimum (obj(π*) − obj(π) = β·KL(π‖π*) must fall under 2% of the gap).

    PPO and A2C use GAE λ = 1: the advantage is then the Monte-Carlo return (R* − β·k1 summed over the
    remaining tokens) minus the critic's V(s_t) — a baseline, so the fixed point is π*_β whatever the
    critic's error. With λ = 0.95 the advantage bootstraps from V and a still-imperfect critic biases
    the fixed point (full instance: PPO 0.90, A2C 0.97 of the gap at λ = 0.95; see the report). A2C
    (one plain step per rollout) gets a third more iterations than REINFORCE: its whitened advantages
    make its steps noisier early on.

    DPO: all output pairs with soft BT labels (``preference_pairs``), learning rate 5e-3 (1e-2 is
    unstable on the tiny GPT-2: 0.67–0.92 of the gap depending on batch size), ``dpo_steps`` optimiser
    steps of ``dpo_batch_size`` pairs."""
    common = {
        "num_iterations": num_iterations,
        "samples_per_prompt": samples_per_prompt,
        "lr_scheduler": "linear",
        "temperature": 1.0,
        "kl_estimator": "k1",
        "learning_rate": 1e-2,
    }
    # PPO and RLOO (clipped surrogate) take several epochs per rollout, so half the iterations.
    half = {**common, "num_iterations": max(1, num_iterations // 2), "epochs": 2}
    return [
        TrainerSettings("ppo", {**half, "num_minibatches": 4, "whiten_advantages": True, "vf_coef": 0.1, "lam": 1.0}),
        TrainerSettings(
            "a2c",
            {
                **common,
                "num_iterations": num_iterations * 4 // 3,
                "whiten_advantages": True,
                "vf_coef": 0.1,
                "lam": 1.0,
            },
        ),
        TrainerSettings("reinforce", {**common, "baseline": "batch_mean"}),
        TrainerSettings("rloo", {**half}),
        TrainerSettings("grpo", {**half, "scale_by_std": True}, label="grpo"),
        TrainerSettings("grpo", {**half, "scale_by_std": False}, label="grpo_dr"),
        TrainerSettings(
            "dpo",
            {"learning_rate": 5e-3, "batch_size": dpo_batch_size, "max_steps": dpo_steps, "lr_scheduler": "linear"},
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Running one trainer.


def _stopping_rule(
    model_of, instance: ToyInstance, beta: float, tokenizer, stop_at: float | None, check_every: int, trace: list
):
    """``should_stop`` for the loop: every ``check_every`` iterations, the exact gap closed by the
    model so far (appended to ``trace`` as (iteration, gap)); stop once it reaches ``stop_at``.

    The check enumerates the exact output table in eval mode and draws no random numbers, so a
    stopped run is the prefix of the run it would have been: the stopping rule only truncates it."""
    if stop_at is None:
        return None

    def should_stop(iteration: int) -> bool:
        if (iteration + 1) % check_every:
            return False
        gap = evaluate_model_against_optimum(model_of(), instance, beta, tokenizer)["gap_closed"]
        trace.append((iteration + 1, gap))
        return gap >= stop_at

    return should_stop


def _stopping_fields(trace: list, stop_at: float | None, budget: int) -> dict:
    if stop_at is None:
        return {}
    stopped = bool(trace) and trace[-1][1] >= stop_at
    return {
        "stop_at": stop_at,
        "iterations_run": trace[-1][0] if stopped else budget,
        "stopped_early": stopped,
        "gap_trace": trace,
    }


def run_policy_gradient(
    instance: ToyInstance,
    reference_model,
    tokenizer,
    settings: TrainerSettings,
    beta: float = DEFAULT_BETA,
    seed: int = 0,
    output_dir=None,
    stop_at: float | None = None,
    check_every: int = 10,
) -> dict:
    """Train a copy of π_ref with ``PolicyOptimization`` on R* and evaluate it exactly; with
    ``stop_at``, stop as soon as the exact gap closed (checked every ``check_every`` iterations)
    reaches it, ``num_iterations`` being the budget."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"seed": seed, **settings.overrides}
        cfg = RLConfig(
            algorithm=settings.algorithm,
            policy="<toy>",
            reward="<toy R*>",
            kl_coef=beta,
            prompts_per_iteration=instance.num_contexts,
            max_new_tokens=instance.horizon,
            use_chat_template=False,
            progress=False,
            generation_batch_size=instance.num_contexts,
            output_dir=str(output_dir or Path(tmp) / settings.name),
            **overrides,
        )
        cfg.validate()
        policy = copy.deepcopy(reference_model).train().requires_grad_(True)
        algorithm = PolicyOptimization(
            cfg, policy, tokenizer, context_prompts(instance), oracle_reward_source(instance), reference=reference_model
        )
        trace: list = []
        should_stop = _stopping_rule(algorithm._policy, instance, beta, tokenizer, stop_at, check_every, trace)
        started = time.perf_counter()
        train(cfg, algorithm, should_stop=should_stop)
        wall = time.perf_counter() - started
        trained = algorithm._policy()
        result = evaluate_model_against_optimum(trained, instance, beta, tokenizer)
    return {
        "trainer": settings.name,
        "algorithm": settings.algorithm,
        "wall_time_s": round(wall, 2),
        "config": settings.overrides,
        **_stopping_fields(trace, stop_at, cfg.num_iterations),
        **result,
    }


def preference_pairs(
    instance: ToyInstance,
    tokenizer,
    labels: str = "expected",
    temperature: float = 1.0,
    pairs_per_context: int = 0,
    seed: int = 0,
):
    """Bradley-Terry preferences labelled from R*, as ((prompt, chosen), (prompt, rejected)) token ids
    in the toy MDP's own output form (the end token only on outputs that have one, exactly as
    ``exact_policy`` scores them) and per-pair label smoothing ε (P(chosen ≻ rejected) = 1 − ε).

    ``labels="expected"`` (default): every unordered pair of distinct outputs of every context once,
    chosen = the higher R*, ε = σ(−|R*(o) − R*(o')| / temperature) — the exact BT label frequencies
    (ties get ε = ½: the loss pins their log-ratio gap at 0). O(O−1)/2 pairs per context: 78 on the
    test instance, 3570 on the full one. ``labels="sampled"``: ``pairs_per_context`` pairs o_1, o_2 ~
    π_ref i.i.d., each labelled by one BT coin flip, ε = 0 (noisy; kept for comparison).
    """
    reference, oracle = instance.require_reference(), instance.oracle_reward
    pairs, smoothing = [], []
    if labels == "expected":
        a, b = torch.triu_indices(instance.num_outputs, instance.num_outputs, offset=1)
        for i in range(instance.num_contexts):
            prompt = _ids(tokenizer, instance.contexts[i])
            margin = oracle[i, a] - oracle[i, b]
            for x, y, m in zip(a.tolist(), b.tolist(), margin.tolist()):
                chosen, rejected = (x, y) if m >= 0 else (y, x)
                pairs.append(
                    (
                        (prompt, _ids(tokenizer, instance.outputs[chosen])),
                        (prompt, _ids(tokenizer, instance.outputs[rejected])),
                    )
                )
                smoothing.append(1.0 / (1.0 + math.exp(abs(m) / temperature)))
        return pairs, torch.tensor(smoothing, dtype=torch.float64)
    if labels != "sampled":
        raise ValueError(f"labels must be 'expected' or 'sampled', got {labels!r}")
    g = torch.Generator().manual_seed(derive_seed(seed, "sampled preference labels"))
    for i in range(instance.num_contexts):
        draws = torch.multinomial(reference[i], 2 * pairs_per_context, replacement=True, generator=g).view(-1, 2)
        first_wins = torch.rand(pairs_per_context, generator=g, dtype=torch.float64) < torch.sigmoid(
            (oracle[i, draws[:, 0]] - oracle[i, draws[:, 1]]) / temperature
        )
        prompt = _ids(tokenizer, instance.contexts[i])
        for (x, y), win in zip(draws.tolist(), first_wins.tolist()):
            chosen, rejected = (x, y) if win else (y, x)
            pairs.append(
                (
                    (prompt, _ids(tokenizer, instance.outputs[chosen])),
                    (prompt, _ids(tokenizer, instance.outputs[rejected])),
                )
            )
    return pairs, torch.zeros(len(pairs), dtype=torch.float64)


def run_dpo(
    instance: ToyInstance,
    reference_model,
    tokenizer,
    settings: TrainerSettings,
    beta: float = DEFAULT_BETA,
    seed: int = 0,
    output_dir=None,
    stop_at: float | None = None,
    check_every: int = 50,
) -> dict:
    """DPO (``PreferenceAlgorithm``, loss ``dpo``, its β = the KL coefficient) on BT preferences from
    R* with expected-count (soft) labels; see the module docstring for why its minimiser is π*_β.
    ``stop_at`` / ``check_every`` (in optimiser steps) as in :func:`run_policy_gradient`."""
    pairs, smoothing = preference_pairs(
        instance, tokenizer, labels=settings.dpo_labels, pairs_per_context=settings.pairs_per_context, seed=seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"seed": seed, **settings.overrides}
        overrides["batch_size"] = min(len(pairs), overrides.get("batch_size", 512))
        cfg = PreferenceConfig(
            loss="dpo",
            policy="<toy>",
            kl_coef=beta,
            use_chat_template=False,
            progress=False,
            reference_batch_size=4096,
            output_dir=str(output_dir or Path(tmp) / settings.name),
            **overrides,
        )
        cfg.validate()
        policy = copy.deepcopy(reference_model).train().requires_grad_(True)
        algorithm = PreferenceAlgorithm(
            cfg, policy, tokenizer, pairs, reference=reference_model, pair_label_smoothing=smoothing
        )
        trace: list = []
        model_of = lambda: algorithm.accelerator.unwrap_model(algorithm.model)  # noqa: E731
        should_stop = _stopping_rule(model_of, instance, beta, tokenizer, stop_at, check_every, trace)
        started = time.perf_counter()
        train(cfg, algorithm, should_stop=should_stop)
        wall = time.perf_counter() - started
        trained = model_of()
        result = evaluate_model_against_optimum(trained, instance, beta, tokenizer)
    label_model = (
        "Bradley-Terry soft labels P(o ≻ o') = sigmoid(R*(o) - R*(o')) (temperature 1) on every output pair per context"
        if settings.dpo_labels == "expected"
        else "Bradley-Terry sampled binary labels, pairs ~ π_ref"
    )
    return {
        "trainer": settings.name,
        "algorithm": "dpo",
        "wall_time_s": round(wall, 2),
        "num_pairs": len(pairs),
        "label_model": label_model,
        "config": settings.overrides,
        **_stopping_fields(trace, stop_at, algorithm.num_iterations()),
        **result,
    }


def run_trainer(
    instance,
    reference_model,
    tokenizer,
    settings: TrainerSettings,
    beta: float = DEFAULT_BETA,
    seed: int = 0,
    stop_at: float | None = None,
    check_every: int | None = None,
) -> dict:
    """One trainer, its full budget (the report), or until the exact gap closed reaches ``stop_at``
    (the tests: the budget is then a ceiling, and a trainer that never gets there fails)."""
    runner = run_dpo if settings.algorithm == "dpo" else run_policy_gradient
    extra = {} if check_every is None else {"check_every": check_every}
    return runner(instance, reference_model, tokenizer, settings, beta=beta, seed=seed, stop_at=stop_at, **extra)


# ---------------------------------------------------------------------------------------------
# Every trainer on one instance (the experiment ``rlhflab toy trainers`` reports it).


def frontier(instance: ToyInstance, betas=None) -> list[dict]:
    """(KL, J) of π*_β' over a range of β': the best J reachable at each KL."""
    betas = betas if betas is not None else [float(b) for b in torch.logspace(-1.5, 1.0, 30)]
    ref, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    rows = []
    for b in betas:
        pi = kl_regularised_optimum(ref, oracle, b)
        rows.append({"kl_coef": b, "KL": kl_divergence(pi, ref, d), "J": performance(pi, oracle, d)})
    return rows


def run_all(
    instance: ToyInstance,
    reference_model,
    tokenizer,
    beta: float = DEFAULT_BETA,
    seed: int = 0,
    settings: list[TrainerSettings] | None = None,
) -> dict:
    settings = settings if settings is not None else default_settings()
    rows = [run_trainer(instance, reference_model, tokenizer, s, beta=beta, seed=seed) for s in settings]
    optimum = kl_regularised_optimum(instance.require_reference(), instance.oracle_reward, beta)
    d = instance.context_dist
    return {
        "kl_coef": beta,
        "J_opt": performance(optimum, instance.oracle_reward, d),
        "KL_opt": kl_divergence(optimum, instance.require_reference(), d),
        "J_ref": performance(instance.reference, instance.oracle_reward, d),
        "rows": rows,
        "frontier": frontier(instance),
    }
