"""``rlhflab toy ensemble``: does a reward-model ensemble delay over-optimisation (Sections 7.5, 7.7;
Coste et al. 2023)?

Per repeat: one feedback set on the seen contexts (κ = 1/2, a fraction ρ of π_ref's outputs,
``pairs_per_context`` pairs labelled from R*, Eq. 8); a single R_phi fitted to it (Eq. 11), and K =
``members`` more fitted to the same pairs with their own seeds ("seeds") or each to its own
bootstrap resample of them ("bootstrap"); every member centred per context under π_ref. Each
ensemble is combined by mean, WCO (min over members) and UWO (mean − λ·variance, λ =
``uncertainty_coef``; :func:`rlhflab.rewards.ensemble.ensemble_reward`). Every reward is then optimised two
exact ways: best-of-n from π_ref selecting by it (n = 1, 2, 4, …, ``max_n``) and the KL-regularised
optimum π ∝ π_ref·exp(R/β) (Eq. 17) along ``kl_coefs``; J under R*, Ĵ under the reward optimised,
KL to π_ref. A rising J that falls again as KL grows is over-optimisation; a conservative ensemble
should flatten or delay the fall. Mean ± std over ``repeats`` feedback draws; all variants of a
repeat share its feedback (common random numbers), so each is also compared with the single model
paired, at the same KL (``matched_kls``, within reach of every curve: best-of-256 reaches KL ≈ 3.8).
Also: the members' disagreement (std over members) under π_ref on seen and unseen contexts.
"""

from __future__ import annotations

import math
import time

import torch

from rlhflab.rewards.ensemble import Objective, bootstrap_indices, ensemble_reward, member_disagreement, member_seed
from rlhflab.seeds import derive_seed
from rlhflab.toy.exact import best_of_n_exact, kl_divergence, kl_regularised_optimum, performance
from rlhflab.toy.experiments.common import (
    Preferences,
    fit_reward_model,
    lab_instance,
    mean_std,
    seen_context_preferences,
)
from rlhflab.toy.mdp import ToyInstance
from rlhflab.toy.outputs import finish, pyplot

ENSEMBLE_DATA = ("seeds", "bootstrap")
OBJECTIVE_NAMES = ("mean", "wco", "uwo")
CURVES = ("best_of_n", "kl_path")


def run(
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
    """Defaults: ρ = 0.1 and 128 pairs per seen context, as in the iterated experiment: a single R_phi
    there gains on R* at first and loses it again along the Eq. 17 path. K = 4 (Coste et al. find
    4–5 members enough); λ = 1 as in the product, so large-magnitude members are penalised hard.
    """
    started = time.perf_counter()
    instance = lab_instance(seed)
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    ns = [2**i for i in range(int(math.log2(max_n)) + 1)]
    kl_coefs = kl_coefs or torch.logspace(1, -2.5, 15).tolist()
    objectives = {"mean": Objective("mean"), "wco": Objective("wco"), "uwo": Objective("uwo", uncertainty_coef)}
    feedback = dict(output_coverage=output_coverage, pairs_per_context=pairs_per_context, members=members)
    runs, disagreement = _repeats(instance, seed, repeats, feedback, objectives, ns, kl_coefs)
    J_ref = performance(reference, oracle, d)
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
        "J_opt_at_min_kl_coef": performance(kl_regularised_optimum(reference, oracle, kl_coefs[-1]), oracle, d),
        "curves": {variant: _bands(reps, ns, kl_coefs) for variant, reps in runs.items()},
        "summary": {variant: {c: _peak(runs, variant, c, matched_kls) for c in CURVES} for variant in runs},
        "disagreement_under_ref": {
            data: {where: dict(zip(("mean", "std"), mean_std(v))) for where, v in by.items()}
            for data, by in disagreement.items()
        },
        "note": "members centred per context under π_ref; 'single' is one model on the full feedback; J_drop is "
        "the peak J minus J at the end of the curve (largest n / smallest β), per repeat.",
    }
    return finish(run_dir, "ensemble", payload, _figure(payload, max_n), started)


# ---------------------------------------------------------------------------------------------
# The rewards of one repeat.


def _repeats(instance: ToyInstance, seed: int, repeats: int, feedback: dict, objectives: dict, ns, kl_coefs):
    """variant → one optimisation_curves dict per repeat; and member data → {seen, unseen} → the
    members' disagreement under π_ref, one value per repeat."""
    runs: dict[str, list[dict]] = {}
    disagreement = {data: {"seen": [], "unseen": []} for data in ENSEMBLE_DATA}
    for rep in range(repeats):
        # The repeat's seed draws its feedback and seeds its fits, as iterated RLHF's does.
        rep_seed = derive_seed(seed, "ensemble repeat", rep)
        prefs = seen_context_preferences(
            instance,
            feedback["output_coverage"],
            feedback["pairs_per_context"],
            torch.Generator().manual_seed(rep_seed),
        )
        rewards, spreads = _repeat_rewards(instance, prefs, rep_seed, feedback["members"], objectives)
        for data, by_where in spreads.items():
            for where, value in by_where.items():
                disagreement[data][where].append(value)
        for variant, reward in rewards.items():
            runs.setdefault(variant, []).append(optimisation_curves(instance, reward, ns, kl_coefs))
    return runs, disagreement


