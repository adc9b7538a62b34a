"""The paper's analysis (Sections 5, 6.2, 6.3) run as exact experiments on the toy MDP.

Each experiment takes a run directory and a seed, writes ``<name>.json`` and ``<name>.png`` there, and
returns the JSON payload. Reward models are small MLPs on one-hot (context, output) features fitted
with the Bradley-Terry loss (Eq. 11) to preferences simulated from an oracle (Eq. 8): unlike a lookup
table they generalise — and misgeneralise — to contexts and outputs they never saw (Section 5.1).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.ensemble import Objective, bootstrap_indices, ensemble_reward, member_disagreement, member_seed
from rlhflab.files import write_text
from rlhflab.html_report import write_report
from rlhflab.losses import bradley_terry_loss, policy_gradient_loss, reinforce_advantages, sft_loss
from rlhflab.toy.dense import dense
from rlhflab.toy.exact import (
    best_of_n,
    export_instance,
    kl_divergence,
    kl_regularised_optimum,
    performance,
    performance_gap,
)
from rlhflab.toy.mdp import END_TOKEN, ToyInstance, build_lab, structured_oracle_reward, tabular_sample
from rlhflab.toy.outputs import finish, pyplot
from rlhflab.toy.trainers import trainers_experiment

_LABS: dict[int, ToyInstance] = {}


def lab_instance(seed: int) -> ToyInstance:
    """The default instance with its pre-trained π_ref table; pre-trained once per seed per process."""
    if seed not in _LABS:
        _LABS[seed] = build_lab(seed)[0]
    return _LABS[seed]


# ---------------------------------------------------------------------------------------------
# Feedback and reward models.


def features(instance: ToyInstance) -> torch.Tensor:
    """One-hot features of every (c, o), (C, O, F): the context token at each position, and the
    output token (or end, or nothing) at each position. Nothing about R* is built in."""
    vocab = list(instance.tokens)
    out_vocab = vocab + [END_TOKEN, "<none>"]
    ctx_len = len(instance.contexts[0])
    ctx = torch.zeros(instance.num_contexts, ctx_len * len(vocab))
    for i, c in enumerate(instance.contexts):
        for p, t in enumerate(c):
            ctx[i, p * len(vocab) + vocab.index(t)] = 1
    out = torch.zeros(instance.num_outputs, instance.horizon * len(out_vocab))
    for j, o in enumerate(instance.outputs):
        padded = list(o) + ["<none>"] * (instance.horizon - len(o))
        for p, t in enumerate(padded):
            out[j, p * len(out_vocab) + out_vocab.index(t)] = 1
    C, O = instance.num_contexts, instance.num_outputs
    return torch.cat([ctx[:, None].expand(C, O, -1), out[None].expand(C, O, -1)], dim=-1)


@dataclass
class Preferences:
    """Pairwise feedback (c, o_chosen, o_rejected) as index tensors of equal length."""

    context: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor


def feedback_coverage(
    instance: ToyInstance,
    context_coverage: float,
    output_coverage: float,
    generator: torch.Generator,
    policy=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """C_HF and O_HF (Section 5): a fraction κ of contexts, and for each a fraction ρ of outputs drawn
    without replacement from π_ref — feedback lands where the policy puts its mass (Figure 3).

    ``policy`` (C, O) draws the outputs from another policy's table instead, as iterated RLHF labels the
    current policy's outputs (Section 7.6.4); None is π_ref."""
    C, O = instance.num_contexts, instance.num_outputs
    source = instance.require_reference() if policy is None else torch.as_tensor(policy, dtype=torch.float64)
    seen = torch.zeros(C, dtype=torch.bool)
    seen[torch.randperm(C, generator=generator)[: max(1, round(context_coverage * C))]] = True
    k = max(2, round(output_coverage * O))
    gumbel = -torch.log(-torch.log(torch.rand(C, O, generator=generator, dtype=torch.float64)))
    top = (torch.log(source) + gumbel).topk(k, dim=-1).indices
    outputs = torch.zeros(C, O, dtype=torch.bool).scatter_(1, top, True) & seen[:, None]
    return seen, outputs


def simulate_preferences(
    oracle_rewards: list[torch.Tensor],
    weights: list[float],
    outputs: torch.Tensor,
    pairs_per_context: int,
    generator: torch.Generator,
) -> Preferences:
    """Pairs drawn uniformly from each covered context's O_HF, each labelled by an annotator picked
    with probability ``weights``, who prefers o over o' with probability σ(R_k(c,o) − R_k(c,o')) (Eq. 8)."""
    ctx, a, b = [], [], []
    for i in torch.nonzero(outputs.any(-1)).flatten().tolist():
        allowed = torch.nonzero(outputs[i]).flatten()
        idx = torch.multinomial(torch.ones(len(allowed)), 2 * pairs_per_context, replacement=True, generator=generator)
        ctx.append(torch.full((pairs_per_context,), i))
        a.append(allowed[idx[:pairs_per_context]])
        b.append(allowed[idx[pairs_per_context:]])
    ctx, a, b = torch.cat(ctx), torch.cat(a), torch.cat(b)
    who = torch.multinomial(torch.tensor(weights, dtype=torch.float64), len(ctx), replacement=True, generator=generator)
    stacked = torch.stack(oracle_rewards)  # (K, C, O)
    margin = stacked[who, ctx, a] - stacked[who, ctx, b]
    a_wins = torch.rand(len(ctx), generator=generator, dtype=torch.float64) < torch.sigmoid(margin)
    return Preferences(ctx, torch.where(a_wins, a, b), torch.where(a_wins, b, a))


def fit_reward_model(
    instance: ToyInstance, prefs: Preferences, seed: int, steps: int = 300, hidden: int = 64, lr: float = 1e-2
) -> torch.Tensor:
    """R_phi: an MLP on ``features`` fitted by Bradley-Terry (Eq. 11); returns its table (C, O) for
    every pair, seen or not. R_phi is identified only up to a per-context constant, which Eq. 17
    ignores."""
    torch.manual_seed(seed)
    shape = (instance.num_contexts, instance.num_outputs)
    x = features(instance).reshape(shape[0] * shape[1], -1).contiguous()
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[-1], hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        # Scoring the whole (C·O) table once per step costs the same however many pairs there are.
        table = net(x).view(shape)
        loss = bradley_terry_loss(table[prefs.context, prefs.chosen], table[prefs.context, prefs.rejected])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return net(x).view(shape).double()


def reward_model_for(
    instance: ToyInstance,
    context_coverage: float,
    output_coverage: float,
    seed: int,
    pairs_per_context: int = 1024,
    oracle_rewards=None,
    weights=(1.0,),
):
    """Coverage → simulated feedback → fitted R_phi; returns (R_phi table, seen contexts)."""
    g = torch.Generator().manual_seed(seed)
    seen, outputs = feedback_coverage(instance, context_coverage, output_coverage, g)
    prefs = simulate_preferences(
        oracle_rewards or [instance.oracle_reward], list(weights), outputs, pairs_per_context, g
    )
    return fit_reward_model(instance, prefs, seed), seen


# ---------------------------------------------------------------------------------------------
# Helpers.


def _mean_std(values) -> tuple[float, float]:
    t = torch.tensor([v for v in values if not math.isnan(v)], dtype=torch.float64)
    if len(t) == 0:
        return math.nan, math.nan
    return float(t.mean()), float(t.std(unbiased=False))


# ---------------------------------------------------------------------------------------------
# Experiments.


