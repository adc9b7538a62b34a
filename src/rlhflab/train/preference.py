"""Direct preference methods on the one loop (Section 7.9.2): the policy is its own reward model.

    DPO   (Rafailov et al. 2023)      -log σ(β h)                     h = log-ratio margin, below
    cDPO  (Mitchell 2023)             DPO with each label flipped with probability ε
    rDPO  (Chowdhury et al. 2024)     the unbiased flipped-label correction of DPO
    IPO   (Azar et al. 2023)          (h − 1/(2β))², on per-token mean log-probs
    SLiC  (Zhao et al. 2023)          max(0, δ − log π(y_c) + log π(y_r)) + λ·(−log π(y_c))
    RRHF  (Yuan et al. 2023)          ranking hinge over k responses + SFT on the best
    PRO   (Song et al. 2023)          Plackett-Luce over k responses + SFT on the best
    KTO   (Ethayarajh et al. 2024)    λ_y − v(x, y) on unpaired good / bad labels, z_ref from mismatched pairs

with h = [log π(y_c) − log π_ref(y_c)] − [log π(y_r) − log π_ref(y_r)]. The losses themselves are
the pure functions of :mod:`rlhflab.losses.preference`; this module only says which batch they see.

π_ref is frozen, so its log-probs of the dataset never change: by default they are computed once,
before the first step, in large no-grad batches, and the reference model is then dropped
(``precompute_reference``). Each optimiser step then costs one policy forward/backward: chosen and
rejected go through the policy *together*, as one concatenated batch of 2B rows.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.config import PolicyOptions, TrainConfig, chat_template_option, data_format_option, option
from rlhflab.data.records import Rating
from rlhflab.errors import ConfigError, DataError
from rlhflab.losses import (
    dpo_loss,
    ipo_loss,
    kto_loss,
    pairwise_accuracy,
    plackett_luce_loss,
    robust_dpo_loss,
    rrhf_loss,
    sequence_logprob,
    slic_loss,
)
from rlhflab.sampling.rollout import completion_logprobs, join_prompt_completion
from rlhflab.seeds import derive_seed
from rlhflab.train.loop import train
from rlhflab.train.offline import OfflineAlgorithm, tokenize_demonstrations

PREFERENCE_LOSSES = ["dpo", "ipo", "cdpo", "rdpo", "slic"]
KTO_DATA = (
    "binary ratings (prompt, completion, score 0/1, scale 'binary'), TRL unpaired preferences (prompt, completion, "
    "label) or preference pairs (each unpaired, as TRL does)"
)
RANKING_LOSSES = ["rrhf", "pro"]

Example = tuple[list[int], list[int]]  # (prompt ids, completion ids + EOS)


@dataclass
class ReferenceOptions:
    """The frozen reference policy pi_ref of the methods that score against one (DPO family, KTO)."""

    reference: str | None = option(
        None, "Reference policy pi_ref (default: --policy as loaded; with LoRA, the adapter-disabled model)."
    )
    precompute_reference: bool = option(
        True,
        "Compute pi_ref's log-probs of the whole dataset once before training (pi_ref is frozen) instead of at every step.",
    )
    reference_batch_size: int = option(16, "Rows per no-grad reference forward pass when precomputing.")


@dataclass
class PreferenceConfig(TrainConfig, PolicyOptions, ReferenceOptions):
    """Direct preference optimisation on (prompt, chosen, rejected) pairs, no reward model:
    DPO, IPO, conservative DPO (cdpo), robust DPO (rdpo) or SLiC-HF (Section 7.9.2)."""

    loss: str = option("dpo", "Preference loss.", choices=PREFERENCE_LOSSES)
    data: str | None = option(None, "Preferences (prompt, chosen, rejected): JSONL, JSON, Parquet or a saved dataset.")
    format: str | None = data_format_option()
    kl_coef: float = option(
        0.1,
        "beta: the KL-constraint strength of Eq. 17 that the implicit reward beta*log(pi/pi_ref) carries; IPO's margin target is 1/(2 beta).",
        aliases=["--beta"],
    )
    label_smoothing: float = option(0.0, "epsilon: assumed probability that a label is flipped (cdpo, rdpo; < 0.5).")
    slic_delta: float = option(1.0, "delta: margin of the SLiC-HF rank-calibration hinge.")
    slic_reg_weight: float = option(
        0.1, "lambda: weight of SLiC-HF's cross-entropy regulariser on the chosen responses."
    )
    use_chat_template: str = chat_template_option()
    learning_rate: float = option(1e-6, "Peak learning rate of AdamW.")

    def validate(self):
        super().validate()
        if self.kl_coef <= 0:
            raise ConfigError("kl_coef (beta) must be positive")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss in ("cdpo", "rdpo") and self.label_smoothing == 0:
            raise ConfigError(f"--loss {self.loss} needs --label_smoothing > 0 (with 0 it is plain dpo)")


def tokenize_pairs(
    records: Sequence, tokenizer, config: TrainConfig, source: str = "<data>", use_chat_template="auto"
) -> list[tuple[Example, Example]]:
    """((prompt, chosen + EOS), (prompt, rejected + EOS)) token ids per Preference record, with the
    length checks of :func:`tokenize_demonstrations` (errors name the file, line and field)."""
    prompts = [r.prompt for r in records]
    chosen = tokenize_demonstrations(prompts, [r.chosen for r in records], tokenizer, config, source, use_chat_template)
    rejected = tokenize_demonstrations(
        prompts, [r.rejected for r in records], tokenizer, config, source, use_chat_template
    )
    return list(zip(chosen, rejected))


def sequence_logps(model, examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y | x) summed over each completion's tokens, and the token counts |y|, for a list of
    (prompt, completion) examples in ONE forward pass. Shapes (N,), (N,)."""
    batch = join_prompt_completion([p for p, _ in examples], [c for _, c in examples], pad_id)
    batch = batch.to(next(model.parameters()).device)
    logprobs = completion_logprobs(model, batch)
    return sequence_logprob(logprobs, batch.completion_mask), batch.completion_mask.sum(-1).to(logprobs.dtype)


