"""Evaluation of a policy and of a reward model (Sections 4.3, 5.1, 6.2, 7.5).

A policy is judged by its true performance J(π) under the oracle R* (Eq. 12) next to the estimate
Ĵ(π) under the learned reward R_phi (Eq. 14): the gap between the two is what reward hacking
(Section 6.2) looks like. Both are measured on in-distribution and on unseen contexts, because R_phi
is only trustworthy where the feedback covered the contexts (Section 5.1).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rlhflab.data.records import Preference, Prompt
from rlhflab.data.render import completion_text, encode_prompts, prompt_text
from rlhflab.errors import ConfigError
from rlhflab.losses import masked_sum, pairwise_accuracy
from rlhflab.models.decoder_parts import context_length
from rlhflab.progress import stage
from rlhflab.rewards.registry import RewardSource
from rlhflab.sampling.rollout import batched_completion_logprobs, sample

ADAPTERS_DISABLED = "adapters-disabled"  # reference = the LoRA policy with its adapters switched off


@dataclass
class PolicyEvaluation:
    """Metrics of one policy on one context set; ``*_se`` are standard errors (None if n < 2 units)."""

    J: float | None  # Eq. 12: mean oracle reward R*(c, o), o ~ π(.|c)
    J_se: float | None
    J_hat: float | None  # Eq. 14: mean reward-model reward R_phi(c, o)
    J_hat_se: float | None
    kl: float | None  # KL(π || π_ref) per sequence, k1 estimator; None without a reference
    kl_se: float | None
    mean_length: float  # completion tokens, end-of-sequence token included
    truncated_fraction: float  # completions that hit max_new_tokens without ending
    distinct_1: float
    distinct_2: float
    n: int  # completions = num_prompts * num_samples
    num_prompts: int
    prompt_index: list[int]  # which prompt each completion answers (0 … num_prompts − 1)
    contexts: list[str]
    texts: list[str]
    oracle_rewards: list[float] | None
    proxy_rewards: list[float] | None
    kl_previous: float | None = None  # KL(π || π_previous) when evaluate_policy got ``previous``
    kl_previous_se: float | None = None
    uncertainty: dict | None = None  # with a reward ensemble: ensemble_uncertainty_report's entry for this set

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def standard_error(values: torch.Tensor, prompt_index: torch.Tensor, num_samples: int) -> float | None:
    """std / sqrt(n). With several samples per prompt, completions of one prompt are correlated (they
    share c), so the unit is the prompt: SE over per-prompt means, which does not overstate precision.
    With one sample per prompt the units are the completions themselves. Sample std (ddof=1)."""
    if num_samples > 1:
        values = torch.zeros(int(prompt_index.max()) + 1).index_add_(0, prompt_index, values.float()) / num_samples
    if values.numel() < 2:
        return None
    return float(values.float().std(unbiased=True) / math.sqrt(values.numel()))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over all completions (whitespace tokens); 0 when there are none."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def evaluate_policy(
    policy,
    tokenizer,
    prompts: list[Prompt],
    oracle: RewardSource | None,
    reward_model: RewardSource | None,
    reference=None,
    num_samples: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    use_chat_template="auto",
    seed: int = 0,
    batch_size: int = 32,
    top_p: float = 1.0,
    truncate: bool = False,
    previous=None,
) -> PolicyEvaluation:
    """Sample ``num_samples`` completions per prompt and measure J (Eq. 12), Ĵ (Eq. 14) and KL(π||π_ref).

    The KL is the unbiased k1 estimate mean_i Σ_t [log π(o_t|c, o_<t) − log π_ref(o_t|c, o_<t)] at the
    sampled tokens. Both log-probs use the sampling temperature, since that is the distribution the
    samples come from (greedy decoding, temperature 0, gives no unbiased estimate; T=1 is used).
    ``reference``: a model, ``"adapters-disabled"`` for a LoRA policy, or None (no KL). Prompts too
    long for the policy's context are an error, or with ``truncate`` keep their last tokens.
    ``previous``: a second model the same KL is measured to (``kl_previous``), e.g. the policy of
    the last round of iterated RLHF.
    """
    prompt_ids = encode_prompts(tokenizer, prompts, use_chat_template, context_length(policy), max_new_tokens, truncate)
    torch.manual_seed(seed)
    rollout = sample(
        policy,
        tokenizer,
        prompt_ids,
        num_samples,
        max_new_tokens,
        temperature,
        top_p=top_p,
        batch_size=batch_size,
        return_logprobs=reference is not None and temperature > 0,
    )
    idx = rollout.prompt_index
    contexts = [prompt_text(prompts[i].prompt) for i in idx.tolist()]
    texts = rollout.completion_texts

    def mean_and_se(source):
        if source is None:
            return None, None, None
        rewards = source(contexts, texts)
        return float(rewards.mean()), standard_error(rewards, idx, num_samples), rewards.tolist()

    J, J_se, oracle_rewards = mean_and_se(oracle)
    J_hat, J_hat_se, proxy_rewards = mean_and_se(reward_model)

    kl = kl_se = kl_previous = kl_previous_se = None
    if reference is not None or previous is not None:
        batch, t = rollout.batch.to(policy.device), (temperature if temperature > 0 else 1.0)
        # the sampler's own log-probs where it gives them: the policy's side needs no second pass
        logp = rollout.extras.get("logprobs")
        logp = batched_completion_logprobs(policy, batch, batch_size, t) if logp is None else logp.to(policy.device)

        def sequence_kl(other) -> tuple[float, float | None]:
            if isinstance(other, str):
                if other != ADAPTERS_DISABLED or not hasattr(policy, "disable_adapter"):
                    raise ConfigError(f"reference {other!r}: only {ADAPTERS_DISABLED!r} with a LoRA policy is allowed")
                with policy.disable_adapter():
                    other_logp = batched_completion_logprobs(policy, batch, batch_size, t)
            else:
                other_logp = batched_completion_logprobs(other, batch.to(other.device), batch_size, t)
            per_sequence = masked_sum(logp - other_logp.to(logp.device), batch.completion_mask, dim=-1).cpu()
            return float(per_sequence.mean()), standard_error(per_sequence, idx, num_samples)

        if reference is not None:
            kl, kl_se = sequence_kl(reference)
        if previous is not None:
            kl_previous, kl_previous_se = sequence_kl(previous)

    return PolicyEvaluation(
        J=J,
        J_se=J_se,
        J_hat=J_hat,
        J_hat_se=J_hat_se,
        kl=kl,
        kl_se=kl_se,
        mean_length=float(rollout.batch.completion_mask.sum(-1).float().mean()),
        truncated_fraction=float(rollout.truncated.float().mean()),
        distinct_1=distinct_n(texts, 1),
        distinct_2=distinct_n(texts, 2),
        n=len(texts),
        num_prompts=len(prompts),
        prompt_index=idx.tolist(),
        contexts=contexts,
        texts=texts,
        oracle_rewards=oracle_rewards,
        proxy_rewards=proxy_rewards,
        kl_previous=kl_previous,
        kl_previous_se=kl_previous_se,
    )


def paired_difference(
    before: PolicyEvaluation, after: PolicyEvaluation, rewards: str = "oracle_rewards"
) -> tuple[float, float | None]:
    """The change of J (Eq. 12; ``rewards="proxy_rewards"``: of Ĵ, Eq. 14) between two policies
    evaluated on the same prompts, with its standard error.

    The unit is the prompt: d_c = mean reward of ``after``'s samples for c − mean of ``before``'s,
    ΔJ = mean_c d_c and se = std(d_c) / sqrt(#prompts). Contexts differ in how high any reply can
    score (some prompts invite a cheerful answer, others do not); pairing by context removes that
    shared variance, which the two separate standard errors would count twice.
    """
    prompt_of = [dict(zip(ev.prompt_index, ev.contexts)) for ev in (before, after)]
    if before.num_prompts != after.num_prompts or prompt_of[0] != prompt_of[1]:
        raise ValueError("paired_difference needs both evaluations on the same prompts")
    values = []
    for ev in (before, after):
        scores = getattr(ev, rewards)
        if scores is None:
            raise ValueError(f"paired_difference: an evaluation has no {rewards}")
        index = torch.tensor(ev.prompt_index)
        sums = torch.zeros(ev.num_prompts, dtype=torch.float64).index_add_(
            0, index, torch.tensor(scores, dtype=torch.float64)
        )
        values.append(sums / torch.bincount(index, minlength=ev.num_prompts).clamp(min=1))
    diff = values[1] - values[0]
    se = float(diff.std(unbiased=True) / math.sqrt(diff.numel())) if diff.numel() > 1 else None
    return float(diff.mean()), se


def pairwise_order_agreement(ev: PolicyEvaluation) -> float | None:
    """How often R_phi orders two samples of one prompt as R* does, over every such pair of ``ev``'s
    samples (pairs R* ties are left out): the reward model's accuracy where this policy puts its
    mass, which drifts from where its training pairs were (Sections 7.5, 7.6.4). None without both
    rewards or without an untied pair."""
    if ev.oracle_rewards is None or ev.proxy_rewards is None:
        return None
    index = torch.tensor(ev.prompt_index)
    oracle, proxy = torch.tensor(ev.oracle_rewards), torch.tensor(ev.proxy_rewards)
    same_prompt = index[:, None] == index[None, :]
    upper = torch.ones_like(same_prompt).triu(diagonal=1)
    oracle_order = (oracle[:, None] - oracle[None, :]).sign()
    proxy_order = (proxy[:, None] - proxy[None, :]).sign()
    pairs = same_prompt & upper & (oracle_order != 0)
    if not pairs.any():
        return None
    return float((proxy_order[pairs] == oracle_order[pairs]).double().mean())


def disagreeing_pairs(ev: PolicyEvaluation, k: int = 5) -> list[dict]:
    """The ``k`` pairs of ``ev``'s samples (two answers to one prompt) that R_phi and R* order most
    differently: reward hacking, shown (Section 6.2). Each reward is standardised over ``ev``'s
    samples, z = (r − mean) / std, so the two scales meet; a pair (a, b) that R_phi prefers a and R*
    prefers b scores (z_phi(a) − z_phi(b)) · (z*(b) − z*(a)) > 0, the product of how strongly each
    holds its view. Pairs R* or R_phi ties are left out, as in :func:`pairwise_order_agreement`.
    Returns dicts with ``context``, ``preferred_by_proxy`` / ``preferred_by_oracle`` (texts), their
    ``proxy`` and ``oracle`` rewards as (proxy's choice, oracle's choice), and ``score``; [] without
    both rewards or without such a pair."""
    if ev.oracle_rewards is None or ev.proxy_rewards is None or len(ev.texts) < 2:
        return []
    proxy, oracle = np.asarray(ev.proxy_rewards, float), np.asarray(ev.oracle_rewards, float)
    if proxy.std() == 0 or oracle.std() == 0:
        return []
    zp, zo = (proxy - proxy.mean()) / proxy.std(), (oracle - oracle.mean()) / oracle.std()
    by_prompt: dict[int, list[int]] = {}
    for i, prompt in enumerate(ev.prompt_index):
        by_prompt.setdefault(prompt, []).append(i)
    found = []
    for a, b in (pair for members in by_prompt.values() for pair in itertools.combinations(members, 2)):
        if zp[a] < zp[b]:
            a, b = b, a  # a: the sample R_phi prefers
        score = (zp[a] - zp[b]) * (zo[b] - zo[a])
        if score > 0:
            found.append((float(score), int(a), int(b)))
    found.sort(key=lambda t: -t[0])
    return [
        {
            "context": ev.contexts[a],
            "preferred_by_proxy": ev.texts[a],
            "preferred_by_oracle": ev.texts[b],
            "proxy": (float(proxy[a]), float(proxy[b])),
            "oracle": (float(oracle[a]), float(oracle[b])),
            "score": score,
        }
        for score, a, b in found[:k]
    ]


def evaluate_seen_unseen(
    policy, tokenizer, seen_prompts: list[Prompt], unseen_prompts: list[Prompt], **kw
) -> dict[str, PolicyEvaluation]:
    """The same evaluation on in-distribution and unseen contexts, side by side (Sections 5.1, 6.2):
    a policy that exploits R_phi where feedback was sparse shows Ĵ − J growing on ``unseen``."""
    return {
        "seen": evaluate_policy(policy, tokenizer, seen_prompts, **kw),
        "unseen": evaluate_policy(policy, tokenizer, unseen_prompts, **kw),
    }


def reliability_diagram(probabilities, outcomes, num_bins: int = 10) -> list[dict]:
    """The points of a reliability diagram: for each non-empty one of ``num_bins`` equal-width bins of
    p in [0, 1] (the last includes p = 1), the mean predicted probability, the observed frequency of
    outcome 1 and the count. A calibrated model's points lie on the diagonal (Section 7.5).
    probabilities: predicted P(y = 1); outcomes: observed 0/1."""
    p, y = np.asarray(probabilities, dtype=float), np.asarray(outcomes, dtype=float)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need equal, non-empty shapes, got {p.shape} and {y.shape}")
    bins = np.minimum((p * num_bins).astype(int), num_bins - 1)
    return [
        {
            "low": b / num_bins,
            "high": (b + 1) / num_bins,
            "predicted": float(p[bins == b].mean()),
            "observed": float(y[bins == b].mean()),
            "count": int((bins == b).sum()),
        }
        for b in range(num_bins)
        if (bins == b).any()
    ]


def expected_calibration_error(probabilities, outcomes, num_bins: int = 10) -> float:
    """ECE = Σ_b (n_b / N) |mean(p_b) − mean(y_b)| over the bins of :func:`reliability_diagram`."""
    points = reliability_diagram(probabilities, outcomes, num_bins)
    total = sum(b["count"] for b in points)
    return float(sum(b["count"] / total * abs(b["predicted"] - b["observed"]) for b in points))


def _correlations(reward_source, oracle, samples) -> dict:
    """Spearman and Pearson correlation of R_phi with R* on (contexts, outputs) samples."""
    from scipy.stats import pearsonr, spearmanr

    contexts, outputs = samples
    r_phi, r_star = reward_source(contexts, outputs).numpy(), oracle(contexts, outputs).numpy()
    out = {
        "n": len(outputs),
        "mean_reward_model": float(r_phi.mean()),
        "mean_oracle": float(r_star.mean()),
        "spearman": None,
        "pearson": None,
        "note": None,
    }
    if len(outputs) < 3 or np.ptp(r_phi) == 0 or np.ptp(r_star) == 0:
        # A correlation is 0/0 here; scipy would return nan with a warning.
        out["note"] = "undefined: fewer than 3 samples, or R_phi or the oracle is constant on them"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["spearman"] = float(spearmanr(r_phi, r_star).statistic)
        out["pearson"] = float(pearsonr(r_phi, r_star).statistic)
    return out


def reward_model_report(
    reward_source: RewardSource,
    heldout: list[Preference],
    oracle: RewardSource | None = None,
    seen_samples: tuple[list[str], list[str]] | None = None,
    unseen_samples=None,
    num_bins: int = 10,
) -> dict:
    """How well R_phi fits held-out preferences and tracks R* (Section 7.5).

    ``accuracy``: fraction of pairs with R(chosen) > R(rejected), ties 0.5. ``log_likelihood``: mean
    Bradley-Terry log σ(R(chosen) − R(rejected)) (Eq. 11). ``ece``: calibration of p = σ(Δ) against
    the observed labels; each pair is counted both ways (p with outcome 1 and 1 − p with outcome 0)
    so the score does not depend on which side a dataset calls "chosen"; ``reliability``: the points
    of its reliability diagram. ``oracle_accuracy``: the oracle's own agreement with the labels, a
    ceiling when the labels are noisy; ``oracle_order_accuracy``: R_phi's agreement with R*'s order of
    each pair (no label noise). ``seen``/``unseen``:
    correlation of R_phi with R* on policy samples from in-distribution / unseen contexts.
    """
    contexts = [prompt_text(p.prompt) for p in heldout]
    chosen, rejected = [completion_text(p.chosen) for p in heldout], [completion_text(p.rejected) for p in heldout]
    r_chosen, r_rejected = reward_source(contexts, chosen), reward_source(contexts, rejected)
    p = torch.sigmoid(r_chosen - r_rejected).numpy()
    both_ways, outcomes = np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])
    report = {
        "reward_source": reward_source.name,
        "num_pairs": len(heldout),
        "accuracy": pairwise_accuracy(r_chosen, r_rejected),
        "log_likelihood": float(F.logsigmoid(r_chosen - r_rejected).mean()),
        "ece": expected_calibration_error(both_ways, outcomes, num_bins),
        "reliability": reliability_diagram(both_ways, outcomes, num_bins),
        "oracle_accuracy": None,
        "oracle_order_accuracy": None,
    }
    if oracle is not None:
        o_chosen, o_rejected = oracle(contexts, chosen), oracle(contexts, rejected)
        report["oracle_accuracy"] = pairwise_accuracy(o_chosen, o_rejected)
        # R_phi against R*'s own order of the two outputs (noise-free; pairs R* ties are left out)
        untied = o_chosen != o_rejected
        if untied.any():
            agree = (r_chosen - r_rejected)[untied].sign() == (o_chosen - o_rejected)[untied].sign()
            report["oracle_order_accuracy"] = float(agree.double().mean())
    for name, samples in (("seen", seen_samples), ("unseen", unseen_samples)):
        if samples is not None:
            if oracle is None:
                raise ConfigError(f"{name}_samples need an oracle to correlate R_phi with")
            report[name] = _correlations(reward_source, oracle, samples)
    return report


def ensemble_uncertainty_report(
    ensemble, oracle: RewardSource, samples: dict[str, tuple[list[str], list[str]]]
) -> dict:
    """Does the members' disagreement flag where the ensemble is wrong (Section 8, Coste et al. 2023)?

    For each named set of (contexts, outputs) samples (e.g. ``seen`` and ``unseen`` contexts): the
    Spearman correlation between the disagreement s(c, o) = std_k R_k(c, o) (over the centred
    members, :func:`rlhflab.rewards.ensemble.member_disagreement`) and the error |z(R̄)(c, o) − z(R*)(c, o)|
    of the members' mean R̄. R_phi (centred log-odds) and R* (the oracle's own units) share no scale,
    so each is standardised, z(x) = (x − mean) / std, over the samples of *all* sets pooled: one
    affine map per reward, so that an error R̄ makes on a whole set (higher on unseen contexts, say)
    still counts as error, which standardising each set alone would remove. A useful uncertainty
    gives a positive correlation, and more disagreement on unseen contexts than on seen ones.
    ``ensemble``: a :class:`rlhflab.rewards.ensemble.RewardEnsemble` (``load_reward_source(DIR).ensemble``).
    Returns ``{set: {"n", "mean_disagreement", "mean_error", "spearman", "note"}}``."""
    from scipy.stats import spearmanr

    members = {name: ensemble.member_rewards(c, o).double() for name, (c, o) in samples.items()}
    stars = {name: oracle(c, o).double() for name, (c, o) in samples.items()}
    pooled_mean = torch.cat([m.mean(0) for m in members.values()])
    pooled_star = torch.cat(list(stars.values()))
    scales = [(x.mean(), x.std(unbiased=False)) for x in (pooled_mean, pooled_star)]
    report = {}
    for name, rewards in members.items():
        disagreement = rewards.std(0, unbiased=False)
        out = {
            "n": int(rewards.shape[1]),
            "mean_disagreement": float(disagreement.mean()),
            "mean_error": None,
            "spearman": None,
            "note": None,
        }
        if any(scale == 0 for _, scale in scales):
            out["note"] = "undefined: R_mean or the oracle is constant over the samples, nothing to standardise"
            report[name] = out
            continue
        (mu, sd), (mu_star, sd_star) = scales
        error = ((rewards.mean(0) - mu) / sd - (stars[name] - mu_star) / sd_star).abs()
        out["mean_error"] = float(error.mean())
        if len(error) < 3 or np.ptp(disagreement.numpy()) == 0 or np.ptp(error.numpy()) == 0:
            out["note"] = "undefined: fewer than 3 samples, or the disagreement or the error is constant on them"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["spearman"] = float(spearmanr(disagreement.numpy(), error.numpy()).statistic)
        report[name] = out
    return report


def evaluate_on_sets(policy, tokenizer, prompt_sets: dict[str, list[Prompt]], **kwargs) -> dict[str, PolicyEvaluation]:
    """:func:`evaluate_policy` on each named prompt set (e.g. seen and unseen contexts), same settings."""
    results = {}
    for name, prompts in prompt_sets.items():
        with stage(f"evaluate on {len(prompts)} {name} prompts"):
            results[name] = evaluate_policy(policy, tokenizer, prompts, **kwargs)
    return results
