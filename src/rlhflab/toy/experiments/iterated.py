"""``rlhflab toy iterated``: iterated (online) RLHF against single-round RLHF at one label budget
(Sections 7.5, 7.6.4).

Feedback is on the instance's seen contexts. Iterated: ``rounds`` rounds of P = ``pairs_per_context``
pairs per seen context on the current policy's outputs, R_phi refitted on all pairs, π_r by Eq. 17
anchored at π_ref ("fixed ref") or at π_{r−1} ("moved ref"). Single round, row r: r·P pairs per seen
context all on π_ref's outputs, so every row compares policies that cost the same labels, and round 1
is the same run for all three. Per round: exact J (Eq. 12) under R*, Ĵ under R_phi_r, ΔJ against
π*_β = optimum of R* (Section 6.2), KL to π_ref, and R_phi_r's pairwise accuracy on the pairs π_r
samples (where the policy went, before the next round retrains) and on π_ref's. Mean ± std over
``repeats`` feedback draws; the variants share each repeat's seed (common random numbers).
"""

from __future__ import annotations

import itertools
import time

import torch

from rlhflab.seeds import derive_seed
from rlhflab.toy.exact import kl_divergence, kl_regularised_optimum, performance, performance_gap
from rlhflab.toy.experiments.common import (
    Preferences,
    fit_reward_model,
    lab_instance,
    mean_std,
    seen_context_preferences,
)
from rlhflab.toy.mdp import ToyInstance
from rlhflab.toy.outputs import finish, pyplot

ITERATED_VARIANTS = {
    "single": "single round (all pairs from π_ref)",
    "iterated_fixed_ref": "iterated, KL to π_ref",
    "iterated_moved_ref": "iterated, KL to π_{r−1}",
}
SHORT_NAMES = {
    "single": "single",
    "iterated_fixed_ref": "iterated(fixed ref)",
    "iterated_moved_ref": "iterated(moved ref)",
}


def run(
    run_dir,
    seed: int = 0,
    rounds: int = 3,
    kl_coef: float = 0.1,
    pairs_per_context: int = 128,
    output_coverage: float = 0.1,
    repeats: int = 3,
) -> dict:
    """Defaults: ρ = 0.1 (8 of 85 outputs per context) and β = 0.1 make the single-round R_phi see a thin
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
        common = dict(
            output_coverage=output_coverage, kl_coef=kl_coef, seed=derive_seed(seed, "iterated feedback", rep), fit=fit
        )
        for variant, metrics in _repeat(instance, rounds, pairs_per_context, **common).items():
            runs[variant].append(metrics)
    J_opt = performance(kl_regularised_optimum(reference, oracle, kl_coef), oracle, d)
    J_ref = performance(reference, oracle, d)
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
        "rows": {variant: _rows_by_round(reps, rounds) for variant, reps in runs.items()},
        "winner": _winner(runs, repeats),
        "note": "single-round row r is one round with r·P pairs per seen context from π_ref, so each row's "
        "variants spent the same labels; the moved-reference variant's KL anchor is π_{r−1}, so its KL to "
        "π_ref compounds (π_r ∝ π_ref·exp(Σ_s R_phi_s/β)) and ΔJ is against π*_β at the nominal β.",
    }
    fig = _figure(payload["rows"], rounds, pairs_per_context, kl_coef, output_coverage, repeats, J_opt, J_ref)
    return finish(run_dir, "iterated", payload, fig, started)


# ---------------------------------------------------------------------------------------------
# The rounds.


def rlhf_rounds(
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
        prefs.append(seen_context_preferences(instance, output_coverage, pairs_per_context, g, policy))
        reward_model = fit(instance, _concat_preferences(prefs), seed)
        anchor = policy if move_reference else reference
        previous, policy = policy, kl_regularised_optimum(anchor, reward_model, kl_coef)
        steps.append(
            {"policy": policy, "previous": previous, "reward_model": reward_model, "labels": len(prefs[-1].context)}
        )
    return steps


def _concat_preferences(prefs: list[Preferences]) -> Preferences:
    return Preferences(*(torch.cat([getattr(p, f) for p in prefs]) for f in ("context", "chosen", "rejected")))


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


def _repeat(instance: ToyInstance, rounds: int, pairs_per_context: int, kl_coef: float, **common) -> dict:
    """One feedback draw of every variant: variant → one metrics dict per round, with the labels it
    spent in the round and in total."""
    single = [
        rlhf_rounds(instance, 1, r * pairs_per_context, kl_coef=kl_coef, **common)[0] for r in range(1, rounds + 1)
    ]
    fixed = rlhf_rounds(instance, rounds, pairs_per_context, kl_coef=kl_coef, **common)
    moved = rlhf_rounds(instance, rounds, pairs_per_context, kl_coef=kl_coef, move_reference=True, **common)
    metrics = {}
    for variant, steps in zip(ITERATED_VARIANTS, (single, fixed, moved)):
        spent = itertools.accumulate(s["labels"] for s in steps)
        if variant == "single":  # each row is its own one-round run
            spent = (s["labels"] for s in steps)
        metrics[variant] = [
            round_metrics(instance, s, kl_coef) | {"labels_round": s["labels"], "labels_total": total}
            for s, total in zip(steps, spent)
        ]
    return metrics


# ---------------------------------------------------------------------------------------------
# Metrics.


def oracle_pairwise_accuracy(reward_model, oracle, policy, context_dist) -> float:
    """How often R_phi orders a pair as R* does, on the pairs ``policy`` itself would sample: c ~ d_C,
    o, o' ~ π(·|c) independently, pairs tied under R* excluded (no right answer), R_phi ties half right.
    On π_ref's pairs it is the accuracy where single-round feedback was collected; on π_rlhf's, where the
    policy went (Section 7.6.4). (:func:`rlhflab.losses.pairwise_accuracy` is the sampled counterpart
    on labelled pairs.)"""
    oracle = torch.as_tensor(oracle, dtype=torch.float64)
    reward_model = torch.as_tensor(reward_model, dtype=torch.float64)
    policy, d = torch.as_tensor(policy, dtype=torch.float64), torch.as_tensor(context_dist, dtype=torch.float64)
    true_sign = torch.sign(oracle[:, :, None] - oracle[:, None, :])
    model_sign = torch.sign(reward_model[:, :, None] - reward_model[:, None, :])
    weight = d[:, None, None] * policy[:, :, None] * policy[:, None, :] * (true_sign != 0)
    right = (model_sign == true_sign).double() + 0.5 * (model_sign == 0)
    return float((weight * right).sum() / weight.sum())


def round_metrics(instance: ToyInstance, step: dict, kl_coef: float) -> dict:
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
        "rm_accuracy_on_policy": oracle_pairwise_accuracy(reward_model, oracle, policy, d),
        # Iteration only ever labels seen contexts, so it can only correct R_phi there.
        "rm_accuracy_on_policy_seen": oracle_pairwise_accuracy(reward_model, oracle, policy, d * instance.seen),
        "rm_accuracy_on_policy_unseen": oracle_pairwise_accuracy(reward_model, oracle, policy, d * ~instance.seen),
        "rm_accuracy_on_ref": oracle_pairwise_accuracy(reward_model, oracle, reference, d),
    }


def _rows_by_round(reps: list[list[dict]], rounds: int) -> list[dict]:
    """One row per round: its labels, and each metric's mean ± std over the repeats."""
    metrics = [k for k in reps[0][0] if not k.startswith("labels")]
    rows = []
    for r in range(rounds):
        row = {"round": r + 1, "labels_round": reps[0][r]["labels_round"], "labels_total": reps[0][r]["labels_total"]}
        for key in metrics:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([rep[r][key] for rep in reps])
        rows.append(row)
    return rows