class _FrozenReference:
    """π_ref as a callable giving summed log-probs: a separate frozen model, or (LoRA) the policy
    with its adapters disabled, so no second copy of the weights is kept."""

    def __init__(self, policy, reference=None, use_lora: bool = False):
        self.use_lora = use_lora
        self.model = None if use_lora else (reference if reference is not None else copy.deepcopy(policy))
        if self.model is not None:
            self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, policy, examples: Sequence[Example], pad_id: int) -> torch.Tensor:
        if self.use_lora:
            with policy.disable_adapter():
                return sequence_logps(policy, examples, pad_id)[0]
        return sequence_logps(self.model, examples, pad_id)[0]


class _OfflineListAlgorithm(OfflineAlgorithm):
    """What DPO-family and ranking methods add to the shared offline algorithm: the pad id for
    their own batching and whether the policy carries LoRA adapters (the reference then)."""

    def _init_common(self, config, model, tokenizer, num_examples):
        OfflineAlgorithm.__init__(self, config, model, tokenizer, num_examples)
        self.pad_id = tokenizer.pad_token_id
        self.use_lora = hasattr(model, "disable_adapter")


class _ReferencedPairs(_OfflineListAlgorithm):
    """Methods whose examples come two by two, each scored under a frozen π_ref: (chosen, rejected)
    for the DPO family, (example, mismatched example) for KTO. ``self.pairs`` holds them;
    π_ref's log-probs of the whole dataset are computed once in ``bind`` when
    ``precompute_reference`` is set (π_ref is frozen), else per micro-batch."""

    def _init_reference(self, reference: _FrozenReference | None) -> None:
        self.reference = reference
        self.reference_cache: torch.Tensor | None = None  # (N, 2): log π_ref of each pair's two
        self.reference_seconds = 0.0

    def bind(self, accelerator, modules):
        super().bind(accelerator, modules)
        if self.reference is None:
            return
        if self.reference.model is not None:
            self.reference.model.to(accelerator.device)
        if self.config.precompute_reference:
            t0 = time.perf_counter()
            self.reference_cache = self.reference_logps(range(len(self.pairs)), self.config.reference_batch_size)
            self.reference_seconds = time.perf_counter() - t0
            self.reference.model = None  # frozen and fully cached: its memory can go

    def reference_logps(self, indices, batch_size: int) -> torch.Tensor:
        """log π_ref of each given pair's two examples (chosen, rejected for DPO), (len(indices), 2)."""
        indices, parts = list(indices), []
        policy = self.accelerator.unwrap_model(self.model)
        for i in range(0, len(indices), batch_size):
            chunk = [self.pairs[j] for j in indices[i : i + batch_size]]
            logps = self.reference.logps(policy, [c for c, _ in chunk] + [r for _, r in chunk], self.pad_id)
            parts.append(torch.stack(logps.split(len(chunk)), dim=-1).cpu())
        return torch.cat(parts)

    def collect(self, iteration):
        # The one-off cost of the cache, logged once so that runs can be compared.
        if iteration == 0 and self.reference_cache is not None:
            return {"reference_precompute_seconds": self.reference_seconds}
        return {}

    def pair_reference_logps(self, index, device) -> torch.Tensor:
        """log π_ref of the given pairs' two examples, (len(index), 2), from the cache if there is one."""
        if self.reference_cache is not None:
            return self.reference_cache[index].to(device)
        return self.reference_logps(index, len(index)).to(device)


