"""Reward modelling on the one loop: Bradley-Terry on pairs (Eq. 11), Plackett-Luce on rankings,
regression on ratings (Eq. 7), with one head per annotator or attribute, a mean-variance head, or an
ensemble (K separate members or one shared trunk with K heads; layout in :mod:`rlhflab.rewards.ensemble`).
A prompt's k completions can share one forward of the prompt (decoder reward models)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rlhflab.config import (
    TrainConfig,
    data_format_option,
    default_run_dir,
    option,
    save_config,
)
from rlhflab.data.render import completion_text, prompt_text
from rlhflab.errors import ConfigError
from rlhflab.losses import (
    bradley_terry_loss,
    mean_variance_bradley_terry_loss,
    pairwise_accuracy,
    plackett_luce_loss,
    regression_loss,
)
from rlhflab.models import load_reward_model
from rlhflab.models.decoder_parts import cache_argument
from rlhflab.models.loading import apply_lora, save_model
from rlhflab.models.scoring import INPUT_FORMAT_KEY, encode_for_reward, input_format
from rlhflab.rewards.ensemble import (
    bootstrap_indices,
    centring_offset,
    feedback_completions,
    init_member_heads,
    member_seed,
    parse_objective,
    write_manifest,
)
from rlhflab.rewards.heads import (
    ALL_ATTRIBUTES,
    MANIFEST,
    head_index,
    init_attribute_levels,
    load_head_scores,
    num_outputs,
    parse_attribute_list,
    training_manifest,
)
from rlhflab.rewards.registry import load_reward_source
from rlhflab.sampling.rollout import pad_left, pad_right
from rlhflab.train.loop import latest_checkpoint, train
from rlhflab.train.offline import OfflineAlgorithm


@dataclass
class RewardConfig(TrainConfig):
    """Reward modelling: Bradley-Terry on pairs (Eq. 11), Plackett-Luce on rankings, regression
    on ratings (Eq. 7)."""

    model: str = option("minilm-l6", "Reward-model backbone (encoder or decoder) or a saved reward model.")
    data: str | None = option(None, "Feedback file: preferences, rankings or ratings.")
    format: str | None = data_format_option()
    feedback: str = option("preference", "Kind of feedback in --data.", choices=["preference", "ranking", "rating"])
    eval_data: str | None = option(
        None, "Held-out preferences for accuracy and calibration (default: a split of --data)."
    )
    eval_fraction: float = option(0.1, "Fraction of --data held out when --eval_data is not given.")
    use_margin: bool = option(False, "Use the 'margin' column in the Bradley-Terry loss (Touvron et al. 2023).")
    per_annotator: bool = option(
        False,
        "One scalar head per annotator on the shared backbone, each pair's Bradley-Terry logit from its "
        "annotator's head (records need 'annotator'); --reward DIR is the heads' mean, DIR::annotator=NAME "
        "one head (see rlhflab.rewards.heads).",
    )
    distributional: bool = option(
        False,
        "Mean-variance Bradley-Terry: each output's reward is N(mu, sigma^2), both predicted "
        "(losses.mean_variance_bradley_terry_loss); --reward DIR gives mu.",
    )
    learning_rate: float = option(5e-5, "Peak learning rate of AdamW.")
    num_epochs: float = option(2.0, "Passes over the training data.")
    batch_size: int = option(16, "Feedback records per optimiser step across all processes.")
    batch_by_prompt: bool = option(
        True,
        "Keep a prompt's preference pairs in one batch, so each completion is scored once for all "
        "its pairs (Ouyang et al. 2022: k completions cost k forwards, not k(k-1)); False: pairs shuffled alone.",
    )
    ensemble: int = option(
        1,
        "Reward models to train: K > 1 trains an ensemble (Coste et al. 2023) into OUT/member-00 ... and "
        "writes OUT/ensemble.json; --reward OUT[::mean|wco|uwo[:LAMBDA]] loads it (see rlhflab.rewards.ensemble).",
    )
    ensemble_data: str = option(
        "seeds",
        "What ensemble members differ in: 'seeds' (same records, own seed: head initialisation and order) or "
        "'bootstrap' (each also on its own seeded resample of the records, with replacement).",
        choices=["seeds", "bootstrap"],
    )
    ensemble_objective: str = option(
        "mean", "The ensemble's default objective when a spec names none: mean, wco, uwo or uwo:LAMBDA."
    )
    ensemble_trunk: str = option(
        "separate",
        "How ensemble members are built: 'separate' (K whole reward models, K runs) or 'shared' (one backbone "
        "with K linear heads, each initialised from its member's seed, one run: about K times cheaper; with "
        "--ensemble_data bootstrap each head weighs the batch's records by their count in its own resample).",
        choices=["separate", "shared"],
    )
    attributes: str | None = option(
        None,
        "With --feedback rating: one regression head per rated attribute (the ratings' 'attribute' column), "
        "'all' or a comma-separated list (ratings of other attributes are left out); --reward DIR is the "
        "heads' mean, DIR::attribute=NAME one head (see rlhflab.rewards.heads).",
    )

    def validate(self) -> None:
        super().validate()
        if self.ensemble < 1:
            raise ConfigError(f"ensemble must be at least 1, got {self.ensemble}")
        if self.ensemble_data not in ("seeds", "bootstrap"):
            raise ConfigError(f"ensemble_data must be 'seeds' or 'bootstrap', got '{self.ensemble_data}'")
        parse_objective(self.ensemble_objective, "--ensemble_objective")
        if self.per_annotator and self.distributional:
            raise ConfigError("per_annotator and distributional cannot be combined; choose one")
        if (self.per_annotator or self.distributional) and self.feedback != "preference":
            raise ConfigError(
                "per_annotator and distributional train on preference feedback only (--feedback preference)"
            )
        if self.distributional and self.use_margin:
            raise ConfigError("use_margin has no meaning in the mean-variance loss; drop it or --distributional")
        if self.ensemble_trunk not in ("separate", "shared"):
            raise ConfigError(f"ensemble_trunk must be 'separate' or 'shared', got '{self.ensemble_trunk}'")
        if self.ensemble_trunk == "shared" and self.ensemble < 2:
            raise ConfigError("ensemble_trunk shared builds an ensemble: give --ensemble K with K >= 2")
        if self.attributes is not None:
            if self.feedback != "rating":
                raise ConfigError("attributes trains one regression head per attribute on ratings (--feedback rating)")
            if self.per_annotator or self.distributional or self.ensemble > 1:
                raise ConfigError("attributes cannot be combined with per_annotator, distributional or ensemble")
            if self.attributes.strip() != ALL_ATTRIBUTES:
                parse_attribute_list(self.attributes)
        if self.ensemble > 1 and (self.per_annotator or self.distributional):
            raise ConfigError("ensemble members are scalar reward models: drop per_annotator / distributional")


class RewardAlgorithm(OfflineAlgorithm):
    """R_phi trained by maximum likelihood of the feedback (Eq. 5-6), one forward per step over all
    distinct completions of the batch (chosen and rejected together).

    A model with K heads (``num_labels``) weighs each (record, head) pair: ``head_weights`` (N, K)
    counts how often record i trains head k, and the loss is Σ_ik w_ik ℓ_ik / (B · heads per record).
    One head per group (annotator, attribute): w_i is one-hot on the record's group (heads per
    record 1). A shared-trunk ensemble (``ensemble_trunk="shared"``): every record trains every head
    (w = 1, heads per record K), or, with ``ensemble_data="bootstrap"``, w_ik is record i's count in
    head k's resample of the data (expected 1), so each head fits its own bootstrap while the trunk
    fits them all. A plain model is K = 1, w = 1."""

    name = "reward"
    module_name = "reward_model"

    def __init__(self, config: RewardConfig, model, tokenizer, records: Sequence):
        groups = None
        if config.feedback == "preference" and config.batch_by_prompt:
            groups = [
                json.dumps(r.prompt, sort_keys=True) if not isinstance(r.prompt, str) else r.prompt for r in records
            ]
        super().__init__(config, model, tokenizer, len(records), groups)
        self.records = list(records)
        self.share_prompts = supports_shared_prompt(model, tokenizer)
        # Several outputs per (c, o): one per annotator or attribute, or (mu, log sigma^2) (see
        # rlhflab.rewards.heads), or one per member of a shared-trunk ensemble.
        self.heads = training_manifest(config.per_annotator, config.distributional, self.records, config.attributes)
        shared_ensemble = config.ensemble > 1 and config.ensemble_trunk == "shared"
        needed = config.ensemble if shared_ensemble else num_outputs(self.heads)
        if model.config.num_labels != needed:
            raise ConfigError(
                f"the reward model has {model.config.num_labels} output(s), this run needs {needed} "
                "(load it with load_reward_model(..., num_labels=rlhflab.rewards.heads.num_outputs(...)))"
            )
        self.heads_per_record = needed if shared_ensemble else 1
        self.head_weights = None  # None: every record trains every head once (a plain model, or seeds)
        head_of = head_index(self.heads, self.records)
        if head_of is not None:
            self.head_weights = torch.nn.functional.one_hot(torch.tensor(head_of), needed)
        elif shared_ensemble and config.ensemble_data == "bootstrap":
            n = len(self.records)
            resamples = [bootstrap_indices(n, member_seed(config.seed, k)) for k in range(needed)]
            self.head_weights = torch.stack([torch.bincount(torch.tensor(r), minlength=n) for r in resamples], dim=1)

    def _rewards(self, contexts, outputs, group_size: int = 1):
        """R_phi of each (context, output). With ``group_size`` k > 1, ``contexts`` holds each
        context k times in a row and a decoder reward model reads it once for all k outputs
        (:func:`shared_prompt_rewards`); otherwise each distinct (context, output) is one sequence,
        scored once however often the batch repeats it (the gradient is the same)."""
        if group_size > 1 and self.share_prompts:
            encoded = shared_prompt_encoding(
                self.tokenizer, contexts[::group_size], outputs, group_size, self.config.max_length
            )
            if encoded is not None:
                return shared_prompt_rewards(self.model, encoded, self.accelerator.device)
        position = {}
        index = [position.setdefault(pair, len(position)) for pair in zip(contexts, outputs)]
        distinct_contexts, distinct_outputs = zip(*position) if position else ((), ())
        encoded = encode_for_reward(
            self.tokenizer, list(distinct_contexts), list(distinct_outputs), self.config.max_length
        )
        encoded = {k: v.to(self.accelerator.device) for k, v in encoded.items()}
        rewards = self.model(**encoded).logits.squeeze(-1).float()
        return rewards[torch.tensor(index, device=rewards.device)]

    def output_names(self, num_labels: int) -> list[str]:
        """What each output of the model is, for its config's ``id2label`` (other tools show these)."""
        kind = (self.heads or {}).get("kind")
        if kind == "annotator":
            return [f"annotator={name}" for name in self.heads["annotators"]]
        if kind == "attribute":
            return [f"attribute={name}" for name in self.heads["attributes"]]
        if kind == "mean_variance":
            return ["mean", "log_variance"]
        return ["reward"] if num_labels == 1 else [f"member-{k:02d}" for k in range(num_labels)]

    def save_final(self, run_dir: Path):
        model = self.accelerator.unwrap_model(self.model)
        names = self.output_names(model.config.num_labels)
        # Where TRL / OpenRLHF users look: the config says how the input was laid out, and what each output is.
        setattr(model.config, INPUT_FORMAT_KEY, input_format(self.tokenizer))
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
        extra = {MANIFEST: self.heads} if self.heads is not None else None
        save_model(
            model,
            self.tokenizer,
            str(run_dir / self.module_name),
            extra_json=extra,
            method="reward",
            config=self.config,
            kind="reward model",
        )

    def _per_head(self, indices, *per_head):
        """Every (record, head) item of ``per_head`` tensors, each (B, K, ...), repeated w_ik times
        (flattened to (M, ...)), and the factor that turns the mean over those M items into
        Σ_ik w_ik ℓ_ik / (B · heads per record): with it, a pure mean loss weighs the heads as the
        class docstring says. The factor is 0 where no item is left (a micro-batch outside every
        head's resample)."""
        B, K = per_head[0].shape[:2]
        weights = torch.ones(B, K, dtype=torch.long) if self.head_weights is None else self.head_weights[indices]
        weights = weights.to(per_head[0].device).reshape(-1)
        items = [t.reshape(B * K, *t.shape[2:]).repeat_interleave(weights, 0) for t in per_head]
        return items, float(weights.sum()) / (B * self.heads_per_record)

    def loss(self, micro):
        indices, weight = micro
        records = [self.records[i] for i in indices]
        kind = self.config.feedback
        if kind == "preference":
            # (chosen, rejected) of each record side by side, so each prompt can be read once.
            contexts = [prompt_text(r.prompt) for r in records for _ in range(2)]
            outputs = [completion_text(o) for r in records for o in (r.chosen, r.rejected)]
            rewards = self._rewards(contexts, outputs, group_size=2).view(len(records), 2, -1)
            if self.config.distributional:  # (mu, log sigma^2) of chosen and of rejected
                chosen, rejected = rewards[:, 0, 0], rewards[:, 1, 0]
                loss = mean_variance_bradley_terry_loss(chosen, rewards[:, 0, 1], rejected, rewards[:, 1, 1])
            else:
                margin = torch.zeros(len(records), device=rewards.device)
                if self.config.use_margin:
                    margin = torch.tensor([r.margin or 0.0 for r in records], device=rewards.device)
                (chosen, rejected, margin), share = self._per_head(
                    indices, rewards[:, 0], rewards[:, 1], margin[:, None].expand_as(rewards[:, 0])
                )
                margin = margin if self.config.use_margin else None
                loss = bradley_terry_loss(chosen, rejected, margin) * share if share else rewards.sum() * 0
            stats = {
                "accuracy": pairwise_accuracy(chosen.detach(), rejected.detach()) if chosen.numel() else 0.0,
                "reward_gap": float((chosen - rejected).detach().mean()) if chosen.numel() else 0.0,
            }
        elif kind == "ranking":
            k = max(len(r.completions) for r in records)
            contexts, outputs, ranks, mask = [], [], [], []
            for r in records:
                groups = r.ties if r.ties is not None else list(range(len(r.completions)))
                pad = k - len(r.completions)
                contexts += [prompt_text(r.prompt)] * k
                outputs += [completion_text(c) for c in r.completions] + ["."] * pad
                ranks.append(list(groups) + [10**6] * pad)
                mask.append([True] * len(r.completions) + [False] * pad)
            rewards = self._rewards(contexts, outputs, group_size=k).view(len(records), k, -1).transpose(1, 2)
            ranks_t = torch.tensor(ranks, device=rewards.device)[:, None].expand_as(rewards)
            mask_t = torch.tensor(mask, device=rewards.device)[:, None].expand_as(rewards)
            (rewards, ranks_t, mask_t), share = self._per_head(indices, rewards, ranks_t, mask_t)
            loss = plackett_luce_loss(rewards, ranks_t, mask_t) * share if share else rewards.sum() * 0
            top1 = (rewards.masked_fill(~mask_t, -1e9).argmax(-1) == 0).float()
            stats = {"top1_accuracy": float(top1.mean()) if top1.numel() else 0.0}
        else:
            contexts = [prompt_text(r.prompt) for r in records]
            outputs = [completion_text(r.completion) for r in records]
            rewards = self._rewards(contexts, outputs).view(len(records), -1)
            targets = torch.tensor([r.score for r in records], device=rewards.device, dtype=rewards.dtype)
            (rewards, targets), share = self._per_head(indices, rewards, targets[:, None].expand_as(rewards))
            loss = regression_loss(rewards, targets) * share if share else rewards.sum() * 0
            stats = {}
        return loss * weight, stats