def export(run_dir, seed: int = 0) -> dict:
    """The instance (contexts, d_C, π_ref, R*, seen/unseen) as JSON, for recomputation elsewhere."""
    instance = lab_instance(seed)
    export_instance(instance, Path(run_dir) / "instance.json")
    ref = instance.require_reference()
    return {
        "path": str(Path(run_dir) / "instance.json"),
        "num_contexts": instance.num_contexts,
        "num_outputs": instance.num_outputs,
        "J_ref": performance(ref, instance.oracle_reward, instance.context_dist),
    }


def coverage(
    run_dir,
    seed: int = 0,
    kl_coef: float = 0.1,
    context_coverages=(0.125, 0.25, 0.5, 0.75, 1.0),
    output_coverages=(0.05, 0.1, 0.25, 0.5, 1.0),
    repeats: int = 2,
) -> dict:
    """ΔJ (Section 6.2) over a κ × ρ grid (Section 5), seen vs unseen contexts, mean ± std over
    ``repeats`` feedback draws."""
    started = time.perf_counter()
    instance = lab_instance(seed)
    cells = []
    for kappa in context_coverages:
        for rho in output_coverages:
            runs = []
            for r in range(repeats):
                reward_model, seen = reward_model_for(instance, kappa, rho, seed=1000 * seed + 17 * r + 1)
                runs.append(performance_gap(instance, reward_model, kl_coef, seen))
            cell = {"context_coverage": kappa, "output_coverage": rho}
            for key in ("total", "seen", "unseen"):
                cell[f"performance_gap_{key}"], cell[f"performance_gap_{key}_std"] = _mean_std([g[key] for g in runs])
            cells.append(cell)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("seen", "unseen")):
        grid = torch.tensor(
            [[c[f"performance_gap_{key}"] for c in cells if c["context_coverage"] == k] for k in context_coverages]
        )
        im = ax.imshow(grid.numpy(), origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(output_coverages)), [str(r) for r in output_coverages])
        ax.set_yticks(range(len(context_coverages)), [str(k) for k in context_coverages])
        ax.set_xlabel("output coverage ρ")
        ax.set_ylabel("context coverage κ")
        ax.set_title(f"ΔJ on {key} contexts (β={kl_coef})")
        for (i, j), v in zip(
            itertools.product(range(len(context_coverages)), range(len(output_coverages))), grid.flatten().tolist()
        ):
            ax.text(j, i, "—" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax)
    payload = {
        "experiment": "coverage",
        "seed": seed,
        "kl_coef": kl_coef,
        "repeats": repeats,
        "cells": cells,
        "note": "ΔJ = |J(π*) − J(π_rlhf)| under d_C restricted to seen / unseen contexts; unseen is "
        "undefined at κ = 1.",
    }
    return finish(run_dir, "coverage", payload, fig, started)


def _seen_context_preferences(
    instance: ToyInstance, output_coverage: float, pairs_per_context: int, generator: torch.Generator, policy=None
) -> Preferences:
    """Feedback on the instance's seen contexts (κ = 1/2): for each, a fraction ρ of outputs drawn from
    ``policy`` (π_ref by default) and ``pairs_per_context`` pairs among them labelled from R* (Eq. 8)."""
    _, outputs = feedback_coverage(instance, 1.0, output_coverage, generator, policy)
    outputs &= instance.seen[:, None]
    return simulate_preferences([instance.oracle_reward], [1.0], outputs, pairs_per_context, generator)


def _partial_reward_model(
    instance: ToyInstance, seed: int, output_coverage: float = 0.25, pairs_per_context: int = 1024
):
    """The reward model of the β and over-optimisation experiments: feedback on the instance's seen
    contexts (κ = 1/2) and a fraction ρ of outputs."""
    g = torch.Generator().manual_seed(seed)
    prefs = _seen_context_preferences(instance, output_coverage, pairs_per_context, g)
    return fit_reward_model(instance, prefs, seed)


def beta_tradeoff(run_dir, seed: int = 0, kl_coefs=None) -> dict:
    """J(π*_β), J(π_rlhf,β) and KL against β (Section 6.2): small β exploits R_phi's errors."""
    started = time.perf_counter()
    instance = lab_instance(seed)
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    reward_model = _partial_reward_model(instance, seed=1000 * seed + 3)
    kl_coefs = kl_coefs or torch.logspace(-2, 1, 25).tolist()
    rows = []
    for beta in kl_coefs:
        gap = performance_gap(instance, reward_model, beta)
        optimum = kl_regularised_optimum(reference, oracle, beta)
        rows.append(
            {
                "kl_coef": beta,
                "J_opt": gap["J_opt"],
                "J_rlhf": gap["J_rlhf"],
                "J_hat_rlhf": gap["J_hat_rlhf"],
                "KL_opt": kl_divergence(optimum, reference, d),
                "KL_rlhf": gap["KL_rlhf"],
                "performance_gap_seen": gap["seen"],
                "performance_gap_unseen": gap["unseen"],
                "performance_gap_total": gap["total"],
            }
        )
    best = max(rows, key=lambda r: r["J_rlhf"])
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    b = [r["kl_coef"] for r in rows]
    axes[0].plot(b, [r["J_opt"] for r in rows], label="J(π*_β) (oracle reward)")
    axes[0].plot(b, [r["J_rlhf"] for r in rows], label="J(π_rlhf,β) (reward model)")
    axes[0].axhline(performance(reference, oracle, d), color="gray", ls=":", label="J(π_ref)")
    axes[1].plot(b, [r["KL_opt"] for r in rows], label="KL(π*‖π_ref)")
    axes[1].plot(b, [r["KL_rlhf"] for r in rows], label="KL(π_rlhf‖π_ref)")
    axes[2].plot(b, [r["performance_gap_seen"] for r in rows], label="ΔJ seen contexts")
    axes[2].plot(b, [r["performance_gap_unseen"] for r in rows], label="ΔJ unseen contexts")
    for ax, title in zip(axes, ("performance J (Eq. 12)", "KL to π_ref", "misalignment ΔJ (Sec. 6.2)")):
        ax.set_xscale("log")
        ax.set_xlabel("β (kl_coef)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    payload = {
        "experiment": "beta_tradeoff",
        "seed": seed,
        "context_coverage": float(instance.seen.double().mean()),
        "output_coverage": 0.25,
        "rows": rows,
        "best_kl_coef_for_J_rlhf": best["kl_coef"],
        "best_J_rlhf": best["J_rlhf"],
    }
    return finish(run_dir, "beta_tradeoff", payload, fig, started)


def _fit(form: str, d, r) -> dict:
    """Gao et al. (2023) scaling forms, R(d) = d(α − β_g·d) for best-of-n and d(α − β_g·log d) for RL,
    fitted by least squares; R² on the same points."""
    import numpy as np
    from scipy.optimize import curve_fit

    d, r = np.asarray(d, dtype=float), np.asarray(r, dtype=float)
    keep = d > 0
    d, r = d[keep], r[keep]
    f = (lambda x, a, b: x * (a - b * x)) if form == "bon" else (lambda x, a, b: x * (a - b * np.log(x)))
    (alpha, beta_g), _ = curve_fit(f, d, r, p0=(1.0, 0.1), maxfev=20000)
    ss_res = float(((r - f(d, alpha, beta_g)) ** 2).sum())
    ss_tot = float(((r - r.mean()) ** 2).sum())
    return {
        "form": "d*(alpha - beta*d)" if form == "bon" else "d*(alpha - beta*log d)",
        "alpha": float(alpha),
        "beta": float(beta_g),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        "points": int(len(d)),
    }