class PreferenceAlgorithm(_ReferencedPairs):
    """DPO / IPO / cDPO / rDPO / SLiC-HF on preference pairs (see the module docstring)."""

    def __init__(
        self,
        config: PreferenceConfig,
        model,
        tokenizer,
        pairs: list[tuple[Example, Example]],
        reference=None,
        pair_label_smoothing=None,
    ):
        """``pair_label_smoothing``: optional per-pair ε_i (dpo / cdpo only), replacing the config's ε —
        soft labels, pair i saying chosen ≻ rejected with probability 1 − ε_i."""
        self._init_common(config, model, tokenizer, len(pairs))
        self.name, self.pairs = config.loss, pairs
        self.pair_label_smoothing = None
        if pair_label_smoothing is not None:
            eps = torch.as_tensor(pair_label_smoothing, dtype=torch.float32).flatten()
            if config.loss not in ("dpo", "cdpo"):
                raise ConfigError(f"per-pair label smoothing is for dpo / cdpo, not {config.loss}")
            if len(eps) != len(pairs) or not bool(((eps >= 0) & (eps <= 1)).all()):
                raise ConfigError(f"per-pair label smoothing needs {len(pairs)} values in [0, 1], got {len(eps)}")
            self.pair_label_smoothing = eps
        # SLiC-HF needs no reference: its regulariser plays that part.
        self._init_reference(None if config.loss == "slic" else _FrozenReference(model, reference, self.use_lora))

    def loss(self, micro):
        index, weight = micro
        cfg, pairs = self.config, [self.pairs[i] for i in index]
        # One forward over chosen and rejected together (2B rows).
        logps, lengths = sequence_logps(self.model, [c for c, _ in pairs] + [r for _, r in pairs], self.pad_id)
        policy_chosen, policy_rejected = logps.split(len(pairs))
        if cfg.loss == "slic":
            loss = slic_loss(policy_chosen, policy_rejected, cfg.slic_delta, cfg.slic_reg_weight)
            stats = {"accuracy": pairwise_accuracy(policy_chosen.detach(), policy_rejected.detach())}
            return loss * weight, stats
        ref = self.pair_reference_logps(index, logps.device)
        ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]
        args = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
        if cfg.loss == "ipo":
            # IPO's analysis (and TRL) uses per-token mean log-probs, so long answers don't dominate.
            len_chosen, len_rejected = lengths.split(len(pairs))
            args = (
                policy_chosen / len_chosen,
                policy_rejected / len_rejected,
                ref_chosen / len_chosen,
                ref_rejected / len_rejected,
            )
            loss, chosen_rewards, rejected_rewards = ipo_loss(*args, beta=cfg.kl_coef)
        elif cfg.loss == "rdpo":
            loss, chosen_rewards, rejected_rewards = robust_dpo_loss(
                *args, beta=cfg.kl_coef, label_smoothing=cfg.label_smoothing
            )
        else:  # dpo, and cdpo = dpo with label smoothing
            smoothing = cfg.label_smoothing if cfg.loss == "cdpo" else 0.0
            if self.pair_label_smoothing is not None:
                smoothing = self.pair_label_smoothing[torch.as_tensor(index, dtype=torch.long)].to(logps.device)
            loss, chosen_rewards, rejected_rewards = dpo_loss(*args, beta=cfg.kl_coef, label_smoothing=smoothing)
        stats = {
            "accuracy": pairwise_accuracy(chosen_rewards, rejected_rewards),
            "reward_margin": float((chosen_rewards - rejected_rewards).mean()),
            "chosen_reward": float(chosen_rewards.mean()),
            "rejected_reward": float(rejected_rewards.mean()),
        }
        return loss * weight, stats


