"""``rlhflab toy overopt``: reward-model over-optimisation, gold J against proxy Ĵ (Gao et al. 2023).

Gold J (under R*) and proxy Ĵ (under R_phi) against d = √KL, relative to π_ref, for best-of-n
selecting by R_phi (exact) and for an RL family, with Gao et al.'s forms fitted.
"""

from __future__ import annotations

import math
import time

import torch

from rlhflab.toy.exact import best_of_n_exact, kl_divergence, kl_regularised_optimum, performance
from rlhflab.toy.experiments.common import PARTIAL_OUTPUT_COVERAGE, lab_instance, partial_reward_model
from rlhflab.toy.mdp import ToyInstance
from rlhflab.toy.outputs import finish, pyplot


def run(run_dir, seed: int = 0, rl_checkpoints=None, max_n: int = 1024, feedback_budgets=(128, 1024)) -> dict:
    """Once per reward model, fitted on ``feedback_budgets`` preference pairs per covered context (a
    weaker proxy is over-optimised sooner).

    rl_checkpoints: optional [(KL, J, Ĵ), ...] from real RL runs; without them the RL family is the
    closed-form path π_rlhf,β ∝ π_ref·exp(R_phi/β) as β goes from large to small.
    """
    started = time.perf_counter()
    instance = lab_instance(seed)
    curves = {}
    for budget in feedback_budgets:
        reward_model = partial_reward_model(instance, seed, pairs_per_context=budget)
        curves[str(budget)] = _curves(instance, reward_model, rl_checkpoints, max_n)
    payload = {
        "experiment": "overoptimisation",
        "seed": seed,
        "context_coverage": float(instance.seen.double().mean()),
        "output_coverage": PARTIAL_OUTPUT_COVERAGE,
        "curves_by_pairs_per_context": curves,
    }
    return finish(run_dir, "overoptimisation", payload, _figure(curves), started)


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


def _best_of_n_points(instance: ToyInstance, reward_model, max_n: int, J_ref: float, J_hat_ref: float) -> list[dict]:
    ns = sorted({int(round(x)) for x in torch.logspace(0, math.log10(max_n), 30).tolist()})
    points = []
    for n in ns:
        res = best_of_n_exact(instance, n, reward=reward_model)
        points.append(
            {
                "n": n,
                "KL": res["KL"],
                "KL_formula": res["KL_formula"],
                "d": math.sqrt(res["KL"]),
                "gold": res["J"] - J_ref,
                "proxy": res["J_hat"] - J_hat_ref,
            }
        )
    return points


def _kl_path_points(instance: ToyInstance, reward_model, J_ref: float, J_hat_ref: float) -> list[dict]:
    """The closed-form RL family: π_rlhf,β ∝ π_ref·exp(R_phi/β) (Eq. 17), β from 10 down to 0.01."""
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    points = []
    for beta in torch.logspace(1, -2, 30).tolist():
        policy = kl_regularised_optimum(reference, reward_model, beta)
        kl = kl_divergence(policy, reference, d)
        points.append(
            {
                "kl_coef": beta,
                "KL": kl,
                "d": math.sqrt(kl),
                "gold": performance(policy, oracle, d) - J_ref,
                "proxy": performance(policy, reward_model, d) - J_hat_ref,
            }
        )
    return points


def _checkpoint_points(rl_checkpoints, J_ref: float, J_hat_ref: float) -> list[dict]:
    return [
        {"KL": float(k), "d": math.sqrt(max(float(k), 0.0)), "gold": float(j) - J_ref, "proxy": float(jh) - J_hat_ref}
        for k, j, jh in rl_checkpoints
    ]


def _curves(instance: ToyInstance, reward_model, rl_checkpoints, max_n: int) -> dict:
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    J_ref, J_hat_ref = performance(reference, oracle, d), performance(reference, reward_model, d)
    bon = _best_of_n_points(instance, reward_model, max_n, J_ref, J_hat_ref)
    if rl_checkpoints:
        source, rl = "rl checkpoints", _checkpoint_points(rl_checkpoints, J_ref, J_hat_ref)
    else:
        source, rl = "closed-form KL path", _kl_path_points(instance, reward_model, J_ref, J_hat_ref)
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


def _figure(curves: dict):
    import numpy as np

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
    return fig


def headline(result: dict) -> str:
    """Per feedback budget, the fitted (α, β, R²) of the gold curves, best-of-n and RL."""
    parts = []
    for budget, c in result["curves_by_pairs_per_context"].items():
        f = c["fits"]
        parts.append(
            f"{budget} pairs/ctx: BoN gold α={f['bon_gold']['alpha']:.3f} β={f['bon_gold']['beta']:.3f} "
            f"R²={f['bon_gold']['r2']:.3f}, RL gold α={f['rl_gold']['alpha']:.3f} "
            f"β={f['rl_gold']['beta']:.3f} R²={f['rl_gold']['r2']:.3f} ({c['rl']['source']})"
        )
    return "; ".join(parts)
