"""``rlhflab toy beta``: J(π*_β), J(π_rlhf,β) and KL against β (Section 6.2): small β exploits R_phi's errors."""

from __future__ import annotations

import time

import torch

from rlhflab.toy.exact import kl_divergence, kl_regularised_optimum, performance, performance_gap
from rlhflab.toy.experiments.common import PARTIAL_OUTPUT_COVERAGE, lab_instance, partial_reward_model
from rlhflab.toy.mdp import ToyInstance
from rlhflab.toy.outputs import finish, pyplot


def run(run_dir, seed: int = 0, kl_coefs=None) -> dict:
    """One R_phi (feedback on the seen contexts, a fraction ρ of outputs), optimised exactly (Eq. 17)
    at every β of ``kl_coefs`` (default: 25 from 0.01 to 10), against the optimum of R* at that β."""
    started = time.perf_counter()
    instance = lab_instance(seed)
    reward_model = partial_reward_model(instance, seed)
    rows = [_row(instance, reward_model, beta) for beta in (kl_coefs or torch.logspace(-2, 1, 25).tolist())]
    best = max(rows, key=lambda r: r["J_rlhf"])
    payload = {
        "experiment": "beta_tradeoff",
        "seed": seed,
        "context_coverage": float(instance.seen.double().mean()),
        "output_coverage": PARTIAL_OUTPUT_COVERAGE,
        "rows": rows,
        "best_kl_coef_for_J_rlhf": best["kl_coef"],
        "best_J_rlhf": best["J_rlhf"],
    }
    return finish(run_dir, "beta_tradeoff", payload, _figure(instance, rows), started)


def _row(instance: ToyInstance, reward_model: torch.Tensor, beta: float) -> dict:
    reference, d = instance.require_reference(), instance.context_dist
    gap = performance_gap(instance, reward_model, beta)
    optimum = kl_regularised_optimum(reference, instance.oracle_reward, beta)
    return {
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


def _figure(instance: ToyInstance, rows: list[dict]):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    b = [r["kl_coef"] for r in rows]
    J_ref = performance(instance.require_reference(), instance.oracle_reward, instance.context_dist)
    axes[0].plot(b, [r["J_opt"] for r in rows], label="J(π*_β) (oracle reward)")
    axes[0].plot(b, [r["J_rlhf"] for r in rows], label="J(π_rlhf,β) (reward model)")
    axes[0].axhline(J_ref, color="gray", ls=":", label="J(π_ref)")
    axes[1].plot(b, [r["KL_opt"] for r in rows], label="KL(π*‖π_ref)")
    axes[1].plot(b, [r["KL_rlhf"] for r in rows], label="KL(π_rlhf‖π_ref)")
    axes[2].plot(b, [r["performance_gap_seen"] for r in rows], label="ΔJ seen contexts")
    axes[2].plot(b, [r["performance_gap_unseen"] for r in rows], label="ΔJ unseen contexts")
    for ax, title in zip(axes, ("performance J (Eq. 12)", "KL to π_ref", "misalignment ΔJ (Sec. 6.2)")):
        ax.set_xscale("log")
        ax.set_xlabel("β (kl_coef)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return fig


def headline(result: dict) -> str:
    """ΔJ on unseen contexts at the smallest and largest β, and the β where J(π_rlhf) peaks."""
    first, last = result["rows"][0], result["rows"][-1]
    return (
        f"ΔJ unseen {first['performance_gap_unseen']:.3f} at β={first['kl_coef']:.2g} vs "
        f"{last['performance_gap_unseen']:.3f} at β={last['kl_coef']:.2g}; best J(π_rlhf)={result['best_J_rlhf']:.3f} "
        f"at β={result['best_kl_coef_for_J_rlhf']:.2g}"
    )
