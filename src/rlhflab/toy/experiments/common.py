"""What the experiments share: the lab instance, simulated feedback (Eq. 8) and fitted reward models (Eq. 11).

Reward models are small MLPs on one-hot (context, output) features fitted with the Bradley-Terry
loss (Eq. 11) to preferences simulated from an oracle (Eq. 8): unlike a lookup table they
generalise — and misgeneralise — to contexts and outputs they never saw (Section 5.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlhflab.losses import bradley_terry_loss
from rlhflab.seeds import derive_seed
from rlhflab.toy.mdp import END_TOKEN, ToyInstance, build_lab

_LABS: dict[int, ToyInstance] = {}


def lab_instance(seed: int) -> ToyInstance:
    """The default instance with its pre-trained π_ref table; pre-trained once per seed per process."""
    if seed not in _LABS:
        _LABS[seed] = build_lab(seed)[0]
    return _LABS[seed]


def mean_std(values) -> tuple[float, float]:
    """Mean and (population) std of ``values``, NaNs left out; (NaN, NaN) when nothing is left."""
    t = torch.tensor([v for v in values if not math.isnan(v)], dtype=torch.float64)
    if len(t) == 0:
        return math.nan, math.nan
    return float(t.mean()), float(t.std(unbiased=False))


# ---------------------------------------------------------------------------------------------
# Feedback.


@dataclass
class Preferences:
    """Pairwise feedback (c, o_chosen, o_rejected) as index tensors of equal length."""

    context: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor


def feedback_coverage(
    instance: ToyInstance,
    context_coverage: float,
    output_coverage: float,
    generator: torch.Generator,
    policy=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """C_HF and O_HF (Section 5): a fraction κ of contexts, and for each a fraction ρ of outputs drawn
    without replacement from π_ref — feedback lands where the policy puts its mass (Figure 3).

    ``policy`` (C, O) draws the outputs from another policy's table instead, as iterated RLHF labels the
    current policy's outputs (Section 7.6.4); None is π_ref."""
    C, O = instance.num_contexts, instance.num_outputs
    source = instance.require_reference() if policy is None else torch.as_tensor(policy, dtype=torch.float64)
    seen = torch.zeros(C, dtype=torch.bool)
    seen[torch.randperm(C, generator=generator)[: max(1, round(context_coverage * C))]] = True
    k = max(2, round(output_coverage * O))
    gumbel = -torch.log(-torch.log(torch.rand(C, O, generator=generator, dtype=torch.float64)))
    top = (torch.log(source) + gumbel).topk(k, dim=-1).indices
    outputs = torch.zeros(C, O, dtype=torch.bool).scatter_(1, top, True) & seen[:, None]
    return seen, outputs


def simulate_preferences(
    oracle_rewards: list[torch.Tensor],
    weights: list[float],
    outputs: torch.Tensor,
    pairs_per_context: int,
    generator: torch.Generator,
) -> Preferences:
    """Pairs drawn uniformly from each covered context's O_HF, each labelled by an annotator picked
    with probability ``weights``, who prefers o over o' with probability σ(R_k(c,o) − R_k(c,o')) (Eq. 8)."""
    ctx, a, b = [], [], []
    for i in torch.nonzero(outputs.any(-1)).flatten().tolist():
        allowed = torch.nonzero(outputs[i]).flatten()
        idx = torch.multinomial(torch.ones(len(allowed)), 2 * pairs_per_context, replacement=True, generator=generator)
        ctx.append(torch.full((pairs_per_context,), i))
        a.append(allowed[idx[:pairs_per_context]])
        b.append(allowed[idx[pairs_per_context:]])
    ctx, a, b = torch.cat(ctx), torch.cat(a), torch.cat(b)
    who = torch.multinomial(torch.tensor(weights, dtype=torch.float64), len(ctx), replacement=True, generator=generator)
    stacked = torch.stack(oracle_rewards)  # (K, C, O)
    margin = stacked[who, ctx, a] - stacked[who, ctx, b]
    a_wins = torch.rand(len(ctx), generator=generator, dtype=torch.float64) < torch.sigmoid(margin)
    return Preferences(ctx, torch.where(a_wins, a, b), torch.where(a_wins, b, a))


