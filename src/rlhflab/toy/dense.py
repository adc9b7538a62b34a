"""Dense per-token rewards on the toy MDP: exactly what shaping changes, and what it buys PPO.

``RLConfig.dense_rewards`` rewards every token by potential-based shaping (Ng et al. 1999;
:func:`rlhflab.losses.potential_shaped_rewards`): Φ_k is the reward source's score of the
completion's first k tokens, r'_k = Φ_{k+1} − Φ_k, and the last token gets R − Φ_{n−1}, so the
return is R − Φ_0. In the toy MDP every prefix of an output is itself an output (the same tokens
ended there), and the toy reward source maps decoded text to the output it spells: a prefix is
scored as the output that stops after it. Φ(c, prefix) = R*(c, prefix) is then a table lookup and
the shaped return table R'(c, o) is exact for every (c, o) — the check that the optimum of Eq. 17
does not move is a computation, not a sample.

The sample-efficiency half runs the real PPO trainer (``rlhflab.toy.trainers``) with and without
``dense_rewards``, paired by seed, and reads the exact gap to π*_β after every iteration.
"""

from __future__ import annotations

import math
import time

import torch

from rlhflab.losses import potential_shaped_rewards
from rlhflab.seeds import derive_seed
from rlhflab.toy.exact import kl_regularised_optimum
from rlhflab.toy.mdp import ToyInstance, build_lab, enumeration_batch
from rlhflab.toy.outputs import finish, pyplot
from rlhflab.toy.trainers import DEFAULT_BETA, TrainerSettings, default_settings, output_index, run_policy_gradient

VARIANTS = {"sparse": False, "dense": True}


def shaped_return_table(instance: ToyInstance, tokenizer, reward: torch.Tensor | None = None) -> dict:
    """R'(c, o) = Σ_k r'_k for every (c, o), float64, with Φ_k the table's value at the output that
    the first k completion tokens spell once decoded as PPO decodes them
    (``tokenizer.decode(ids[:k], skip_special_tokens=True)``, mapped to an output as
    :func:`~rlhflab.toy.trainers.oracle_reward_source` maps text). ``reward`` defaults to R*.

    Returns the shaped per-token rewards (C·O, T), the potentials (C·O, T), the completion lengths
    (C·O,), the shaped return table R' (C, O) and Φ(c, ∅) (C,)."""
    table = instance.oracle_reward if reward is None else torch.as_tensor(reward, dtype=torch.float64)
    columns = output_index(instance)
    batch = enumeration_batch(instance, tokenizer)
    ids, lengths = batch.completion_ids, batch.completion_mask.sum(-1)
    potentials = torch.zeros(ids.shape, dtype=torch.float64)
    for row in range(ids.shape[0]):
        context = row // instance.num_outputs
        for k in range(int(lengths[row])):
            prefix = tokenizer.decode(ids[row, :k], skip_special_tokens=True)
            potentials[row, k] = table[context, columns[tuple(prefix.split())]]
    shaped = potential_shaped_rewards(potentials, table.flatten(), lengths)
    return {
        "token_rewards": shaped,
        "potentials": potentials,
        "lengths": lengths,
        "shaped_return": shaped.sum(-1).view(instance.num_contexts, instance.num_outputs),
        "potential_of_empty": table[:, columns[()]],
    }


def exactness(instance: ToyInstance, tokenizer, kl_coefs=(DEFAULT_BETA,), reward: torch.Tensor | None = None) -> dict:
    """max |R' − (R − Φ(c, ∅))| over every (c, o), and max |π*_β(R') − π*_β(R)| (Eq. 17) for each β."""
    table = instance.oracle_reward if reward is None else torch.as_tensor(reward, dtype=torch.float64)
    shaped = shaped_return_table(instance, tokenizer, table)
    reference = instance.require_reference()
    phi0 = shaped["potential_of_empty"]
    return {
        "return_error": float((shaped["shaped_return"] - (table - phi0[:, None])).abs().max()),
        "optimum_error": {
            str(beta): float(
                (
                    kl_regularised_optimum(reference, shaped["shaped_return"], beta)
                    - kl_regularised_optimum(reference, table, beta)
                )
                .abs()
                .max()
            )
            for beta in kl_coefs
        },
        "potential_of_empty_min": float(phi0.min()),
        "potential_of_empty_max": float(phi0.max()),
    }


def _ppo_settings(num_iterations: int, dense: bool) -> TrainerSettings:
    """The toy trainers' PPO (GAE λ = 1, whitened advantages, 2 epochs × 4 minibatches, 32 samples
    per context, learning rate 1e-2 decayed linearly over ``num_iterations``), ± dense rewards."""
    ppo = next(s for s in default_settings() if s.name == "ppo")
    overrides = {**ppo.overrides, "num_iterations": num_iterations, "dense_rewards": dense}
    return TrainerSettings("ppo", overrides, label="ppo_dense" if dense else "ppo")


def _mean_std(values) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False))


def dense(
    run_dir,
    seed: int = 0,
    repeats: int = 3,
    budgets=(5, 10, 20, 40),
    beta: float = DEFAULT_BETA,
    lab=None,
) -> dict:
    """Dense vs sparse rewards on the default instance (16 contexts × 85 outputs), exactly.

    1. Exactness: R' = R* − Φ(c, ∅) for every (c, o) and π*_β(R') = π*_β(R*). R*'s structured
       oracle gives the empty output 0, so Φ(c, ∅) = 0 there; the same check on a random reward table
       (seeded, so Φ(c, ∅) varies by context) exercises the per-context shift.
    2. Sample efficiency: PPO (the toy trainers' settings, β = ``beta``) with ``dense_rewards`` off
       and on, ``repeats`` training seeds shared by both variants, the budget max(``budgets``)
       iterations (the learning rate decays over it); the exact gap closed after every iteration,
       reported at ``budgets`` as mean ± std over seeds and as the paired difference dense − sparse.

    With GAE λ = 1 (the trainers' setting) the advantage is the Monte-Carlo return minus V(s_k), and
    the shaped return from token k is the sparse one minus Φ_k: shaping acts as a state-dependent
    baseline the critic no longer has to learn. Before whitening and clipping that changes the
    gradient's variance, not its mean; whitening divides by the advantages' std, so lower-variance
    advantages also take larger normalised steps.
    ``lab`` = (instance, π_ref model, tokenizer) replaces the default instance (the tests)."""
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
    traces: dict[str, list[list[float]]] = {name: [] for name in VARIANTS}
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for train_seed in seeds:
        for name, flag in VARIANTS.items():
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
    rows = []
    for budget in budgets:
        row = {"iterations": budget}
        for name in VARIANTS:
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std([t[budget] for t in traces[name]])
        diffs = [d[budget] - s[budget] for d, s in zip(traces["dense"], traces["sparse"])]
        row["dense_minus_sparse_mean"], row["dense_minus_sparse_std"] = _mean_std(diffs)
        rows.append(row)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = list(range(horizon + 1))
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
    payload = {
        "experiment": "dense",
        "seed": seed,
        "kl_coef": beta,
        "repeats": repeats,
        "train_seeds": seeds,
        "budgets": list(budgets),
        "num_iterations": horizon,
        "exactness": checks,
        "rows": rows,
        "traces": traces,
        "train_wall_time_s": {name: _mean_std(w)[0] for name, w in walls.items()},
        "settings": {name: _ppo_settings(horizon, flag).overrides for name, flag in VARIANTS.items()},
    }
    return finish(run_dir, "dense", payload, fig, started)