def _overoptimisation_curves(instance: ToyInstance, reward_model, rl_checkpoints, max_n: int) -> dict:
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    J_ref, J_hat_ref = performance(reference, oracle, d), performance(reference, reward_model, d)
    ns = sorted({int(round(x)) for x in torch.logspace(0, math.log10(max_n), 30).tolist()})
    bon = []
    for n in ns:
        res = best_of_n(instance, n, reward=reward_model)
        bon.append(
            {
                "n": n,
                "KL": res["KL"],
                "KL_formula": res["KL_formula"],
                "d": math.sqrt(res["KL"]),
                "gold": res["J"] - J_ref,
                "proxy": res["J_hat"] - J_hat_ref,
            }
        )
    if rl_checkpoints:
        source = "rl checkpoints"
        rl = [
            {
                "KL": float(k),
                "d": math.sqrt(max(float(k), 0.0)),
                "gold": float(j) - J_ref,
                "proxy": float(jh) - J_hat_ref,
            }
            for k, j, jh in rl_checkpoints
        ]
    else:
        source = "closed-form KL path"
        rl = []
        for beta in torch.logspace(1, -2, 30).tolist():
            policy = kl_regularised_optimum(reference, reward_model, beta)
            kl = kl_divergence(policy, reference, d)
            rl.append(
                {
                    "kl_coef": beta,
                    "KL": kl,
                    "d": math.sqrt(kl),
                    "gold": performance(policy, oracle, d) - J_ref,
                    "proxy": performance(policy, reward_model, d) - J_hat_ref,
                }
            )
    fits = {
        f"{form}_{kind}": _fit(form, [p["d"] for p in pts], [p[kind] for p in pts])
        for form, pts in (("bon", bon), ("rl", rl))
        for kind in ("gold", "proxy")
    }
    peak = max(bon, key=lambda p: p["gold"])
    return {
        "J_ref": J_ref,
        "J_hat_ref": J_hat_ref,
        "best_of_n": bon,
        "rl": {"source": source, "points": rl},
        "fits": fits,
        "bon_gold_peak": {"n": peak["n"], "d": peak["d"], "gold": peak["gold"], "gold_at_max_n": bon[-1]["gold"]},
    }


def overoptimisation(
    run_dir, seed: int = 0, rl_checkpoints=None, max_n: int = 1024, feedback_budgets=(128, 1024)
) -> dict:
    """Gold J (under R*) and proxy Ĵ (under R_phi) against d = √KL, relative to π_ref, for best-of-n
    selecting by R_phi (exact) and for an RL family, with Gao et al.'s forms fitted; once per
    reward model, fitted on ``feedback_budgets`` preference pairs per covered context (a weaker proxy
    is over-optimised sooner).

    rl_checkpoints: optional [(KL, J, Ĵ), ...] from real RL runs; without them the RL family is the
    closed-form path π_rlhf,β ∝ π_ref·exp(R_phi/β) as β goes from large to small.
    """
    import numpy as np

    started = time.perf_counter()
    instance = lab_instance(seed)
    curves = {}
    for budget in feedback_budgets:
        reward_model = _partial_reward_model(instance, seed=1000 * seed + 3, pairs_per_context=budget)
        curves[str(budget)] = _overoptimisation_curves(instance, reward_model, rl_checkpoints, max_n)
    plt = pyplot()
    fig, axes = plt.subplots(len(curves), 2, figsize=(11, 4 * len(curves)), squeeze=False)
    for row, (budget, res) in zip(axes, curves.items()):
        for ax, form, points, title in (
            (row[0], "bon", res["best_of_n"], "best-of-n (exact)"),
            (row[1], "rl", res["rl"]["points"], f"RL ({res['rl']['source']})"),
        ):
            x = [p["d"] for p in points]
            ax.scatter(x, [p["gold"] for p in points], s=12, label="gold J − J(π_ref) (R*)")
            ax.scatter(x, [p["proxy"] for p in points], s=12, label="proxy Ĵ − Ĵ(π_ref) (R_phi)")
            grid = np.linspace(max(min(x), 1e-3), max(x), 200)
            for kind in ("gold", "proxy"):
                f = res["fits"][f"{form}_{kind}"]
                y = grid * (f["alpha"] - f["beta"] * (grid if form == "bon" else np.log(grid)))
                ax.plot(grid, y, lw=1, label=f"fit {kind}: α={f['alpha']:.2f} β={f['beta']:.2f} R²={f['r2']:.3f}")
            ax.set_xlabel("d = √KL(π‖π_ref)")
            ax.set_title(f"{title}, R_phi from {budget} pairs/context")
            ax.legend(fontsize=7)
    payload = {
        "experiment": "overoptimisation",
        "seed": seed,
        "context_coverage": float(instance.seen.double().mean()),
        "output_coverage": 0.25,
        "curves_by_pairs_per_context": curves,
    }
    return finish(run_dir, "overoptimisation", payload, fig, started)


def _tabular_logprobs(logits: torch.Tensor, ctx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1)[ctx, out].unsqueeze(-1)  # (B, 1): one "token" per output


def _sft_on_best(
    instance: ToyInstance, num_samples: int, top_fraction: float, g, steps: int = 100, lr: float = 0.1
) -> torch.Tensor:
    """Section 6.3 SFT: label ``num_samples`` draws from π_ref with R*, keep the top fraction,
    maximise their likelihood (Eq. 3) on a softmax-logit table initialised at log π_ref."""
    reference = instance.require_reference()
    ctx = torch.multinomial(instance.context_dist, num_samples, replacement=True, generator=g)
    out = tabular_sample(reference, ctx, g)
    reward = instance.oracle_reward[ctx, out]
    keep = reward.argsort(descending=True)[: max(1, math.ceil(top_fraction * num_samples))]
    logits = torch.log(reference).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        lp = _tabular_logprobs(logits, ctx[keep], out[keep])
        loss = sft_loss(lp, torch.ones_like(lp))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.softmax(logits.detach(), -1)


def _policy_gradient_curve(instance: ToyInstance, budgets, batch_size: int, g, lr: float = 0.1) -> list[float]:
    """Section 6.3 policy gradient: on-policy batches, every sample weighted by its R* (minus the batch
    mean, a baseline that leaves the expected gradient unchanged); J after each budget of labels."""
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    logits = torch.log(reference).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    curve, used = [], 0
    for budget in budgets:
        while used + batch_size <= budget:
            with torch.no_grad():
                policy = torch.softmax(logits, -1)
            ctx = torch.multinomial(d, batch_size, replacement=True, generator=g)
            out = tabular_sample(policy, ctx, g)
            advantages = reinforce_advantages(oracle[ctx, out], "batch_mean")
            lp = _tabular_logprobs(logits, ctx, out)
            loss = policy_gradient_loss(lp, advantages.unsqueeze(-1), torch.ones_like(lp))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            used += batch_size
        curve.append(performance(torch.softmax(logits.detach(), -1), oracle, d))
    return curve