# ---- unpaired preferences: KTO ------------------------------------------------------------------
@dataclass
class KTOConfig(TrainConfig, PolicyOptions, ReferenceOptions):
    """KTO (Ethayarajh et al. 2024) on unpaired thumbs-up / thumbs-down feedback: each completion is
    labelled desirable or undesirable on its own, no pairs needed."""

    data: str | None = option(None, f"Unpaired feedback: {KTO_DATA}. JSONL, JSON, Parquet or a saved dataset.")
    format: str | None = data_format_option()
    kl_coef: float = option(
        0.1,
        "beta: the KL-constraint strength of Eq. 17 that the implied reward beta*log(pi/pi_ref) carries.",
        aliases=["--beta"],
    )
    desirable_weight: float = option(
        1.0,
        "lambda_D: weight of the desirable examples' losses (KTO advises lambda_D n_D / (lambda_U n_U) in [1, 4/3]).",
    )
    undesirable_weight: float = option(1.0, "lambda_U: weight of the undesirable examples' losses.")
    use_chat_template: str = chat_template_option()
    learning_rate: float = option(1e-6, "Peak learning rate of AdamW.")

    def validate(self):
        super().validate()
        if self.kl_coef <= 0:
            raise ConfigError("kl_coef (beta) must be positive")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ConfigError("desirable_weight and undesirable_weight must be non-negative")
        if self.desirable_weight == self.undesirable_weight == 0:
            raise ConfigError("desirable_weight and undesirable_weight are both 0: nothing to train")


def unpair(preferences: Sequence) -> list:
    """Preference pairs as unpaired feedback, as TRL's KTOTrainer reads a paired dataset: each pair's
    chosen completion a desirable example, its rejected one an undesirable example (binary Ratings)."""
    return [
        Rating(p.prompt, completion, score, "binary", p.annotator)
        for p in preferences
        for completion, score in ((p.chosen, 1.0), (p.rejected, 0.0))
    ]


def unpaired_labels(records: Sequence, source: str = "<data>") -> list[bool]:
    """Each binary Rating record's label (score 1: desirable); a rating on another scale, or of one
    attribute, is a DataError naming its row (KTO needs an overall good / bad verdict)."""
    labels = []
    for i, r in enumerate(records):
        where = getattr(r, "origin", None) or (source, i + 1, "score")
        if r.scale != "binary":
            raise DataError(where[0], where[1], "scale", f"is {r.scale!r}; kto takes {KTO_DATA}")
        if r.attribute is not None:
            raise DataError(
                where[0], where[1], "attribute", f"rates {r.attribute!r} only; kto takes overall good / bad verdicts"
            )
        labels.append(r.score == 1.0)
    return labels