def _bootstrap_preferences(prefs: Preferences, seed: int) -> Preferences:
    index = torch.tensor(bootstrap_indices(len(prefs.context), seed))
    return Preferences(prefs.context[index], prefs.chosen[index], prefs.rejected[index])


def centred_per_context(instance: ToyInstance, table: torch.Tensor) -> torch.Tensor:
    """R(c, o) − E_{o'~π_ref(·|c)} R(c, o'). Eq. 11 compares outputs of one context, so each member is
    free up to a shift per context; here π_ref is known on every context, so that shift is removed
    exactly (the product, which cannot sample every context it will score, removes a global one)."""
    return table - (instance.require_reference() * table).sum(-1, keepdim=True)


def _member_tables(instance: ToyInstance, prefs: Preferences, fit_seed: int, members: int, data: str) -> torch.Tensor:
    """The K members' centred tables (K, C, O): each fitted with its own seed, to the same pairs
    ("seeds") or to its own bootstrap resample of them ("bootstrap")."""
    tables = []
    for k in range(members):
        k_seed = member_seed(fit_seed, k)
        k_prefs = _bootstrap_preferences(prefs, k_seed) if data == "bootstrap" else prefs
        tables.append(centred_per_context(instance, fit_reward_model(instance, k_prefs, k_seed)))
    return torch.stack(tables)


def _repeat_rewards(
    instance: ToyInstance, prefs: Preferences, fit_seed: int, members: int, objectives: dict
) -> tuple[dict, dict]:
    """variant → reward table, for the single model ("single") and every (member data, objective)
    ensemble ("seeds/mean", …); and member data → {seen, unseen} → the members' std under π_ref,
    averaged over d_C on those contexts."""
    reference, d = instance.require_reference(), instance.context_dist
    rewards = {"single": centred_per_context(instance, fit_reward_model(instance, prefs, fit_seed))}
    disagreement = {}
    for data in ENSEMBLE_DATA:
        stacked = _member_tables(instance, prefs, fit_seed, members, data)
        spread = (reference * member_disagreement(stacked)).sum(-1)  # E_{π_ref} of the members' std, (C,)
        disagreement[data] = {
            where: float((d[mask] * spread[mask]).sum() / d[mask].sum())
            for where, mask in (("seen", instance.seen), ("unseen", ~instance.seen))
        }
        for name, objective in objectives.items():
            rewards[f"{data}/{name}"] = ensemble_reward(stacked, objective)
    return rewards, disagreement


# ---------------------------------------------------------------------------------------------
# Curves and their summaries.


def optimisation_curves(instance: ToyInstance, reward: torch.Tensor, ns, kl_coefs) -> dict:
    """J under R*, Ĵ under ``reward`` and KL to π_ref, of best-of-n selecting by ``reward`` (exact) for
    each n, and of π ∝ π_ref·exp(reward/β) (Eq. 17) for each β."""
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    bon = [best_of_n_exact(instance, n, reward=reward) for n in ns]
    paths = [kl_regularised_optimum(reference, reward, beta) for beta in kl_coefs]
    return {
        "best_of_n": [{"J": b["J"], "J_hat": b["J_hat"], "KL": b["KL"]} for b in bon],
        "kl_path": [
            {"J": performance(p, oracle, d), "J_hat": performance(p, reward, d), "KL": kl_divergence(p, reference, d)}
            for p in paths
        ],
    }


def _bands(reps: list[dict], ns, kl_coefs) -> dict:
    """Per curve, one point per n (or β) with J, Ĵ and KL as mean ± std over the repeats."""
    bands = {}
    for curve, xs in (("best_of_n", [{"n": n} for n in ns]), ("kl_path", [{"kl_coef": b} for b in kl_coefs])):
        points = [dict(x) for x in xs]
        for i, point in enumerate(points):
            for key in ("J", "J_hat", "KL"):
                point[f"{key}_mean"], point[f"{key}_std"] = mean_std([rep[curve][i][key] for rep in reps])
        bands[curve] = points
    return bands


def _J_at(points: list[dict], kl: float) -> float:
    """J where the curve's KL is ``kl`` (linear between its points; KL grows along both curves),
    so that rewards are compared at the same distance from π_ref; NaN beyond the curve's reach."""
    import numpy as np

    kls, js = [p["KL"] for p in points], [p["J"] for p in points]
    return float(np.interp(kl, kls, js)) if kls[0] <= kl <= kls[-1] else math.nan


