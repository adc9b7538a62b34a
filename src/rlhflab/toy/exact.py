"""Exact quantities of Sections 4.3, 6.2 and best-of-n on an enumerable instance.

Every function takes tables — a policy π (C, O) with rows summing to 1, a reward (C, O), a context
distribution d_C (C,) — so a closed-form policy and a trained HF model (through ``exact_policy``)
are evaluated by the same code. All arithmetic is float64.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rlhflab.decoding.best_of_n_math import best_of_n_distribution, best_of_n_kl_bound, kl_per_context
from rlhflab.errors import DataError
from rlhflab.files import write_json
from rlhflab.toy.mdp import ToyInstance, exact_policy

FORMAT = "rlhflab-toy-instance/1"


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def performance_per_context(policy, reward) -> torch.Tensor:
    """E_{o~π(·|c)}[R(c, o)] for each context, (C,)."""
    return (_t(policy) * _t(reward)).sum(-1)


def performance(policy, reward, context_dist) -> float:
    """J(π) = Σ_c Σ_o d_C(c) π(o|c) R*(c, o) (Eq. 12); with R = R_phi it is Ĵ(π) (Eq. 14)."""
    return float((_t(context_dist) * performance_per_context(policy, reward)).sum())


def kl_divergence(policy, reference, context_dist) -> float:
    """E_{c~d_C} KL(π(·|c) ‖ π_ref(·|c)): the penalty of the KL-regularised objective."""
    return float((_t(context_dist) * kl_per_context(policy, reference)).sum().clamp_min(0.0))


def kl_regularised_optimum(reference, reward, kl_coef: float) -> torch.Tensor:
    """π*_β(o|c) ∝ π_ref(o|c)·exp(R(c, o)/β) (Eq. 17); with R = R_phi this is π_rlhf."""
    if math.isinf(kl_coef):
        return _t(reference).clone()
    return torch.softmax(torch.log(_t(reference)) + _t(reward) / kl_coef, dim=-1)


def log_partition(reference, reward, kl_coef: float) -> torch.Tensor:
    """log Z(c) = log Σ_o π_ref(o|c)·exp(R(c, o)/β), (C,)."""
    return torch.logsumexp(torch.log(_t(reference)) + _t(reward) / kl_coef, dim=-1)


def optimum_objective(reference, reward, kl_coef: float, context_dist) -> float:
    """max_π J(π) − β·KL(π‖π_ref) = β·Σ_c d_C(c)·log Z(c), attained by π*_β (Eq. 17)."""
    return float(kl_coef * (_t(context_dist) * log_partition(reference, reward, kl_coef)).sum())


def objective(policy, reference, reward, kl_coef: float, context_dist) -> float:
    """The KL-regularised RLHF objective J(π) − β·KL(π‖π_ref) (Section 6.2)."""
    return performance(policy, reward, context_dist) - kl_coef * kl_divergence(policy, reference, context_dist)


def gap_closed(policy, reference, reward, kl_coef: float, context_dist) -> float:
    """(obj(π) − obj(π_ref)) / (obj(π*) − obj(π_ref)): 0 at π_ref, 1 at the optimum of Eq. 17."""
    ref_obj = objective(reference, reference, reward, kl_coef, context_dist)
    opt_obj = optimum_objective(reference, reward, kl_coef, context_dist)
    return (objective(policy, reference, reward, kl_coef, context_dist) - ref_obj) / (opt_obj - ref_obj)


def evaluate_table(policy, instance: ToyInstance, kl_coef: float, reward=None) -> dict:
    """J, KL and the objective of a policy table against π_ref and the optimum π*_β under ``reward``
    (R* by default): the one evaluation path for closed forms and trained models."""
    reference = instance.require_reference()
    reward = instance.oracle_reward if reward is None else _t(reward)
    d = instance.context_dist
    return {
        "J": performance(policy, reward, d),
        "KL": kl_divergence(policy, reference, d),
        "objective": objective(policy, reference, reward, kl_coef, d),
        "objective_ref": objective(reference, reference, reward, kl_coef, d),
        "objective_opt": optimum_objective(reference, reward, kl_coef, d),
        "gap_closed": gap_closed(policy, reference, reward, kl_coef, d),
        "kl_coef": kl_coef,
    }


def evaluate_model_against_optimum(model, instance: ToyInstance, beta: float, tokenizer=None) -> dict:
    """``evaluate_table`` of a trained HF policy's exact output table: did the trainer reach the
    closed-form optimum of J − β·KL under R*? (``gap_closed`` near 1 says yes.)"""
    return evaluate_table(exact_policy(model, instance, tokenizer), instance, beta)


def performance_gap(instance: ToyInstance, reward_model, kl_coef: float, seen=None) -> dict:
    """ΔJ = |J(π*) − J(π_rlhf)| of Section 6.2, with π* ∝ π_ref·exp(R*/β), π_rlhf ∝ π_ref·exp(R_phi/β).

    Split by contexts: ``seen`` (C_rew, where feedback was collected) and unseen (C' = C_eval \\ C_rew),
    each under d_C restricted to that set and renormalised; ``total`` is under the whole d_C.
    """
    reference, oracle = instance.require_reference(), instance.oracle_reward
    seen = instance.seen if seen is None else torch.as_tensor(seen, dtype=torch.bool)
    optimum = kl_regularised_optimum(reference, oracle, kl_coef)
    rlhf = kl_regularised_optimum(reference, reward_model, kl_coef)
    per_context = performance_per_context(optimum, oracle) - performance_per_context(rlhf, oracle)
    d = instance.context_dist

    def restricted(mask):
        mass = d[mask].sum()
        return float(abs((d[mask] * per_context[mask]).sum() / mass)) if mass > 0 else math.nan

    return {
        "total": float(abs((d * per_context).sum())),
        "seen": restricted(seen),
        "unseen": restricted(~seen),
        "J_opt": performance(optimum, oracle, d),
        "J_rlhf": performance(rlhf, oracle, d),
        "J_hat_rlhf": performance(rlhf, reward_model, d),
        "KL_rlhf": kl_divergence(rlhf, reference, d),
        "kl_coef": kl_coef,
    }


# ---------------------------------------------------------------------------------------------
# Best-of-n: sample n outputs from π_ref, keep the one with the highest reward (its exact
# distribution and the KL bound are in rlhflab.decoding.best_of_n_math).


def best_of_n_exact(instance: ToyInstance, n: int, reward=None) -> dict:
    """Best-of-n against π_ref, selecting by ``reward`` (R* by default; pass R_phi for proxy
    selection), with J under R*, exact KL and the formula beside it."""
    reference, d = instance.require_reference(), instance.context_dist
    reward = instance.oracle_reward if reward is None else _t(reward)
    policy = best_of_n_distribution(reference, reward, n)
    return {
        "n": n,
        "J": performance(policy, instance.oracle_reward, d),
        "J_hat": performance(policy, reward, d),
        "KL": kl_divergence(policy, reference, d),
        "KL_formula": best_of_n_kl_bound(n),
        "policy": policy,
    }


# ---------------------------------------------------------------------------------------------
# Export so that anyone can recompute the quantities above without rlhflab.


def export_instance(instance: ToyInstance, path) -> None:
    """Write contexts, outputs, d_C, the seen/unseen split, R*, P_pre and π_ref to one JSON file
    (atomically). float → JSON → float round-trips exactly, so recomputed numbers match."""
    reference = instance.require_reference()
    write_json(
        path,
        {
            "format": FORMAT,
            "seed": instance.seed,
            "tokens": list(instance.tokens),
            "horizon": instance.horizon,
            "contexts": [list(c) for c in instance.contexts],
            "outputs": [list(o) for o in instance.outputs],
            "context_dist": instance.context_dist.tolist(),
            "seen": instance.seen.tolist(),
            "oracle_reward": instance.oracle_reward.tolist(),
            "pretrain_dist": instance.pretrain_dist.tolist(),
            "reference": reference.tolist(),
            "notes": instance.notes,
        },
    )


def load_instance_json(path) -> ToyInstance:
    """Read what ``export_instance`` wrote; errors name the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(str(path), None, None, f"cannot read toy instance: {e}") from e
    if data.get("format") != FORMAT:
        raise DataError(str(path), None, "format", f"expected {FORMAT!r}, got {data.get('format')!r}")
    try:
        contexts = [tuple(c) for c in data["contexts"]]
        outputs = [tuple(o) for o in data["outputs"]]
        tables = {k: _t(data[k]) for k in ("oracle_reward", "pretrain_dist", "reference")}
        for k, table in tables.items():
            if tuple(table.shape) != (len(contexts), len(outputs)):
                raise DataError(
                    str(path), None, k, f"shape {tuple(table.shape)}, expected {(len(contexts), len(outputs))}"
                )
        return ToyInstance(
            tokens=tuple(data["tokens"]),
            horizon=int(data["horizon"]),
            contexts=contexts,
            outputs=outputs,
            context_dist=_t(data["context_dist"]),
            seen=torch.tensor(data["seen"], dtype=torch.bool),
            oracle_reward=tables["oracle_reward"],
            pretrain_dist=tables["pretrain_dist"],
            reference=tables["reference"],
            seed=int(data.get("seed", 0)),
            notes=data.get("notes", {}),
        )
    except KeyError as e:
        raise DataError(str(path), None, str(e.args[0]), "missing") from e
