"""``rlhflab toy annotators``: one reward model for a pool of annotators who disagree (Section 5.1).

Marginalisation over preferences: one Bradley-Terry reward model fitted on the pooled labels of
annotators with different R*, compared with each annotator's own optimum.
"""

from __future__ import annotations

import time

import torch

from rlhflab.seeds import derive_seed
from rlhflab.toy.exact import kl_regularised_optimum, performance
from rlhflab.toy.experiments.common import lab_instance, reward_model_for
from rlhflab.toy.mdp import ToyInstance, structured_oracle_reward
from rlhflab.toy.outputs import finish, pyplot


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


def run(run_dir, seed: int = 0, weights=(0.5, 0.3, 0.2), kl_coef: float = 0.1) -> dict:
    """The pooled R_phi (full coverage, each label from an annotator drawn with ``weights``) optimised
    by Eq. 17, scored under each annotator's own R* against that annotator's own optimum."""
    started = time.perf_counter()
    instance = lab_instance(seed)
    pool = annotator_rewards(instance)
    reward_model, _ = reward_model_for(
        instance,
        1.0,
        1.0,
        seed=derive_seed(seed, "annotators feedback"),
        pairs_per_context=1024,
        oracle_rewards=list(pool.values()),
        weights=weights,
    )
    mean_reward = sum(w * t for w, t in zip(weights, pool.values()))
    rows = _rows(instance, pool, weights, reward_model, mean_reward, kl_coef)
    centred = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731  (BT fixes rewards up to a per-context shift)
    corr = float(torch.corrcoef(torch.stack([centred(reward_model).flatten(), centred(mean_reward).flatten()]))[0, 1])
    payload = {
        "experiment": "annotators",
        "seed": seed,
        "kl_coef": kl_coef,
        "weights": list(weights),
        "rows": rows,
        "corr_reward_model_vs_weighted_mean_reward": corr,
    }
    return finish(run_dir, "annotators", payload, _figure(rows, kl_coef), started)


def _rows(instance: ToyInstance, pool: dict, weights, reward_model, mean_reward, kl_coef: float) -> list[dict]:
    """Per annotator, J under their own R* of π_ref, of their own optimum, of the pooled model's
    optimum, of the weighted mean reward's optimum and of every other annotator's optimum."""
    reference, d = instance.require_reference(), instance.context_dist
    optimum = {name: kl_regularised_optimum(reference, t, kl_coef) for name, t in pool.items()}
    pooled = kl_regularised_optimum(reference, reward_model, kl_coef)
    mean_optimum = kl_regularised_optimum(reference, mean_reward, kl_coef)
    rows = []
    for weight, (name, own) in zip(weights, pool.items()):
        J_ref, J_own, J_pooled = (performance(p, own, d) for p in (reference, optimum[name], pooled))
        rows.append(
            {
                "annotator": name,
                "weight": weight,
                "J_ref": J_ref,
                "J_own_optimum": J_own,
                "J_pooled_reward_model": J_pooled,
                "J_mean_reward_optimum": performance(mean_optimum, own, d),
                "fraction_of_own_gain": (J_pooled - J_ref) / (J_own - J_ref),
                **{f"J_under_{other}_optimum": performance(optimum[other], own, d) for other in pool if other != name},
            }
        )
    return rows


def _figure(rows: list[dict], kl_coef: float):
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(rows))
    bars = (
        ("J_ref", "π_ref"),
        ("J_pooled_reward_model", "π_rlhf (pooled BT model)"),
        ("J_own_optimum", "own optimum π*_k"),
    )
    for k, (key, label) in enumerate(bars):
        ax.bar(x + (k - 1) * 0.27, [r[key] for r in rows], width=0.27, label=label)
    ax.set_xticks(x, [f"{r['annotator']} (w={r['weight']})" for r in rows])
    ax.set_ylabel("J under the annotator's own R*")
    ax.set_title(f"one reward model for a pool of annotators (β={kl_coef})")
    ax.legend(fontsize=8)
    return fig


def headline(result: dict) -> str:
    """The fraction of each annotator's own achievable gain that the pooled reward model gets them."""
    return "; ".join(f"{r['annotator']}: {r['fraction_of_own_gain']:.0%} of own gain" for r in result["rows"])
