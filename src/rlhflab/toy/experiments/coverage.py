"""``rlhflab toy coverage``: ΔJ (Section 6.2) over a grid of context coverage κ × output coverage ρ (Section 5)."""

from __future__ import annotations

import itertools
import math
import time

import torch

from rlhflab.seeds import derive_seed
from rlhflab.toy.exact import performance_gap
from rlhflab.toy.experiments.common import lab_instance, mean_std, reward_model_for
from rlhflab.toy.mdp import ToyInstance
from rlhflab.toy.outputs import finish, pyplot


def run(
    run_dir,
    seed: int = 0,
    kl_coef: float = 0.1,
    context_coverages=(0.125, 0.25, 0.5, 0.75, 1.0),
    output_coverages=(0.05, 0.1, 0.25, 0.5, 1.0),
    repeats: int = 2,
) -> dict:
    """ΔJ over a κ × ρ grid, seen vs unseen contexts, mean ± std over ``repeats`` feedback draws;
    every cell of a repeat draws from the same seed (common random numbers)."""
    started = time.perf_counter()
    instance = lab_instance(seed)
    repeat_seeds = [derive_seed(seed, "coverage feedback", r) for r in range(repeats)]
    cells = [
        _cell(instance, kappa, rho, kl_coef, repeat_seeds)
        for kappa, rho in itertools.product(context_coverages, output_coverages)
    ]
    payload = {
        "experiment": "coverage",
        "seed": seed,
        "kl_coef": kl_coef,
        "repeats": repeats,
        "cells": cells,
        "note": "ΔJ = |J(π*) − J(π_rlhf)| under d_C restricted to seen / unseen contexts; unseen is "
        "undefined at κ = 1.",
    }
    fig = _figure(cells, context_coverages, output_coverages, kl_coef)
    return finish(run_dir, "coverage", payload, fig, started)


def _cell(instance: ToyInstance, kappa: float, rho: float, kl_coef: float, repeat_seeds: list[int]) -> dict:
    """ΔJ (total, seen, unseen) of R_phi fitted on feedback at coverage (κ, ρ), over the repeats."""
    gaps = []
    for repeat_seed in repeat_seeds:
        reward_model, seen = reward_model_for(instance, kappa, rho, seed=repeat_seed)
        gaps.append(performance_gap(instance, reward_model, kl_coef, seen))
    cell = {"context_coverage": kappa, "output_coverage": rho}
    for key in ("total", "seen", "unseen"):
        cell[f"performance_gap_{key}"], cell[f"performance_gap_{key}_std"] = mean_std([g[key] for g in gaps])
    return cell


def _figure(cells: list[dict], context_coverages, output_coverages, kl_coef: float):
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
    return fig


def headline(result: dict) -> str:
    """ΔJ at the lowest coverage (seen and unseen contexts) and at full coverage."""
    low = min(result["cells"], key=lambda c: (c["context_coverage"], c["output_coverage"]))
    full = max(result["cells"], key=lambda c: (c["context_coverage"], c["output_coverage"]))
    return (
        f"ΔJ at κ={low['context_coverage']},ρ={low['output_coverage']}: seen {low['performance_gap_seen']:.3f}, "
        f"unseen {low['performance_gap_unseen']:.3f}; at κ=ρ=1: {full['performance_gap_total']:.3f}"
    )