# ---- one prompt, k completions: the prompt's forward computed once ---------------------------------
def supports_shared_prompt(model, tokenizer) -> bool:
    """A decoder reward model (``*ForSequenceClassification`` with a causal trunk and a ``score``
    head, read at the last non-pad token) can score k completions of one prompt from one pass over
    the prompt: with causal attention, the prompt's states do not depend on what follows. An
    encoder (MiniLM/BERT) attends both ways, so its prompt states change with each completion and
    nothing can be shared."""
    if tokenizer.sep_token is not None and tokenizer.cls_token is not None:
        return False  # encode_for_reward gives encoders a sentence pair
    score = getattr(model, "score", None)
    trunk = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(score, torch.nn.Linear) or trunk is None or not getattr(model.config, "is_decoder", True):
        return False
    if getattr(model.config, "is_encoder_decoder", False) or hasattr(model, "get_base_model"):
        return False
    return cache_argument(trunk) is not None


def shared_prompt_encoding(tokenizer, contexts, outputs, group_size: int, max_length: int):
    """Token ids of each context (``context + newline``) and of its ``group_size`` outputs
    (``output + EOS``), or None where this split would not reproduce exactly the tokens that
    :func:`encode_for_reward` gives the joined text (or where that would truncate): the shared path
    must see the very same input as the plain one."""
    eos = tokenizer.eos_token or ""
    prompts = [tokenizer(f"{c}\n", add_special_tokens=False).input_ids for c in contexts]
    completions = [tokenizer(f"{o}{eos}", add_special_tokens=False).input_ids for o in outputs]
    for i, c in enumerate(contexts):
        for j in range(group_size):
            row = i * group_size + j
            if len(prompts[i]) + len(completions[row]) > max_length or all(
                t == tokenizer.pad_token_id for t in completions[row]
            ):
                return None  # too long, or nothing but pad ids after the prompt to pool at
            joined = tokenizer(f"{c}\n{outputs[row]}{eos}", add_special_tokens=False).input_ids
            if joined != prompts[i] + completions[row]:
                return None
    return {"prompts": prompts, "completions": completions, "group_size": group_size, "pad_id": tokenizer.pad_token_id}