def sft_vs_pg(
    run_dir,
    seed: int = 0,
    budgets=(32, 64, 128, 256, 512, 1024, 2048, 4096),
    repeats: int = 5,
    top_fraction: float = 0.1,
    batch_size: int = 32,
    learning_rates=(0.1, 0.3, 1.0),
) -> dict:
    """J against the number of oracle-labelled samples: SFT on the best samples vs policy gradient on
    all samples weighted by reward (Section 6.3), on a tabular softmax policy initialised at π_ref.

    Tabular and sample-based (each update sees only the labelled samples, never an exact gradient), so
    it isolates the update rules; the HF-model trainers are checked against the closed form separately
    (``evaluate_model_against_optimum``). Each method gets its best learning rate from
    ``learning_rates`` (by mean J at the largest budget), so neither wins by a worse setting.
    """
    started = time.perf_counter()
    instance = lab_instance(seed)
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    sweeps = {"sft": {}, "pg": {}}
    for lr in learning_rates:
        sft = {n: [] for n in budgets}
        pg = {n: [] for n in budgets}
        for r in range(repeats):
            g = torch.Generator().manual_seed(1000 * seed + r)
            for n in budgets:
                sft[n].append(performance(_sft_on_best(instance, n, top_fraction, g, lr=lr), oracle, d))
            for n, j in zip(budgets, _policy_gradient_curve(instance, budgets, batch_size, g, lr=lr)):
                pg[n].append(j)
        sweeps["sft"][lr], sweeps["pg"][lr] = sft, pg
    best_lr = {m: max(learning_rates, key=lambda lr: _mean_std(sweeps[m][lr][budgets[-1]])[0]) for m in sweeps}
    rows = []
    for n in budgets:
        (sm, ss), (pm, ps) = _mean_std(sweeps["sft"][best_lr["sft"]][n]), _mean_std(sweeps["pg"][best_lr["pg"]][n])
        rows.append({"num_labelled": n, "J_sft_mean": sm, "J_sft_std": ss, "J_pg_mean": pm, "J_pg_std": ps})
    lr_sweep = {
        m: {str(lr): [_mean_std(runs[n])[0] for n in budgets] for lr, runs in by_lr.items()}
        for m, by_lr in sweeps.items()
    }
    J_ref = performance(reference, oracle, d)
    J_max = float((d * oracle.max(-1).values).sum())
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("sft", f"SFT on top {top_fraction:.0%} by R*"), ("pg", "policy gradient (all samples × R*)")):
        m = torch.tensor([row[f"J_{key}_mean"] for row in rows])
        s = torch.tensor([row[f"J_{key}_std"] for row in rows])
        ax.plot(budgets, m, marker="o", label=label)
        ax.fill_between(budgets, m - s, m + s, alpha=0.2)
    ax.axhline(J_ref, color="gray", ls=":", label="J(π_ref)")
    ax.axhline(J_max, color="k", ls="--", lw=0.8, label="max J")
    ax.set_xscale("log")
    ax.set_xlabel("oracle-labelled samples")
    ax.set_ylabel("J (Eq. 12)")
    ax.legend(fontsize=8)
    payload = {
        "experiment": "sft_vs_pg",
        "seed": seed,
        "repeats": repeats,
        "top_fraction": top_fraction,
        "pg_batch_size": batch_size,
        "J_ref": J_ref,
        "J_max": J_max,
        "rows": rows,
        "best_lr": best_lr,
        "lr_sweep_mean_J": lr_sweep,
        "policy": "tabular softmax logits initialised at log π_ref; Adam; SFT 100 full-batch steps",
        "note": "HF-model trainers are checked against the closed form separately",
    }
    return finish(run_dir, "sft_vs_pg", payload, fig, started)


def annotator_rewards(instance: ToyInstance) -> dict[str, torch.Tensor]:
    """A pool of oracles that agree on much but not all (Section 5.1): the instance's R*, one who
    likes longer answers, and one who thinks a different token answers each context."""
    tokens = instance.tokens

    def table(answer_of=lambda c: None, **kw):
        return torch.tensor(
            [
                [structured_oracle_reward(c, o, tokens, answer=answer_of(c), **kw) for o in instance.outputs]
                for c in instance.contexts
            ],
            dtype=torch.float64,
        )

    return {
        "base": instance.oracle_reward,
        "verbose": table(length_cost=-0.3, repeat_penalty=0.2),
        "echo": table(answer_of=lambda c: c[-1]),
    }


def annotators(run_dir, seed: int = 0, weights=(0.5, 0.3, 0.2), kl_coef: float = 0.1) -> dict:
    """Marginalisation over preferences (Section 5.1): one Bradley-Terry reward model fitted on the
    pooled labels of annotators with different R*, compared with each annotator's own optimum."""
    started = time.perf_counter()
    instance = lab_instance(seed)
    reference, d = instance.require_reference(), instance.context_dist
    pool = annotator_rewards(instance)
    names, tables = list(pool), list(pool.values())
    reward_model, _ = reward_model_for(
        instance, 1.0, 1.0, seed=1000 * seed + 5, pairs_per_context=1024, oracle_rewards=tables, weights=weights
    )
    pooled = kl_regularised_optimum(reference, reward_model, kl_coef)
    mean_reward = sum(w * t for w, t in zip(weights, tables))
    rows = []
    for name, own in pool.items():
        J_ref = performance(reference, own, d)
        J_own = performance(kl_regularised_optimum(reference, own, kl_coef), own, d)
        J_pooled = performance(pooled, own, d)
        rows.append(
            {
                "annotator": name,
                "weight": weights[names.index(name)],
                "J_ref": J_ref,
                "J_own_optimum": J_own,
                "J_pooled_reward_model": J_pooled,
                "J_mean_reward_optimum": performance(kl_regularised_optimum(reference, mean_reward, kl_coef), own, d),
                "fraction_of_own_gain": (J_pooled - J_ref) / (J_own - J_ref),
                **{
                    f"J_under_{other}_optimum": performance(kl_regularised_optimum(reference, t, kl_coef), own, d)
                    for other, t in pool.items()
                    if other != name
                },
            }
        )
    centred = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731  (BT fixes rewards up to a per-context shift)
    corr = float(torch.corrcoef(torch.stack([centred(reward_model).flatten(), centred(mean_reward).flatten()]))[0, 1])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    import numpy as np

    x = np.arange(len(rows))
    for k, (key, label) in enumerate(
        (
            ("J_ref", "π_ref"),
            ("J_pooled_reward_model", "π_rlhf (pooled BT model)"),
            ("J_own_optimum", "own optimum π*_k"),
        )
    ):
        ax.bar(x + (k - 1) * 0.27, [r[key] for r in rows], width=0.27, label=label)
    ax.set_xticks(x, [f"{r['annotator']} (w={r['weight']})" for r in rows])
    ax.set_ylabel("J under the annotator's own R*")
    ax.set_title(f"one reward model for a pool of annotators (β={kl_coef})")
    ax.legend(fontsize=8)
    payload = {
        "experiment": "annotators",
        "seed": seed,
        "kl_coef": kl_coef,
        "weights": list(weights),
        "rows": rows,
        "corr_reward_model_vs_weighted_mean_reward": corr,
    }
    return finish(run_dir, "annotators", payload, fig, started)


# ---------------------------------------------------------------------------------------------
# Iterated (online) RLHF (Section 7.6.4).

ITERATED_VARIANTS = {
    "single": "single round (all pairs from π_ref)",
    "iterated_fixed_ref": "iterated, KL to π_ref",
    "iterated_moved_ref": "iterated, KL to π_{r−1}",
}


def _concat_preferences(prefs: list[Preferences]) -> Preferences:
    return Preferences(*(torch.cat([getattr(p, f) for p in prefs]) for f in ("context", "chosen", "rejected")))


