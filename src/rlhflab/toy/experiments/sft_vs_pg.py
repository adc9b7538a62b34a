"""``rlhflab toy sft-vs-pg``: SFT on the best samples against policy gradient on all of them (Section 6.3).

J against the number of oracle-labelled samples, on a tabular softmax policy initialised at π_ref.
Tabular and sample-based (each update sees only the labelled samples, never an exact gradient), so
it isolates the update rules; the HF-model trainers are checked against the closed form separately
(``rlhflab toy trainers``).
"""

from __future__ import annotations

import math
import time

import torch

from rlhflab.losses import policy_gradient_loss, reinforce_advantages, sft_loss
from rlhflab.seeds import derive_seed
from rlhflab.toy.exact import performance
from rlhflab.toy.experiments.common import lab_instance, mean_std
from rlhflab.toy.mdp import ToyInstance, tabular_sample
from rlhflab.toy.outputs import finish, pyplot

_METHODS = ("sft", "pg")


def run(
    run_dir,
    seed: int = 0,
    budgets=(32, 64, 128, 256, 512, 1024, 2048, 4096),
    repeats: int = 5,
    top_fraction: float = 0.1,
    batch_size: int = 32,
    learning_rates=(0.1, 0.3, 1.0),
) -> dict:
    """Each method gets its best learning rate from ``learning_rates`` (by mean J at the largest
    budget), so neither wins by a worse setting; mean ± std over ``repeats`` label draws, the same
    draws for every learning rate."""
    started = time.perf_counter()
    instance = lab_instance(seed)
    reference, oracle, d = instance.require_reference(), instance.oracle_reward, instance.context_dist
    repeat_seeds = [derive_seed(seed, "sft-vs-pg labels", r) for r in range(repeats)]
    sweeps = {m: {} for m in _METHODS}  # method → learning rate → budget → J per repeat
    for lr in learning_rates:
        sweeps["sft"][lr], sweeps["pg"][lr] = _sweep(instance, budgets, repeat_seeds, top_fraction, batch_size, lr)
    best_lr = {m: max(learning_rates, key=lambda lr: mean_std(sweeps[m][lr][budgets[-1]])[0]) for m in _METHODS}
    rows = [_row(n, sweeps, best_lr) for n in budgets]
    payload = {
        "experiment": "sft_vs_pg",
        "seed": seed,
        "repeats": repeats,
        "top_fraction": top_fraction,
        "pg_batch_size": batch_size,
        "J_ref": performance(reference, oracle, d),
        "J_max": float((d * oracle.max(-1).values).sum()),
        "rows": rows,
        "best_lr": best_lr,
        "lr_sweep_mean_J": {
            m: {str(lr): [mean_std(runs[n])[0] for n in budgets] for lr, runs in by_lr.items()}
            for m, by_lr in sweeps.items()
        },
        "policy": "tabular softmax logits initialised at log π_ref; Adam; SFT 100 full-batch steps",
        "note": "HF-model trainers are checked against the closed form separately",
    }
    fig = _figure(rows, budgets, top_fraction, payload["J_ref"], payload["J_max"])
    return finish(run_dir, "sft_vs_pg", payload, fig, started)


def _sweep(instance: ToyInstance, budgets, repeat_seeds, top_fraction: float, batch_size: int, lr: float):
    """J of SFT and of policy gradient at every budget, per repeat, at learning rate ``lr``."""
    oracle, d = instance.oracle_reward, instance.context_dist
    sft = {n: [] for n in budgets}
    pg = {n: [] for n in budgets}
    for repeat_seed in repeat_seeds:
        g = torch.Generator().manual_seed(repeat_seed)
        for n in budgets:
            sft[n].append(performance(_sft_on_best(instance, n, top_fraction, g, lr=lr), oracle, d))
        for n, j in zip(budgets, _policy_gradient_curve(instance, budgets, batch_size, g, lr=lr)):
            pg[n].append(j)
    return sft, pg


def _row(num_labelled: int, sweeps: dict, best_lr: dict) -> dict:
    (sm, ss), (pm, ps) = (mean_std(sweeps[m][best_lr[m]][num_labelled]) for m in _METHODS)
    return {"num_labelled": num_labelled, "J_sft_mean": sm, "J_sft_std": ss, "J_pg_mean": pm, "J_pg_std": ps}


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


def _figure(rows: list[dict], budgets, top_fraction: float, J_ref: float, J_max: float):
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
    return fig


def headline(result: dict) -> str:
    """J of SFT and of policy gradient at the smallest and largest label budgets."""
    first, last = result["rows"][0], result["rows"][-1]
    return (
        f"J at {first['num_labelled']} labels: SFT {first['J_sft_mean']:.3f} / PG {first['J_pg_mean']:.3f}; "
        f"at {last['num_labelled']}: SFT {last['J_sft_mean']:.3f} / PG {last['J_pg_mean']:.3f} "
        f"(J_ref {result['J_ref']:.3f}, max {result['J_max']:.3f})"
    )