def shared_prompt_rewards(model, encoded: dict, device) -> torch.Tensor:
    """R_phi(c_i, o_ij) for k outputs per context, reading each context once: the context's
    keys/values (with their gradients) are computed on B rows, repeated k times, and the outputs
    attend to them. Positions and the pooled token (the last non-pad token of the whole sequence,
    as ``*ForSequenceClassification`` pools) are those of the joined sequence, so the rewards equal
    the plain forward's up to float rounding (tested). Shape (B * k,)."""
    from transformers import DynamicCache

    trunk = getattr(model, model.base_model_prefix)
    cache_arg = cache_argument(trunk)
    k, pad_id = encoded["group_size"], encoded["pad_id"]
    prompt_ids, prompt_real = pad_left(encoded["prompts"], pad_id)
    out_ids, out_real = pad_right(encoded["completions"], pad_id)
    prompt_ids, prompt_real, out_ids, out_real = (t.to(device) for t in (prompt_ids, prompt_real, out_ids, out_real))
    prompt_real, out_real = prompt_real.bool(), out_real.bool()
    P, C = prompt_ids.shape[1], out_ids.shape[1]
    eye_p = torch.eye(P, dtype=torch.bool, device=device)
    # A padding query sees itself only, so no attention row is empty (empty rows give NaN).
    prompt_mask = (torch.ones(P, P, dtype=torch.bool, device=device).tril() & prompt_real[:, None, :]) | eye_p
    positions = (prompt_real.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    trunk(
        input_ids=prompt_ids,
        attention_mask=prompt_mask[:, None],
        position_ids=positions,
        use_cache=True,
        **{cache_arg: cache},
    )
    cache.batch_repeat_interleave(k)
    prompt_real_k = prompt_real.repeat_interleave(k, 0)
    causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()
    out_mask = torch.cat(
        [
            prompt_real_k[:, None, :].expand(-1, C, -1),
            (causal & out_real[:, None, :]) | torch.eye(C, dtype=torch.bool, device=device),
        ],
        dim=-1,
    )
    out_positions = prompt_real_k.long().sum(-1, keepdim=True) + torch.arange(C, device=device)
    hidden = trunk(
        input_ids=out_ids,
        attention_mask=out_mask[:, None],
        position_ids=out_positions,
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state
    # The pooled position: the last token that is not the pad id (which may equal EOS).
    non_pad = (out_ids != model.config.pad_token_id) & out_real
    index = (torch.arange(C, device=device) * non_pad).argmax(-1)
    if not bool(non_pad.any(-1).all()):
        raise ValueError("an output made only of pad tokens cannot be pooled after the prompt")
    pooled = hidden[torch.arange(hidden.shape[0], device=device), index]
    return model.score(pooled).squeeze(-1).float()


def split_heldout(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded train / held-out split (at least one held-out record when fraction > 0)."""
    if fraction <= 0:
        return records, []
    order = np.random.default_rng(seed).permutation(len(records))
    n_held = max(1, int(round(fraction * len(records))))
    held = set(order[:n_held].tolist())
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def train_reward_model(cfg: RewardConfig, records: list) -> Path:
    # One output per annotator or attribute, or (mu, log sigma^2), else one; a record without its group fails here.
    heads = training_manifest(cfg.per_annotator, cfg.distributional, records, cfg.attributes)
    model, tokenizer = load_reward_model(cfg.model, cfg.dtype, num_labels=num_outputs(heads), seed=cfg.seed)
    if heads is not None and heads["kind"] == "attribute":
        init_attribute_levels(model, records, heads)
    return train(cfg, RewardAlgorithm(cfg, apply_lora(model, cfg), tokenizer, records))


def train_shared_trunk_ensemble(cfg: RewardConfig, records: list) -> Path:
    """``--ensemble K --ensemble_trunk shared``: one run of one model with K heads, head k initialised
    from ``member_seed(cfg.seed, k)`` (and trained on that member's resample under bootstrap, see
    :class:`RewardAlgorithm`); then each head's centring offset and the manifests, OUT/ensemble.json
    last (:mod:`rlhflab.rewards.ensemble`). ``--resume OUT`` resumes the run, or keeps its model if it finished."""
    out = Path(cfg.resume or cfg.output_dir or default_run_dir("reward"))
    seeds = [member_seed(cfg.seed, k) for k in range(cfg.ensemble)]
    if not (out / "reward_model").is_dir():
        model, tokenizer = load_reward_model(cfg.model, cfg.dtype, num_labels=cfg.ensemble)
        init_member_heads(model, seeds)
        model = apply_lora(model, cfg)
        resume = str(out) if cfg.resume and latest_checkpoint(out) else None
        train(replace(cfg, output_dir=str(out), resume=resume), RewardAlgorithm(cfg, model, tokenizer, records))
    heads = load_head_scores(out / "reward_model", cfg.ensemble)
    contexts, outputs = feedback_completions(records, cfg.feedback)
    # Regression on ratings fixes R_phi's level itself; preferences and rankings leave it free.
    offsets = [0.0] * cfg.ensemble
    if cfg.feedback != "rating" and outputs:
        offsets = heads(contexts, outputs).double().mean(-1).tolist()
    members = [{"head": k, "seed": s, "offset": b} for k, (s, b) in enumerate(zip(seeds, offsets))]
    info = {"feedback": cfg.feedback, "ensemble_data": cfg.ensemble_data, "centred_on": len(outputs)}
    for directory in (out / "reward_model", out):  # OUT/ensemble.json last: its presence means finished
        write_manifest(directory, members, cfg.ensemble_objective, model=out / "reward_model", **info)
    return out


def train_reward_ensemble(cfg: RewardConfig, records: list) -> Path:
    """K = ``cfg.ensemble`` reward models on ``records``, each a run of the one loop in
    ``OUT/member-KK`` with seed ``member_seed(cfg.seed, k)`` (and, with ``ensemble_data=bootstrap``,
    on its own resample of the records); then each member's centring offset and the manifests
    ``OUT/reward_model/ensemble.json`` and, last, ``OUT/ensemble.json`` (layout and centring:
    :mod:`rlhflab.rewards.ensemble`). ``--resume OUT`` keeps finished members and resumes the others from
    their checkpoints. Returns OUT. With ``ensemble_trunk=shared``: :func:`train_shared_trunk_ensemble`."""
    if cfg.ensemble_trunk == "shared":
        return train_shared_trunk_ensemble(cfg, records)
    out = Path(cfg.resume or cfg.output_dir or default_run_dir("reward"))
    if not cfg.resume:
        save_config(cfg, out / "config.yaml")
    contexts, outputs = feedback_completions(records, cfg.feedback)
    members = []
    for k in range(cfg.ensemble):
        seed, member_dir = member_seed(cfg.seed, k), out / f"member-{k:02d}"
        data = records
        if cfg.ensemble_data == "bootstrap":
            data = [records[i] for i in bootstrap_indices(len(records), seed)]
        if not (member_dir / "reward_model").is_dir():  # a finished member is kept as it is
            resume = str(member_dir) if latest_checkpoint(member_dir) else None
            member_cfg = replace(cfg, ensemble=1, seed=seed, output_dir=str(member_dir), resume=resume)
            torch.manual_seed(seed)  # the backbone's fresh scalar head is drawn from the global RNG
            train_reward_model(member_cfg, data)
        # Regression on ratings fixes R_phi's level itself; preferences and rankings leave it free.
        member_source = load_reward_source(str(member_dir / "reward_model"))
        offset = 0.0 if cfg.feedback == "rating" else centring_offset(member_source, contexts, outputs)
        members.append(
            {"path": member_dir / "reward_model", "seed": seed, "offset": offset, "train_records": len(data)}
        )
    info = {"feedback": cfg.feedback, "ensemble_data": cfg.ensemble_data, "centred_on": len(outputs)}
    for directory in (out / "reward_model", out):  # OUT/ensemble.json last: its presence means finished
        write_manifest(directory, members, cfg.ensemble_objective, **info)
    return out