def pairwise_accuracy(reward_model, oracle, policy, context_dist) -> float:
    """How often R_phi orders a pair as R* does, on the pairs ``policy`` itself would sample: c ~ d_C,
    o, o' ~ π(·|c) independently, pairs tied under R* excluded (no right answer), R_phi ties half right.
    On π_ref's pairs it is the accuracy where single-round feedback was collected; on π_rlhf's, where the
    policy went (Section 7.6.4)."""
    oracle = torch.as_tensor(oracle, dtype=torch.float64)
    reward_model = torch.as_tensor(reward_model, dtype=torch.float64)
    policy, d = torch.as_tensor(policy, dtype=torch.float64), torch.as_tensor(context_dist, dtype=torch.float64)
    true_sign = torch.sign(oracle[:, :, None] - oracle[:, None, :])
    model_sign = torch.sign(reward_model[:, :, None] - reward_model[:, None, :])
    weight = d[:, None, None] * policy[:, :, None] * policy[:, None, :] * (true_sign != 0)
    right = (model_sign == true_sign).double() + 0.5 * (model_sign == 0)
    return float((weight * right).sum() / weight.sum())


def _rlhf_rounds(
    instance: ToyInstance,
    rounds: int,
    pairs_per_context: int,
    output_coverage: float,
    kl_coef: float,
    seed: int,
    move_reference: bool = False,
    fit=fit_reward_model,
) -> list[dict]:
    """Iterated RLHF (Section 7.6.4): round r labels ``pairs_per_context`` pairs per seen context among
    a fraction ρ of π_{r−1}'s outputs (π_0 = π_ref; labels from R*, Eq. 8), fits R_phi_r on every pair
    so far (Eq. 11), and sets π_r ∝ π_anchor·exp(R_phi_r/β) (Eq. 17) with the anchor π_ref, or π_{r−1}
    if ``move_reference`` (then π_r ∝ π_ref·exp(Σ_s R_phi_s/β): the KL to π_ref compounds). One round
    is single-round RLHF. ``fit(instance, prefs, seed)`` returns R_phi's table.

    Returns one dict per round: policy π_r, previous π_{r−1}, reward_model R_phi_r, labels (this round).
    """
    reference = instance.require_reference()
    g = torch.Generator().manual_seed(seed)
    policy, prefs, steps = reference, [], []
    for _ in range(rounds):
        prefs.append(_seen_context_preferences(instance, output_coverage, pairs_per_context, g, policy))
        reward_model = fit(instance, _concat_preferences(prefs), seed)
        anchor = policy if move_reference else reference
        previous, policy = policy, kl_regularised_optimum(anchor, reward_model, kl_coef)
        steps.append(
            {"policy": policy, "previous": previous, "reward_model": reward_model, "labels": len(prefs[-1].context)}
        )
    return steps


def _round_metrics(instance: ToyInstance, step: dict, kl_coef: float) -> dict:
    """J, Ĵ, ΔJ (total / seen / unseen), KL and R_phi's pairwise accuracy of one round's policy."""
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    policy, reward_model = step["policy"], step["reward_model"]
    # Every full-support π is the Eq. 17 optimum of its implied reward β·log(π/π_ref), so performance_gap
    # gives ΔJ of any round's policy, the moved-reference ones (not ∝ π_ref·exp(R_phi/β)) included.
    gap = performance_gap(instance, kl_coef * (torch.log(policy) - torch.log(reference)), kl_coef)
    return {
        "J": gap["J_rlhf"],
        "J_hat": performance(policy, reward_model, d),
        "performance_gap_total": gap["total"],
        "performance_gap_seen": gap["seen"],
        "performance_gap_unseen": gap["unseen"],
        "KL_ref": gap["KL_rlhf"],
        "KL_step": kl_divergence(policy, step["previous"], d),
        "rm_accuracy_on_policy": pairwise_accuracy(reward_model, oracle, policy, d),
        # Iteration only ever labels seen contexts, so it can only correct R_phi there.
        "rm_accuracy_on_policy_seen": pairwise_accuracy(reward_model, oracle, policy, d * instance.seen),
        "rm_accuracy_on_policy_unseen": pairwise_accuracy(reward_model, oracle, policy, d * ~instance.seen),
        "rm_accuracy_on_ref": pairwise_accuracy(reward_model, oracle, reference, d),
    }


def _memoised(fit):
    """``fit`` once per (seed, pairs): the variants share their first rounds' data (same seed, same π_0),
    so refitting those would only cost time."""
    cache = {}

    def cached(instance, prefs, seed):
        key = (seed, *(getattr(prefs, f).numpy().tobytes() for f in ("context", "chosen", "rejected")))
        if key not in cache:
            cache[key] = fit(instance, prefs, seed)
        return cache[key]

    return cached


