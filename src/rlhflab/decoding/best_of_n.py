"""Aligning at inference time with a reward model, no training (Section 7.9.1).

- :func:`best_of_n`: draw n samples per prompt from π, keep the one the reward source scores
  highest (Nakano et al. 2021; Cobbe et al. 2021). Its KL to π is reported as the usual formula
  log n − (n−1)/n, an *upper bound* (Beirami et al. 2024), beside an estimate from the samples.
- :func:`rad_decode`: reward-augmented decoding (Deng & Raffel 2023): at every step the top-k next
  tokens are scored by the reward source as continuations of the prefix, and sampled from
  softmax(logits + β·R) over those k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rlhflab.data.render import encode_prompts, prompt_text
from rlhflab.decoding.best_of_n_math import best_of_n_distribution, best_of_n_kl_bound, kl_per_context
from rlhflab.models.decoder_parts import context_length
from rlhflab.rewards.registry import RewardSource
from rlhflab.sampling.generation import sample_from_probs
from rlhflab.sampling.rollout import completion_mask_after_eos, eos_token_ids, pad_left, sample


def plug_in_best_of_n_kl(rewards: Sequence[float], texts: Sequence[str] | None = None, n: int | None = None) -> float:
    """A sample-based estimate of KL(π_bon ‖ π) for one prompt from its draws (best of ``n``; by
    default n = the number of draws).

    The exact KL of best-of-n for a discrete π (Beirami et al. 2024; `best_of_n_math.best_of_n_distribution`)
    is evaluated with π replaced by the *empirical* distribution of the n draws (identical texts
    merged; the reward decides, so draws with equal rewards form one level). It is a plug-in
    estimate, biased low: even for n distinct draws it gives the n-atom value (0.59 for n=4,
    against the bound's 0.64), and it falls further when draws repeat or rewards tie — the cases
    where the bound overstates the true KL most (short outputs, binary rewards).
    """
    texts = list(texts) if texts is not None else [str(i) for i in range(len(rewards))]
    draws = len(rewards)
    if draws < 1:
        raise ValueError("need at least one sample")
    n = draws if n is None else n
    atoms: dict[str, list[float]] = {}
    for text, r in zip(texts, rewards):
        atoms.setdefault(text, [0.0, float(r)])[0] += 1.0 / draws
    mass = torch.tensor([[m for m, _ in atoms.values()]], dtype=torch.float64)
    reward = torch.tensor([[r for _, r in atoms.values()]], dtype=torch.float64)
    return float(kl_per_context(best_of_n_distribution(mass, reward, n), mass)[0].clamp_min(0.0))


@dataclass
class BestOfN:
    """Best-of-n outputs: one chosen completion per prompt, and what choosing cost."""

    contexts: list[str]
    completions: list[str]  # the chosen sample per prompt
    rewards: list[float]  # its reward under the selecting reward source
    all_rewards: torch.Tensor  # (P, n): every sample's reward
    all_completions: list[list[str]]
    n: int
    kl_bound: float  # log n − (n−1)/n
    kl_estimate: float  # mean over prompts of `plug_in_best_of_n_kl`
    kl_estimate_se: float | None
    samples_drawn: int

    def summary(self) -> dict:
        return {
            "n": self.n,
            "prompts": len(self.contexts),
            "samples_drawn": self.samples_drawn,
            "mean_reward_chosen": float(torch.tensor(self.rewards).mean()),
            "mean_reward_single_sample": float(self.all_rewards.mean()),
            "kl_bound": self.kl_bound,
            "kl_estimate": self.kl_estimate,
            "kl_estimate_se": self.kl_estimate_se,
        }


@torch.no_grad()
def best_of_n(
    policy,
    tokenizer,
    prompts: Sequence,
    reward_source: RewardSource,
    n: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    use_chat_template="auto",
    seed: int = 0,
    batch_size: int = 32,
    truncate: bool = False,
) -> BestOfN:
    """Sample n completions per prompt (``Prompt`` records or raw prompts), keep the argmax of the
    reward source (the first of tied maxima). Prompts too long for the policy's context are an
    error, or with ``truncate`` keep their last tokens."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    raw = [getattr(p, "prompt", p) for p in prompts]
    ids = encode_prompts(tokenizer, prompts, use_chat_template, context_length(policy), max_new_tokens, truncate)
    torch.manual_seed(seed)
    rollout = sample(
        policy,
        tokenizer,
        ids,
        num_samples=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
    )
    contexts = [prompt_text(p) for p in raw]
    texts = rollout.completion_texts
    rewards = reward_source([contexts[i] for i in rollout.prompt_index.tolist()], texts).view(len(raw), n)
    best = rewards.argmax(-1)
    grouped = [texts[i * n : (i + 1) * n] for i in range(len(raw))]
    kls = torch.tensor([plug_in_best_of_n_kl(rewards[i].tolist(), grouped[i]) for i in range(len(raw))])
    se = float(kls.std() / math.sqrt(len(kls))) if len(kls) > 1 else None
    return BestOfN(
        contexts=contexts,
        completions=[grouped[i][int(b)] for i, b in enumerate(best)],
        rewards=rewards.gather(1, best[:, None]).squeeze(1).tolist(),
        all_rewards=rewards,
        all_completions=grouped,
        n=n,
        kl_bound=best_of_n_kl_bound(n),
        kl_estimate=float(kls.mean()),
        kl_estimate_se=se,
        samples_drawn=len(texts),
    )


# ---- reward-augmented decoding --------------------------------------------------------------------
def rad_logits(
    logits: torch.Tensor, candidate_rewards: torch.Tensor, candidates: torch.Tensor, beta: float
) -> torch.Tensor:
    """RAD's next-token logits (Deng & Raffel 2023, Eq. 2-3): z'_v = z_v + β·R(x, y_<t, v) for the
    top-k tokens v, −inf for the rest. logits: (B, V); candidates, candidate_rewards: (B, k).
    With β = 0 this is plain top-k sampling."""
    out = torch.full_like(logits, float("-inf"))
    picked = logits.gather(-1, candidates) + beta * candidate_rewards.to(logits.dtype)
    return out.scatter(-1, candidates, picked)


@dataclass
class RADOutput:
    contexts: list[str]
    completions: list[str]
    completion_ids: list[list[int]]
    reward_calls: int  # reward-source evaluations spent (B·k per step)
    extras: dict = field(default_factory=dict)


@torch.no_grad()
def rad_decode(
    policy,
    tokenizer,
    prompts: Sequence,
    reward_source: RewardSource | None,
    beta: float = 1.0,
    top_k: int = 10,
    max_new_tokens: int = 32,
    use_chat_template="auto",
    seed: int = 0,
    batch_size: int = 16,
    truncate: bool = False,
) -> RADOutput:
    """Sample one completion per prompt with RAD: at each step the k most likely next tokens are
    appended to the prefix, the reward source scores each (prompt, prefix + token) as text, and
    the token is drawn from softmax(z + β·R) over those k (``rad_logits``).

    The reward source is called on B·k partial outputs per step, batched over rows; RAD's own
    unidirectional reward model caches its states across steps, which is not attempted here.
    ``beta=0`` (or no reward source) is top-k ancestral sampling; the draw is the sampling
    engine's (``generation.sample_from_probs``), so it reproduces ``rollout.sample`` token for token.
    """
    raw = [getattr(p, "prompt", p) for p in prompts]
    contexts = [prompt_text(p) for p in raw]
    all_ids = encode_prompts(tokenizer, prompts, use_chat_template, context_length(policy), max_new_tokens, truncate)
    eos_ids = eos_token_ids(policy, tokenizer)
    was_training = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    torch.manual_seed(seed)
    rows, calls = [], 0
    for start in range(0, len(raw), batch_size):
        chunk = raw[start : start + batch_size]
        ids = all_ids[start : start + batch_size]
        input_ids, mask = (t.to(device) for t in pad_left(ids, tokenizer.pad_token_id))
        generated = torch.zeros((len(chunk), 0), dtype=torch.long, device=device)
        done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        cache, step_ids = {}, input_ids
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
            out = policy(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True, **cache)
            # transformers 5 names the key/value cache `cache`; 4.x named it `past_key_values`.
            name = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
            cache, logits = {name: getattr(out, name)}, out.logits[:, -1].float()
            candidates = logits.topk(min(top_k, logits.shape[-1]), dim=-1).indices  # (B, k)
            rewards = torch.zeros_like(candidates, dtype=logits.dtype)
            if reward_source is not None and beta != 0:
                prefixes = [generated[b].tolist() for b in range(len(chunk))]
                texts = [
                    tokenizer.decode(prefixes[b] + [int(v)], skip_special_tokens=True)
                    for b in range(len(chunk))
                    for v in candidates[b]
                ]
                ctx = [contexts[start + b] for b in range(len(chunk)) for _ in range(candidates.shape[1])]
                rewards = reward_source(ctx, texts).to(device).view_as(candidates)
                calls += len(texts)
            probs = torch.softmax(rad_logits(logits, rewards, candidates, beta), dim=-1)
            token = sample_from_probs(probs)
            token = torch.where(done, torch.full_like(token, tokenizer.pad_token_id), token)
            generated = torch.cat([generated, token[:, None]], dim=1)
            done |= torch.isin(token, torch.tensor(eos_ids, device=device))
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step_ids = token[:, None]
            if done.all():
                break
        keep, _ = completion_mask_after_eos(generated.cpu(), eos_ids)
        rows.extend(row[: int(k.sum())].tolist() for row, k in zip(generated.cpu(), keep))
    policy.train(was_training)
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return RADOutput(contexts=contexts, completions=texts, completion_ids=rows, reward_calls=calls)
