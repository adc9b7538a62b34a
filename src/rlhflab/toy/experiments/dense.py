"""``rlhflab toy dense``: dense (potential-shaped) against sparse rewards on the toy MDP, exactly.

1. Exactness (:mod:`rlhflab.toy.shaping`): R' = R* − Φ(c, ∅) for every (c, o) and π*_β(R') =
   π*_β(R*). R*'s structured oracle gives the empty output 0, so Φ(c, ∅) = 0 there; the same check
   on a random reward table (seeded, so Φ(c, ∅) varies by context) exercises the per-context shift.
2. Sample efficiency: the real PPO trainer (the toy trainers' settings, β = ``beta``) with
   ``dense_rewards`` off and on, ``repeats`` training seeds shared by both variants, the budget
   max(``budgets``) iterations (the learning rate decays over it); the exact gap closed after every
   iteration, reported at ``budgets`` as mean ± std over seeds and as the paired difference dense − sparse.

With GAE λ = 1 (the trainers' setting) the advantage is the Monte-Carlo return minus V(s_k), and
the shaped return from token k is the sparse one minus Φ_k: shaping acts as a state-dependent
baseline the critic no longer has to learn. Before whitening and clipping that changes the
gradient's variance, not its mean; whitening divides by the advantages' std, so lower-variance
advantages also take larger normalised steps.
"""

from __future__ import annotations

import math
import time

import torch

from rlhflab.seeds import derive_seed
from rlhflab.toy.experiments.common import mean_std
from rlhflab.toy.mdp import build_lab
from rlhflab.toy.outputs import finish, pyplot
from rlhflab.toy.shaping import exactness
from rlhflab.toy.trainers import DEFAULT_BETA, TrainerSettings, default_settings, run_policy_gradient

DENSE_VARIANTS = {"sparse": False, "dense": True}


def run(
    run_dir,
    seed: int = 0,
    repeats: int = 3,
    budgets=(5, 10, 20, 40),
    beta: float = DEFAULT_BETA,
    lab=None,
) -> dict:
    """On the default instance (16 contexts × 85 outputs); ``lab`` = (instance, π_ref model,
    tokenizer) replaces it (the tests)."""
    started = time.perf_counter()
    instance, model, tokenizer = lab if lab is not None else build_lab(seed)
    g = torch.Generator().manual_seed(derive_seed(seed, "dense: random reward table"))
    random_table = torch.randn(instance.num_contexts, instance.num_outputs, generator=g, dtype=torch.float64)
    checks = {
        "R*": exactness(instance, tokenizer, (beta,)),
        "random": exactness(instance, tokenizer, (beta,), reward=random_table),
    }
    horizon = max(budgets)
    seeds = [derive_seed(seed, "dense: ppo run", r) % 2**32 for r in range(repeats)]  # the loop seeds numpy: 32 bits
    traces, walls = _train(instance, model, tokenizer, seeds, horizon, beta)
    payload = {
        "experiment": "dense",
        "seed": seed,
        "kl_coef": beta,
        "repeats": repeats,
        "train_seeds": seeds,
        "budgets": list(budgets),
        "num_iterations": horizon,
        "exactness": checks,
        "rows": [_row(traces, budget) for budget in budgets],
        "traces": traces,
        "train_wall_time_s": {name: mean_std(w)[0] for name, w in walls.items()},
        "settings": {name: _ppo_settings(horizon, flag).overrides for name, flag in DENSE_VARIANTS.items()},
    }
    return finish(run_dir, "dense", payload, _figure(traces, budgets, repeats, beta), started)


def _ppo_settings(num_iterations: int, dense: bool) -> TrainerSettings:
    """The toy trainers' PPO (GAE λ = 1, whitened advantages, 2 epochs × 4 minibatches, 32 samples
    per context, learning rate 1e-2 decayed linearly over ``num_iterations``), ± dense rewards."""
    ppo = next(s for s in default_settings() if s.name == "ppo")
    overrides = {**ppo.overrides, "num_iterations": num_iterations, "dense_rewards": dense}
    return TrainerSettings("ppo", overrides, label="ppo_dense" if dense else "ppo")


def _train(instance, model, tokenizer, seeds: list[int], horizon: int, beta: float):
    """Per variant, one trace of the exact gap closed per training seed (iteration 0 first, at 0) and
    the runs' wall times."""
    traces: dict[str, list[list[float]]] = {name: [] for name in DENSE_VARIANTS}
    walls: dict[str, list[float]] = {name: [] for name in DENSE_VARIANTS}
    for train_seed in seeds:
        for name, flag in DENSE_VARIANTS.items():
            # stop_at = inf never stops: the stopping rule only records the exact gap every iteration
            res = run_policy_gradient(
                instance,
                model,
                tokenizer,
                _ppo_settings(horizon, flag),
                beta=beta,
                seed=train_seed,
                stop_at=math.inf,
                check_every=1,
            )
            traces[name].append([0.0] + [gap for _, gap in res["gap_trace"]])
            walls[name].append(res["wall_time_s"])
    return traces, walls


def _row(traces: dict, budget: int) -> dict:
    row = {"iterations": budget}
    for name in DENSE_VARIANTS:
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std([t[budget] for t in traces[name]])
    diffs = [d[budget] - s[budget] for d, s in zip(traces["dense"], traces["sparse"])]
    row["dense_minus_sparse_mean"], row["dense_minus_sparse_std"] = mean_std(diffs)
    return row


def _figure(traces: dict, budgets, repeats: int, beta: float):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = list(range(max(budgets) + 1))
    for name, color in (("sparse", "tab:blue"), ("dense", "tab:orange")):
        curve = torch.tensor(traces[name], dtype=torch.float64)
        mean, std = curve.mean(0), curve.std(0, unbiased=False)
        ax.plot(xs, mean.tolist(), color=color, label=f"PPO, {name} rewards (mean of {repeats} seeds)")
        ax.fill_between(xs, (mean - std).tolist(), (mean + std).tolist(), color=color, alpha=0.2, lw=0)
    for budget in budgets:
        ax.axvline(budget, color="gray", ls=":", lw=0.6)
    ax.set_xlabel("PPO iteration (16 contexts × 32 samples each)")
    ax.set_ylabel("gap closed of J − β·KL (exact)")
    ax.set_title(f"dense (potential-shaped) vs sparse rewards, β={beta}; band: ± std over seeds", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def headline(result: dict) -> str:
    """PPO's gap closed, sparse and dense, at each budget with the paired difference; and how exact
    the shaping identities came out."""
    checks = result["exactness"].values()
    return (
        f"PPO gap closed sparse/dense ({result['repeats']} seeds, paired dense − sparse): "
        + ", ".join(
            f"{r['iterations']} it {r['sparse_mean']:.3f}±{r['sparse_std']:.3f}/{r['dense_mean']:.3f}±"
            f"{r['dense_std']:.3f} ({r['dense_minus_sparse_mean']:+.3f}±{r['dense_minus_sparse_std']:.3f})"
            for r in result["rows"]
        )
        + f"; exact: max |R' − (R − Φ(c,∅))| {max(c['return_error'] for c in checks):.0e}, "
        f"max |π*_β(R') − π*_β(R)| {max(max(c['optimum_error'].values()) for c in checks):.0e}"
    )