def iterated(
    run_dir,
    seed: int = 0,
    rounds: int = 3,
    kl_coef: float = 0.1,
    pairs_per_context: int = 128,
    output_coverage: float = 0.1,
    repeats: int = 3,
) -> dict:
    """Iterated (online) RLHF against single-round RLHF at one label budget (Sections 7.5, 7.6.4).

    Feedback is on the instance's seen contexts. Iterated: ``rounds`` rounds of P = ``pairs_per_context``
    pairs per seen context on the current policy's outputs, R_phi refitted on all pairs, π_r by Eq. 17
    anchored at π_ref ("fixed ref") or at π_{r−1} ("moved ref"). Single round, row r: r·P pairs per seen
    context all on π_ref's outputs, so every row compares policies that cost the same labels, and round 1
    is the same run for all three. Per round: exact J (Eq. 12) under R*, Ĵ under R_phi_r, ΔJ against
    π*_β = optimum of R* (Section 6.2), KL to π_ref, and R_phi_r's pairwise accuracy on the pairs π_r
    samples (where the policy went, before the next round retrains) and on π_ref's. Mean ± std over
    ``repeats`` feedback draws; the variants share each repeat's seed (common random numbers).

    Defaults: ρ = 0.1 (8 of 85 outputs per context) and β = 0.1 make the single-round R_phi see a thin
    slice of π_ref's support and let π_rlhf move far enough off it that R_phi's errors there matter —
    the miscalibration Section 7.6.4 describes; with ρ = 1 every output is labelled and there is nothing
    for iteration to fix. P = 128 pairs/context/round keeps each R_phi well fitted on what it saw, so
    differences come from where the labels are, not how many.
    """
    started = time.perf_counter()
    instance = lab_instance(seed)
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    fit = _memoised(fit_reward_model)
    runs = {v: [] for v in ITERATED_VARIANTS}  # variant → repeat → round → metrics
    for rep in range(repeats):
        rep_seed = 1000 * seed + 17 * rep + 11
        common = dict(output_coverage=output_coverage, kl_coef=kl_coef, seed=rep_seed, fit=fit)
        single = [_rlhf_rounds(instance, 1, r * pairs_per_context, **common)[0] for r in range(1, rounds + 1)]
        fixed = _rlhf_rounds(instance, rounds, pairs_per_context, **common)
        moved = _rlhf_rounds(instance, rounds, pairs_per_context, move_reference=True, **common)
        for variant, steps in zip(ITERATED_VARIANTS, (single, fixed, moved)):
            spent = itertools.accumulate(s["labels"] for s in steps)
            if variant == "single":  # each row is its own one-round run
                spent = (s["labels"] for s in steps)
            runs[variant].append(
                [
                    _round_metrics(instance, s, kl_coef) | {"labels_round": s["labels"], "labels_total": total}
                    for s, total in zip(steps, spent)
                ]
            )
    metrics = [k for k in runs["single"][0][0] if not k.startswith("labels")]
    rows = {}
    for variant, reps in runs.items():
        rows[variant] = []
        for r in range(rounds):
            row = {
                "round": r + 1,
                "labels_round": reps[0][r]["labels_round"],
                "labels_total": reps[0][r]["labels_total"],
            }
            for key in metrics:
                row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([rep[r][key] for rep in reps])
            rows[variant].append(row)
    J_opt = performance(kl_regularised_optimum(reference, oracle, kl_coef), oracle, d)
    J_ref = performance(reference, oracle, d)
    finals = {v: [rep[-1]["J"] for rep in reps] for v, reps in runs.items()}
    best = max(finals, key=lambda v: _mean_std(finals[v])[0])
    margins = {}
    for v in ITERATED_VARIANTS:
        # Paired over repeats (same seed, same round-1 data), so the std is that of the difference itself.
        diff, diff_std = _mean_std([a - b for a, b in zip(finals[v], finals["single"])])
        margins[v] = {"J_minus_single_mean": diff, "J_minus_single_std": diff_std}
    best_mean, best_std = _mean_std(finals[best])
    winner = {
        "variant": best,
        "final_J_mean": best_mean,
        "final_J_std": best_std,
        "vs_single": margins,
        "text": f"{ITERATED_VARIANTS[best]}: final J {best_mean:.3f}±{best_std:.3f}, "
        f"{margins[best]['J_minus_single_mean']:+.3f}±{margins[best]['J_minus_single_std']:.3f} vs single round "
        f"(paired over {repeats} repeats)",
    }

    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    x = list(range(1, rounds + 1))
    for k, (variant, label) in enumerate(ITERATED_VARIANTS.items()):
        xs = [i + (k - 1) * 0.05 for i in x]  # a small offset so the error bars do not hide each other
        for ax, key, dotted in (
            (axes[0], "J", None),
            (axes[1], "performance_gap_total", "performance_gap_unseen"),
            (axes[2], "rm_accuracy_on_policy", "rm_accuracy_on_ref"),
            (axes[3], "KL_ref", None),
        ):
            bars = ax.errorbar(
                xs,
                [r[f"{key}_mean"] for r in rows[variant]],
                yerr=[r[f"{key}_std"] for r in rows[variant]],
                marker="o",
                capsize=3,
                label=label,
            )
            if dotted:
                ax.errorbar(
                    xs,
                    [r[f"{dotted}_mean"] for r in rows[variant]],
                    yerr=[r[f"{dotted}_std"] for r in rows[variant]],
                    ls=":",
                    marker=".",
                    capsize=2,
                    color=bars[0].get_color(),
                )
    axes[0].axhline(J_opt, color="k", ls="--", lw=0.8, label=f"J(π*_β) = {J_opt:.3f}")
    axes[0].axhline(J_ref, color="gray", ls=":", label=f"J(π_ref) = {J_ref:.3f}")
    titles = (
        "performance J (Eq. 12) under R*",
        "ΔJ = |J(π*) − J(π_r)| (dotted: unseen contexts)",
        "R_phi_r pairwise accuracy on π_r's pairs (dotted: π_ref's)",
        "KL(π_r‖π_ref)",
    )
    for ax, title in zip(axes, titles):
        ax.set_xticks(x, [f"{r}\n({r * pairs_per_context} pairs/ctx)" for r in x])
        ax.set_xlabel("round (labels per seen context so far)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"iterated vs single-round RLHF, β={kl_coef}, ρ={output_coverage}, {repeats} repeats", fontsize=10)
    payload = {
        "experiment": "iterated",
        "seed": seed,
        "rounds": rounds,
        "kl_coef": kl_coef,
        "pairs_per_context_per_round": pairs_per_context,
        "output_coverage": output_coverage,
        "context_coverage": float(instance.seen.double().mean()),
        "repeats": repeats,
        "J_opt": J_opt,
        "J_ref": J_ref,
        "variants": ITERATED_VARIANTS,
        "rows": rows,
        "winner": winner,
        "note": "single-round row r is one round with r·P pairs per seen context from π_ref, so each row's "
        "variants spent the same labels; the moved-reference variant's KL anchor is π_{r−1}, so its KL to "
        "π_ref compounds (π_r ∝ π_ref·exp(Σ_s R_phi_s/β)) and ΔJ is against π*_β at the nominal β.",
    }
    return finish(run_dir, "iterated", payload, fig, started)


# ---------------------------------------------------------------------------------------------
# Reward-model ensembles against over-optimisation (Sections 7.5, 7.7; Coste et al. 2023).

ENSEMBLE_DATA = ("seeds", "bootstrap")


def _bootstrap_preferences(prefs: Preferences, seed: int) -> Preferences:
    index = torch.tensor(bootstrap_indices(len(prefs.context), seed))
    return Preferences(prefs.context[index], prefs.chosen[index], prefs.rejected[index])


def _centred_per_context(instance: ToyInstance, table: torch.Tensor) -> torch.Tensor:
    """R(c, o) − E_{o'~π_ref(·|c)} R(c, o'). Eq. 11 compares outputs of one context, so each member is
    free up to a shift per context; here π_ref is known on every context, so that shift is removed
    exactly (the product, which cannot sample every context it will score, removes a global one)."""
    return table - (instance.require_reference() * table).sum(-1, keepdim=True)


def _optimisation_curves(instance: ToyInstance, reward: torch.Tensor, ns, kl_coefs) -> dict:
    """J under R*, Ĵ under ``reward`` and KL to π_ref, of best-of-n selecting by ``reward`` (exact) for
    each n, and of π ∝ π_ref·exp(reward/β) (Eq. 17) for each β."""
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    bon = [best_of_n(instance, n, reward=reward) for n in ns]
    paths = [kl_regularised_optimum(reference, reward, beta) for beta in kl_coefs]
    return {
        "best_of_n": [{"J": b["J"], "J_hat": b["J_hat"], "KL": b["KL"]} for b in bon],
        "kl_path": [
            {"J": performance(p, oracle, d), "J_hat": performance(p, reward, d), "KL": kl_divergence(p, reference, d)}
            for p in paths
        ],
    }


def ensemble(
    run_dir,
    seed: int = 0,
    members: int = 4,
    output_coverage: float = 0.1,
    pairs_per_context: int = 128,
    uncertainty_coef: float = 1.0,
    repeats: int = 3,
    max_n: int = 256,
    kl_coefs=None,
    matched_kls=(1.0, 2.0, 3.0),
) -> dict:
    """Does a reward-model ensemble delay over-optimisation (Coste et al. 2023)?

    Per repeat: one feedback set on the seen contexts (κ = 1/2, a fraction ρ of π_ref's outputs,
    ``pairs_per_context`` pairs labelled from R*, Eq. 8); a single R_phi fitted to it (Eq. 11), and K =
    ``members`` more fitted to the same pairs with their own seeds ("seeds") or each to its own
    bootstrap resample of them ("bootstrap"); every member centred per context under π_ref. Each
    ensemble is combined by mean, WCO (min over members) and UWO (mean − λ·variance, λ =
    ``uncertainty_coef``; :func:`rlhflab.ensemble.ensemble_reward`). Every reward is then optimised two
    exact ways: best-of-n from π_ref selecting by it (n = 1, 2, 4, …, ``max_n``) and the KL-regularised
    optimum π ∝ π_ref·exp(R/β) (Eq. 17) along ``kl_coefs``; J under R*, Ĵ under the reward optimised,
    KL to π_ref. A rising J that falls again as KL grows is over-optimisation; a conservative ensemble
    should flatten or delay the fall. Mean ± std over ``repeats`` feedback draws; all variants of a
    repeat share its feedback (common random numbers), so each is also compared with the single model
    paired, at the same KL (``matched_kls``, within reach of every curve: best-of-256 reaches KL ≈ 3.8).
    Also: the members' disagreement (std over members) under π_ref on seen and unseen contexts.

    Defaults: ρ = 0.1 and 128 pairs per seen context, as in the iterated experiment: a single R_phi
    there gains on R* at first and loses it again along the Eq. 17 path. K = 4 (Coste et al. find
    4–5 members enough); λ = 1 as in the product, so large-magnitude members are penalised hard.
    """
    import numpy as np

    started = time.perf_counter()
    instance = lab_instance(seed)
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    ns = [2**i for i in range(int(math.log2(max_n)) + 1)]
    kl_coefs = kl_coefs or torch.logspace(1, -2.5, 15).tolist()
    objectives = {"mean": Objective("mean"), "wco": Objective("wco"), "uwo": Objective("uwo", uncertainty_coef)}
    runs: dict[str, list[dict]] = {}  # variant → one curves dict per repeat
    disagreement = {data: {"seen": [], "unseen": []} for data in ENSEMBLE_DATA}
    for rep in range(repeats):
        rep_seed = 1000 * seed + 17 * rep + 7
        prefs = _seen_context_preferences(
            instance, output_coverage, pairs_per_context, torch.Generator().manual_seed(rep_seed)
        )
        single = _centred_per_context(instance, fit_reward_model(instance, prefs, rep_seed))
        rewards = {"single": single}
        for data in ENSEMBLE_DATA:
            tables = []
            for k in range(members):
                k_seed = member_seed(rep_seed, k)
                k_prefs = _bootstrap_preferences(prefs, k_seed) if data == "bootstrap" else prefs
                tables.append(_centred_per_context(instance, fit_reward_model(instance, k_prefs, k_seed)))
            stacked = torch.stack(tables)  # (K, C, O)
            spread = (reference * member_disagreement(stacked)).sum(-1)  # E_{π_ref} of the members' std, (C,)
            for where, mask in (("seen", instance.seen), ("unseen", ~instance.seen)):
                disagreement[data][where].append(float((d[mask] * spread[mask]).sum() / d[mask].sum()))
            for name, objective in objectives.items():
                rewards[f"{data}/{name}"] = ensemble_reward(stacked, objective)
        for variant, reward in rewards.items():
            runs.setdefault(variant, []).append(_optimisation_curves(instance, reward, ns, kl_coefs))

    def band(variant: str, curve: str, key: str) -> list[tuple[float, float]]:
        return [_mean_std([rep[curve][i][key] for rep in runs[variant]]) for i in range(len(runs[variant][0][curve]))]

    def J_at(rep_curve: list[dict], kl: float) -> float:
        """J where the curve's KL is ``kl`` (linear between its points; KL grows along both curves),
        so that rewards are compared at the same distance from π_ref; NaN beyond the curve's reach."""
        kls, js = [p["KL"] for p in rep_curve], [p["J"] for p in rep_curve]
        return float(np.interp(kl, kls, js)) if kls[0] <= kl <= kls[-1] else math.nan

    def peak(variant: str, curve: str) -> dict:
        """Per repeat: the highest J along the curve, the KL where it is reached, J at the curve's end,
        and J at each KL of ``matched_kls`` beside its paired difference to the single model's."""
        reps = runs[variant]
        best = [max(rep[curve], key=lambda p: p["J"]) for rep in reps]
        matched = []
        for kl in matched_kls:
            js = [J_at(rep[curve], kl) for rep in reps]
            diffs = [j - J_at(one[curve], kl) for j, one in zip(js, runs["single"])]
            row = {"KL": kl}
            row["J_mean"], row["J_std"] = _mean_std(js)
            row["vs_single_mean"], row["vs_single_std"] = _mean_std(diffs)
            matched.append(row)
        out = {"J_at_KL": matched}
        for key, values in (
            ("J_peak", [b["J"] for b in best]),
            ("KL_at_peak", [b["KL"] for b in best]),
            ("J_end", [rep[curve][-1]["J"] for rep in reps]),
            ("KL_end", [rep[curve][-1]["KL"] for rep in reps]),
            ("J_drop", [b["J"] - rep[curve][-1]["J"] for b, rep in zip(best, reps)]),
        ):
            out[f"{key}_mean"], out[f"{key}_std"] = _mean_std(values)
        return out

    curves, summary = {}, {}
    for variant in runs:
        curves[variant] = {}
        for curve, xs in (("best_of_n", [{"n": n} for n in ns]), ("kl_path", [{"kl_coef": b} for b in kl_coefs])):
            points = [dict(x) for x in xs]
            for key in ("J", "J_hat", "KL"):
                for point, (m, sd) in zip(points, band(variant, curve, key)):
                    point[f"{key}_mean"], point[f"{key}_std"] = m, sd
            curves[variant][curve] = points
        summary[variant] = {curve: peak(variant, curve) for curve in ("best_of_n", "kl_path")}
    J_ref = performance(reference, oracle, d)
    J_opt = performance(kl_regularised_optimum(reference, oracle, kl_coefs[-1]), oracle, d)

    plt = pyplot()
    fig, axes = plt.subplots(len(ENSEMBLE_DATA), 2, figsize=(12, 4.2 * len(ENSEMBLE_DATA)), squeeze=False)
    for row, data in zip(axes, ENSEMBLE_DATA):
        for ax, curve, title in (
            (row[0], "best_of_n", f"best-of-n (exact), n = 1 … {max_n}"),
            (row[1], "kl_path", f"π ∝ π_ref·exp(R/β) (Eq. 17), β = {kl_coefs[0]:.3g} … {kl_coefs[-1]:.3g}"),
        ):
            for variant in ("single", *(f"{data}/{name}" for name in objectives)):
                pts = curves[variant][curve]
                kl = [p["KL_mean"] for p in pts]
                bars = ax.errorbar(
                    kl,
                    [p["J_mean"] for p in pts],
                    yerr=[p["J_std"] for p in pts],
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=f"J (R*), {variant}",
                )
                ax.plot(kl, [p["J_hat_mean"] for p in pts], ls=":", color=bars[0].get_color(), lw=1)
            ax.axhline(J_ref, color="gray", ls=":", lw=0.8, label=f"J(π_ref) = {J_ref:.3f}")
            ax.set_xlabel("KL(π‖π_ref)")
            ax.set_title(f"{title}; members: {data}", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(
        f"reward-model ensembles, K={members}, ρ={output_coverage}, {pairs_per_context} pairs/seen context, "
        f"UWO λ={uncertainty_coef}, {repeats} repeats; solid: J under R* (mean ± std), dotted: Ĵ under the reward optimised",
        fontsize=10,
    )
    payload = {
        "experiment": "ensemble",
        "seed": seed,
        "members": members,
        "output_coverage": output_coverage,
        "context_coverage": float(instance.seen.double().mean()),
        "pairs_per_context": pairs_per_context,
        "uncertainty_coef": uncertainty_coef,
        "repeats": repeats,
        "ns": ns,
        "kl_coefs": kl_coefs,
        "J_ref": J_ref,
        "J_opt_at_min_kl_coef": J_opt,
        "curves": curves,
        "summary": summary,
        "disagreement_under_ref": {
            data: {where: dict(zip(("mean", "std"), _mean_std(v))) for where, v in by.items()}
            for data, by in disagreement.items()
        },
        "note": "members centred per context under π_ref; 'single' is one model on the full feedback; J_drop is "
        "the peak J minus J at the end of the curve (largest n / smallest β), per repeat.",
    }
    return finish(run_dir, "ensemble", payload, fig, started)


def trainers(run_dir, seed: int = 0) -> dict:
    """Every trainer of rlhflab.train against the closed-form optimum (see rlhflab.toy.trainers)."""
    return trainers_experiment(run_dir, seed=seed)


EXPERIMENTS = {
    "coverage": coverage,
    "beta": beta_tradeoff,
    "overopt": overoptimisation,
    "sft-vs-pg": sft_vs_pg,
    "annotators": annotators,
    "iterated": iterated,
    "trainers": trainers,
    "ensemble": ensemble,
    "dense": dense,
}


def report(run_dir, seed: int = 0) -> dict:
    """Every experiment into its own subfolder, and summary.md with the headline numbers."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    export(run_dir, seed)
    results = {name: fn(run_dir / name, seed=seed) for name, fn in EXPERIMENTS.items()}
    write_text(run_dir / "summary.md", summary_markdown(results, seed))
    write_report([run_dir])
    return {
        "experiment": "report",
        "seed": seed,
        "results": results,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }


def summary_markdown(results: dict, seed: int) -> str:
    lines = [f"# Toy lab report (seed {seed})", "", "| experiment | headline | wall time (s) |", "|---|---|---|"]
    for name, res in results.items():
        lines.append(f"| {name} | {headline(name, res)} | {res['wall_time_s']} |")
    return "\n".join(lines) + "\n"


def headline(name: str, res: dict) -> str:
    """One line of numbers per experiment, for summary.md and the CLI."""
    if name == "coverage":
        low = min(res["cells"], key=lambda c: (c["context_coverage"], c["output_coverage"]))
        full = max(res["cells"], key=lambda c: (c["context_coverage"], c["output_coverage"]))
        return (
            f"ΔJ at κ={low['context_coverage']},ρ={low['output_coverage']}: seen {low['performance_gap_seen']:.3f}, "
            f"unseen {low['performance_gap_unseen']:.3f}; at κ=ρ=1: {full['performance_gap_total']:.3f}"
        )
    if name == "beta":
        first, last = res["rows"][0], res["rows"][-1]
        return (
            f"ΔJ unseen {first['performance_gap_unseen']:.3f} at β={first['kl_coef']:.2g} vs "
            f"{last['performance_gap_unseen']:.3f} at β={last['kl_coef']:.2g}; best J(π_rlhf)={res['best_J_rlhf']:.3f} "
            f"at β={res['best_kl_coef_for_J_rlhf']:.2g}"
        )
    if name == "overopt":
        parts = []
        for budget, c in res["curves_by_pairs_per_context"].items():
            f = c["fits"]
            parts.append(
                f"{budget} pairs/ctx: BoN gold α={f['bon_gold']['alpha']:.3f} β={f['bon_gold']['beta']:.3f} "
                f"R²={f['bon_gold']['r2']:.3f}, RL gold α={f['rl_gold']['alpha']:.3f} "
                f"β={f['rl_gold']['beta']:.3f} R²={f['rl_gold']['r2']:.3f} ({c['rl']['source']})"
            )
        return "; ".join(parts)
    if name == "sft-vs-pg":
        first, last = res["rows"][0], res["rows"][-1]
        return (
            f"J at {first['num_labelled']} labels: SFT {first['J_sft_mean']:.3f} / PG {first['J_pg_mean']:.3f}; "
            f"at {last['num_labelled']}: SFT {last['J_sft_mean']:.3f} / PG {last['J_pg_mean']:.3f} "
            f"(J_ref {res['J_ref']:.3f}, max {res['J_max']:.3f})"
        )
    if name == "annotators":
        return "; ".join(f"{r['annotator']}: {r['fraction_of_own_gain']:.0%} of own gain" for r in res["rows"])
    if name == "iterated":
        finals = {v: rows[-1] for v, rows in res["rows"].items()}
        short = {
            "single": "single",
            "iterated_fixed_ref": "iterated(fixed ref)",
            "iterated_moved_ref": "iterated(moved ref)",
        }
        return (
            f"final J ({res['rounds']} rounds × {res['pairs_per_context_per_round']} pairs/ctx): "
            + ", ".join(f"{short[v]} {r['J_mean']:.3f}±{r['J_std']:.3f}" for v, r in finals.items())
            + f" (moved ref KL to π_ref {finals['iterated_moved_ref']['KL_ref_mean']:.2f} vs "
            f"{finals['iterated_fixed_ref']['KL_ref_mean']:.2f} fixed); J(π*) {res['J_opt']:.3f}, J(π_ref) {res['J_ref']:.3f}"
        )
    if name == "ensemble":
        kl = res["summary"]["single"]["best_of_n"]["J_at_KL"][-1]["KL"]

        def at(variant: str, curve: str) -> dict:
            return res["summary"][variant][curve]["J_at_KL"][-1]

        parts = []
        for curve, label in (("best_of_n", "BoN"), ("kl_path", "Eq.17")):
            diffs = "; ".join(
                f"{data} "
                + " ".join(
                    f"{name} {at(f'{data}/{name}', curve)['vs_single_mean']:+.3f}±{at(f'{data}/{name}', curve)['vs_single_std']:.3f}"
                    for name in ("mean", "wco", "uwo")
                )
                for data in ENSEMBLE_DATA
            )
            parts.append(f"{label}: single {at('single', curve)['J_mean']:.3f}, ensemble − single: {diffs}")
        spread = res["disagreement_under_ref"]
        return (
            f"J at KL={kl:g} (K={res['members']}, ρ={res['output_coverage']}, {res['repeats']} repeats, paired): "
            + " | ".join(parts)
            + " | member std unseen/seen: "
            + ", ".join(
                f"{data} {spread[data]['unseen']['mean']:.3f}/{spread[data]['seen']['mean']:.3f}" for data in spread
            )
            + f" (J_ref {res['J_ref']:.3f})"
        )
    if name == "dense":
        checks = res["exactness"].values()
        return (
            f"PPO gap closed sparse/dense ({res['repeats']} seeds, paired dense − sparse): "
            + ", ".join(
                f"{r['iterations']} it {r['sparse_mean']:.3f}±{r['sparse_std']:.3f}/{r['dense_mean']:.3f}±"
                f"{r['dense_std']:.3f} ({r['dense_minus_sparse_mean']:+.3f}±{r['dense_minus_sparse_std']:.3f})"
                for r in res["rows"]
            )
            + f"; exact: max |R' − (R − Φ(c,∅))| {max(c['return_error'] for c in checks):.0e}, "
            f"max |π*_β(R') − π*_β(R)| {max(max(c['optimum_error'].values()) for c in checks):.0e}"
        )
    if name == "trainers":
        return "gap closed: " + ", ".join(
            f"{r['trainer']} {r['gap_closed']:.3f} ({r['wall_time_s']} s)" for r in res["rows"]
        )
    return ""