def mismatched_examples(examples: Sequence[Example], config: TrainConfig) -> list[Example]:
    """For example i, prompt x_i with another example's completion y'_i: the mismatched pairs
    whose log-ratios estimate KL(π ‖ π_ref), KTO's reference point. The partner is the next example
    of a seeded random cycle over the data (fixed, so π_ref's log-probs of them can be cached); a
    prompt too long for the partner's completion keeps its last tokens (an estimate only)."""
    n = len(examples)
    if n < 2:
        raise ConfigError("kto needs at least 2 examples (the KL estimate pairs each prompt with another's completion)")
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "kto mismatched pairs"))
    order = torch.randperm(n, generator=generator).tolist()
    partner = {order[k]: order[(k + 1) % n] for k in range(n)}
    out = []
    for i, (prompt, _) in enumerate(examples):
        completion = examples[partner[i]][1]
        room = max(1, config.max_length - len(completion))
        out.append((prompt[-room:], completion))
    return out


class KTOAlgorithm(_ReferencedPairs):
    """KTO on the one loop: each pair is (example, mismatched example), so one policy forward of 2B
    rows gives log π of both, and π_ref's are cached as for DPO."""

    name = "kto"

    def __init__(
        self, config: KTOConfig, model, tokenizer, examples: list[Example], labels: Sequence[bool], reference=None
    ):
        if len(labels) != len(examples):
            raise ValueError(f"{len(labels)} labels for {len(examples)} examples")
        self._init_common(config, model, tokenizer, len(examples))
        self.pairs = list(zip(examples, mismatched_examples(examples, config)))
        self.labels = torch.tensor(list(labels), dtype=torch.bool)
        self._init_reference(_FrozenReference(model, reference, self.use_lora))

    def loss(self, micro):
        index, weight = micro
        cfg, pairs = self.config, [self.pairs[i] for i in index]
        logps, _ = sequence_logps(self.model, [e for e, _ in pairs] + [m for _, m in pairs], self.pad_id)
        policy_logps, policy_kl_logps = logps.split(len(pairs))
        ref = self.pair_reference_logps(index, logps.device)
        desirable = self.labels[torch.as_tensor(index, dtype=torch.long)].to(logps.device)
        loss, rewards, z_ref = kto_loss(
            policy_logps,
            ref[:, 0],
            desirable,
            policy_kl_logps,
            ref[:, 1],
            cfg.kl_coef,
            cfg.desirable_weight,
            cfg.undesirable_weight,
        )
        stats = {"kl": float(z_ref)}
        if bool(desirable.any()):
            stats["desirable_reward"] = float(rewards[desirable].mean())
        if not bool(desirable.all()):
            stats["undesirable_reward"] = float(rewards[~desirable].mean())
        return loss * weight, stats


# ---- rankings: RRHF and PRO ---------------------------------------------------------------------
@dataclass
class RankingConfig(TrainConfig, PolicyOptions):
    """Ranking-based fine-tuning on k responses per prompt, best first: RRHF (pairwise hinge on
    length-normalised log-probs) or PRO (Plackett-Luce over them), each plus SFT on the best."""

    loss: str = option("rrhf", "Ranking loss.", choices=RANKING_LOSSES)
    data: str | None = option(
        None, "Rankings (prompt, completions best first, optional ties): JSONL, JSON, Parquet or a saved dataset."
    )
    format: str | None = data_format_option()
    sft_weight: float = option(1.0, "Weight of the SFT term -log pi(y_best | x) (RRHF's and PRO's own regulariser).")
    use_chat_template: str = chat_template_option()
    learning_rate: float = option(1e-6, "Peak learning rate of AdamW.")


def tokenize_rankings(
    records: Sequence, tokenizer, config: TrainConfig, source: str = "<data>", use_chat_template="auto"
) -> list[tuple[list[Example], list[int]]]:
    """Per Ranking record: its k (prompt, completion + EOS) examples, best first, and rank groups
    (lower = better, equal = tied)."""
    out = []
    for r in records:
        examples = tokenize_demonstrations(
            [r.prompt] * len(r.completions), r.completions, tokenizer, config, source, use_chat_template
        )
        out.append((examples, list(r.ties) if r.ties is not None else list(range(len(r.completions)))))
    return out