def seen_context_preferences(
    instance: ToyInstance, output_coverage: float, pairs_per_context: int, generator: torch.Generator, policy=None
) -> Preferences:
    """Feedback on the instance's seen contexts (κ = 1/2): for each, a fraction ρ of outputs drawn from
    ``policy`` (π_ref by default) and ``pairs_per_context`` pairs among them labelled from R* (Eq. 8)."""
    _, outputs = feedback_coverage(instance, 1.0, output_coverage, generator, policy)
    outputs &= instance.seen[:, None]
    return simulate_preferences([instance.oracle_reward], [1.0], outputs, pairs_per_context, generator)


# ---------------------------------------------------------------------------------------------
# Reward models.


def features(instance: ToyInstance) -> torch.Tensor:
    """One-hot features of every (c, o), (C, O, F): the context token at each position, and the
    output token (or end, or nothing) at each position. Nothing about R* is built in."""
    vocab = list(instance.tokens)
    out_vocab = vocab + [END_TOKEN, "<none>"]
    ctx_len = len(instance.contexts[0])
    ctx = torch.zeros(instance.num_contexts, ctx_len * len(vocab))
    for i, c in enumerate(instance.contexts):
        for p, t in enumerate(c):
            ctx[i, p * len(vocab) + vocab.index(t)] = 1
    out = torch.zeros(instance.num_outputs, instance.horizon * len(out_vocab))
    for j, o in enumerate(instance.outputs):
        padded = list(o) + ["<none>"] * (instance.horizon - len(o))
        for p, t in enumerate(padded):
            out[j, p * len(out_vocab) + out_vocab.index(t)] = 1
    C, O = instance.num_contexts, instance.num_outputs
    return torch.cat([ctx[:, None].expand(C, O, -1), out[None].expand(C, O, -1)], dim=-1)


def fit_reward_model(
    instance: ToyInstance, prefs: Preferences, seed: int, steps: int = 300, hidden: int = 64, lr: float = 1e-2
) -> torch.Tensor:
    """R_phi: an MLP on ``features`` fitted by Bradley-Terry (Eq. 11); returns its table (C, O) for
    every pair, seen or not. R_phi is identified only up to a per-context constant, which Eq. 17
    ignores."""
    torch.manual_seed(seed)
    shape = (instance.num_contexts, instance.num_outputs)
    x = features(instance).reshape(shape[0] * shape[1], -1).contiguous()
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[-1], hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        # Scoring the whole (C·O) table once per step costs the same however many pairs there are.
        table = net(x).view(shape)
        loss = bradley_terry_loss(table[prefs.context, prefs.chosen], table[prefs.context, prefs.rejected])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return net(x).view(shape).double()


def reward_model_for(
    instance: ToyInstance,
    context_coverage: float,
    output_coverage: float,
    seed: int,
    pairs_per_context: int = 1024,
    oracle_rewards=None,
    weights=(1.0,),
):
    """Coverage → simulated feedback → fitted R_phi; returns (R_phi table, seen contexts)."""
    g = torch.Generator().manual_seed(seed)
    seen, outputs = feedback_coverage(instance, context_coverage, output_coverage, g)
    prefs = simulate_preferences(
        oracle_rewards or [instance.oracle_reward], list(weights), outputs, pairs_per_context, g
    )
    return fit_reward_model(instance, prefs, seed), seen


PARTIAL_OUTPUT_COVERAGE = 0.25


def partial_reward_model(
    instance: ToyInstance,
    run_seed: int,
    output_coverage: float = PARTIAL_OUTPUT_COVERAGE,
    pairs_per_context: int = 1024,
) -> torch.Tensor:
    """The reward model of the β and over-optimisation experiments: feedback on the instance's seen
    contexts (κ = 1/2) and a fraction ρ of outputs. Both draw it from one stream of the run's seed,
    so at the same budget they study the same R_phi."""
    seed = derive_seed(run_seed, "partial reward model")
    g = torch.Generator().manual_seed(seed)
    prefs = seen_context_preferences(instance, output_coverage, pairs_per_context, g)
    return fit_reward_model(instance, prefs, seed)