def _matched(runs: dict, variant: str, curve: str, kl: float) -> dict:
    """J at KL = ``kl`` over the repeats, and its paired difference to the single model's."""
    js = [_J_at(rep[curve], kl) for rep in runs[variant]]
    diffs = [j - _J_at(one[curve], kl) for j, one in zip(js, runs["single"])]
    row = {"KL": kl}
    row["J_mean"], row["J_std"] = mean_std(js)
    row["vs_single_mean"], row["vs_single_std"] = mean_std(diffs)
    return row


def _peak(runs: dict, variant: str, curve: str, matched_kls) -> dict:
    """Per repeat: the highest J along the curve, the KL where it is reached, J at the curve's end,
    and J at each KL of ``matched_kls`` beside its paired difference to the single model's."""
    reps = runs[variant]
    best = [max(rep[curve], key=lambda p: p["J"]) for rep in reps]
    out = {"J_at_KL": [_matched(runs, variant, curve, kl) for kl in matched_kls]}
    for key, values in (
        ("J_peak", [b["J"] for b in best]),
        ("KL_at_peak", [b["KL"] for b in best]),
        ("J_end", [rep[curve][-1]["J"] for rep in reps]),
        ("KL_end", [rep[curve][-1]["KL"] for rep in reps]),
        ("J_drop", [b["J"] - rep[curve][-1]["J"] for b, rep in zip(best, reps)]),
    ):
        out[f"{key}_mean"], out[f"{key}_std"] = mean_std(values)
    return out


# ---------------------------------------------------------------------------------------------
# Figure and headline.


def _plot_variant(ax, points: list[dict], variant: str) -> None:
    """J (mean ± std, solid) and Ĵ (dotted, same colour) of one variant against KL."""
    kl = [p["KL_mean"] for p in points]
    bars = ax.errorbar(
        kl,
        [p["J_mean"] for p in points],
        yerr=[p["J_std"] for p in points],
        marker="o",
        ms=3,
        capsize=2,
        label=f"J (R*), {variant}",
    )
    ax.plot(kl, [p["J_hat_mean"] for p in points], ls=":", color=bars[0].get_color(), lw=1)


def _figure(payload: dict, max_n: int):
    kl_coefs, J_ref = payload["kl_coefs"], payload["J_ref"]
    plt = pyplot()
    fig, axes = plt.subplots(len(ENSEMBLE_DATA), 2, figsize=(12, 4.2 * len(ENSEMBLE_DATA)), squeeze=False)
    for row, data in zip(axes, ENSEMBLE_DATA):
        for ax, curve, title in (
            (row[0], "best_of_n", f"best-of-n (exact), n = 1 … {max_n}"),
            (row[1], "kl_path", f"π ∝ π_ref·exp(R/β) (Eq. 17), β = {kl_coefs[0]:.3g} … {kl_coefs[-1]:.3g}"),
        ):
            for variant in ("single", *(f"{data}/{name}" for name in OBJECTIVE_NAMES)):
                _plot_variant(ax, payload["curves"][variant][curve], variant)
            ax.axhline(J_ref, color="gray", ls=":", lw=0.8, label=f"J(π_ref) = {J_ref:.3f}")
            ax.set_xlabel("KL(π‖π_ref)")
            ax.set_title(f"{title}; members: {data}", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(
        f"reward-model ensembles, K={payload['members']}, ρ={payload['output_coverage']}, "
        f"{payload['pairs_per_context']} pairs/seen context, UWO λ={payload['uncertainty_coef']}, "
        f"{payload['repeats']} repeats; solid: J under R* (mean ± std), dotted: Ĵ under the reward optimised",
        fontsize=10,
    )
    return fig


def _curve_headline(result: dict, curve: str, label: str) -> str:
    """The single model's J at the largest matched KL, and each ensemble's paired difference to it."""

    def at(variant: str) -> dict:
        return result["summary"][variant][curve]["J_at_KL"][-1]

    diffs = "; ".join(
        f"{data} "
        + " ".join(
            f"{name} {at(f'{data}/{name}')['vs_single_mean']:+.3f}±{at(f'{data}/{name}')['vs_single_std']:.3f}"
            for name in OBJECTIVE_NAMES
        )
        for data in ENSEMBLE_DATA
    )
    return f"{label}: single {at('single')['J_mean']:.3f}, ensemble − single: {diffs}"


def headline(result: dict) -> str:
    """At the largest matched KL, per optimiser: the single model's J and every ensemble's paired
    difference to it; then the members' disagreement on unseen and seen contexts."""
    kl = result["summary"]["single"]["best_of_n"]["J_at_KL"][-1]["KL"]
    spread = result["disagreement_under_ref"]
    return (
        f"J at KL={kl:g} (K={result['members']}, ρ={result['output_coverage']}, {result['repeats']} repeats, paired): "
        + " | ".join(
            _curve_headline(result, curve, label) for curve, label in (("best_of_n", "BoN"), ("kl_path", "Eq.17"))
        )
        + " | member std unseen/seen: "
        + ", ".join(
            f"{data} {spread[data]['unseen']['mean']:.3f}/{spread[data]['seen']['mean']:.3f}" for data in spread
        )
        + f" (J_ref {result['J_ref']:.3f})"
    )