class RankingAlgorithm(_OfflineListAlgorithm):
    """RRHF / PRO: one forward over all k responses of every list in the micro-batch."""

    def __init__(self, config: RankingConfig, model, tokenizer, rankings: list[tuple[list[Example], list[int]]]):
        self._init_common(config, model, tokenizer, len(rankings))
        self.name, self.rankings = config.loss, rankings

    def loss(self, micro):
        index, weight = micro
        lists = [self.rankings[i] for i in index]
        k = max(len(examples) for examples, _ in lists)
        # Lists shorter than k are padded with a copy of their best response, masked out.
        rows = [examples[j] if j < len(examples) else examples[0] for examples, _ in lists for j in range(k)]
        logps, lengths = sequence_logps(self.model, rows, self.pad_id)
        logps, lengths = logps.view(len(lists), k), lengths.view(len(lists), k)
        mask = torch.tensor([[j < len(ex) for j in range(k)] for ex, _ in lists], device=logps.device)
        groups = torch.tensor([g + [10**6] * (k - len(g)) for _, g in lists], device=logps.device)
        scores = logps / lengths  # p_i: length-normalised log-probs (both papers)
        best_logps = logps[:, 0]  # the first response of each list is (one of) its best
        if self.config.loss == "rrhf":
            loss = rrhf_loss(scores, -groups.to(scores.dtype), mask, best_logps, self.config.sft_weight)
        else:
            # PRO = `pro_loss` (Plackett-Luce over the policy's scores); ties keep each other in the
            # denominator (Breslow) rather than claiming an order the data does not give.
            loss = plackett_luce_loss(scores, groups, mask) + self.config.sft_weight * (-best_logps).mean()
        with torch.no_grad():
            top1 = scores.masked_fill(~mask, float("-inf")).argmax(-1)
            stats = {"top1_accuracy": float((groups.gather(1, top1[:, None]) == groups[:, :1]).float().mean())}
        return loss * weight, stats


# ---- training on records ------------------------------------------------------------------------
def train_preferences(
    cfg: PreferenceConfig,
    policy,
    tokenizer,
    records: Sequence,
    reference=None,
    source: str = "<preferences>",
    should_stop=None,
) -> Path:
    """Train ``policy`` (LoRA already applied, if any) with a direct preference loss on Preference
    records; returns the run directory. ``should_stop``: the loop's after-step hook (``train``)."""
    pairs = tokenize_pairs(records, tokenizer, cfg, source, cfg.use_chat_template)
    return train(cfg, PreferenceAlgorithm(cfg, policy, tokenizer, pairs, reference), should_stop=should_stop)


def train_kto(
    cfg: KTOConfig,
    policy,
    tokenizer,
    records: Sequence,
    reference=None,
    source: str = "<feedback>",
    should_stop=None,
) -> Path:
    """Train ``policy`` with KTO on binary Rating records (TRL's unpaired rows read as such); returns
    the run directory. ``should_stop``: the loop's after-step hook (``train``)."""
    labels = unpaired_labels(records, source)
    examples = tokenize_demonstrations(
        [r.prompt for r in records], [r.completion for r in records], tokenizer, cfg, source, cfg.use_chat_template
    )
    return train(cfg, KTOAlgorithm(cfg, policy, tokenizer, examples, labels, reference), should_stop=should_stop)


def train_rankings(cfg: RankingConfig, policy, tokenizer, records: Sequence, source: str = "<rankings>") -> Path:
    """Train ``policy`` with RRHF or PRO on Ranking records; returns the run directory."""
    rankings = tokenize_rankings(records, tokenizer, cfg, source, cfg.use_chat_template)
    return train(cfg, RankingAlgorithm(cfg, policy, tokenizer, rankings))