def _winner(runs: dict, repeats: int) -> dict:
    """The variant with the highest mean final J, and every variant's final J minus single-round's."""
    finals = {v: [rep[-1]["J"] for rep in reps] for v, reps in runs.items()}
    best = max(finals, key=lambda v: mean_std(finals[v])[0])
    margins = {}
    for v in ITERATED_VARIANTS:
        # Paired over repeats (same seed, same round-1 data), so the std is that of the difference itself.
        diff, diff_std = mean_std([a - b for a, b in zip(finals[v], finals["single"])])
        margins[v] = {"J_minus_single_mean": diff, "J_minus_single_std": diff_std}
    best_mean, best_std = mean_std(finals[best])
    return {
        "variant": best,
        "final_J_mean": best_mean,
        "final_J_std": best_std,
        "vs_single": margins,
        "text": f"{ITERATED_VARIANTS[best]}: final J {best_mean:.3f}±{best_std:.3f}, "
        f"{margins[best]['J_minus_single_mean']:+.3f}±{margins[best]['J_minus_single_std']:.3f} vs single round "
        f"(paired over {repeats} repeats)",
    }


# ---------------------------------------------------------------------------------------------
# Figure and headline.

_PANELS = (  # (metric, dotted companion metric, title)
    ("J", None, "performance J (Eq. 12) under R*"),
    ("performance_gap_total", "performance_gap_unseen", "ΔJ = |J(π*) − J(π_r)| (dotted: unseen contexts)"),
    ("rm_accuracy_on_policy", "rm_accuracy_on_ref", "R_phi_r pairwise accuracy on π_r's pairs (dotted: π_ref's)"),
    ("KL_ref", None, "KL(π_r‖π_ref)"),
)


def _figure(rows: dict, rounds, pairs_per_context, kl_coef, output_coverage, repeats, J_opt, J_ref):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(19, 4))
    x = list(range(1, rounds + 1))
    for k, (variant, label) in enumerate(ITERATED_VARIANTS.items()):
        xs = [i + (k - 1) * 0.05 for i in x]  # a small offset so the error bars do not hide each other
        for ax, (key, dotted, _) in zip(axes, _PANELS):
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
    for ax, (_, _, title) in zip(axes, _PANELS):
        ax.set_xticks(x, [f"{r}\n({r * pairs_per_context} pairs/ctx)" for r in x])
        ax.set_xlabel("round (labels per seen context so far)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"iterated vs single-round RLHF, β={kl_coef}, ρ={output_coverage}, {repeats} repeats", fontsize=10)
    return fig


def headline(result: dict) -> str:
    """Each variant's final J, the moved and fixed references' KL to π_ref, J(π*) and J(π_ref)."""
    finals = {v: rows[-1] for v, rows in result["rows"].items()}
    return (
        f"final J ({result['rounds']} rounds × {result['pairs_per_context_per_round']} pairs/ctx): "
        + ", ".join(f"{SHORT_NAMES[v]} {r['J_mean']:.3f}±{r['J_std']:.3f}" for v, r in finals.items())
        + f" (moved ref KL to π_ref {finals['iterated_moved_ref']['KL_ref_mean']:.2f} vs "
        f"{finals['iterated_fixed_ref']['KL_ref_mean']:.2f} fixed); "
        f"J(π*) {result['J_opt']:.3f}, J(π_ref) {result['J_ref']:.3f}"
    )
