"""Generation and log-prob computation: the hot path of every policy-optimisation method.

Layout used throughout: a batch row is ``[left-padded prompt | right-padded completion]``, so the
completion of every row starts at the same column and its tokens are the last ``T`` columns.
Log-probs are computed only at completion positions (``logits_to_keep``), never the full
sequence x vocabulary tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rlhflab.errors import ConfigError
from rlhflab.hardware import gathered_parameters
from rlhflab.models.decoder_parts import cache_argument, causal_lm, head, trunk
from rlhflab.progress import bar
from rlhflab.sampling import generation


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


@dataclass
class SequenceBatch:
    """Prompt + completion token ids in the shared layout, and the masks that go with it."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    completion_mask: torch.Tensor  # (B, T): 1 on completion tokens (EOS included)

    @property
    def num_completion_tokens(self) -> int:
        return self.completion_mask.shape[1]

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.num_completion_tokens :]

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask)))

    def select(self, index) -> SequenceBatch:
        return SequenceBatch(self.input_ids[index], self.attention_mask[index], self.completion_mask[index])


def join_prompt_completion(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int
) -> SequenceBatch:
    prompts, prompt_mask = pad_left(prompt_ids, pad_id)
    completions, completion_mask = pad_right(completion_ids, pad_id)
    return SequenceBatch(
        torch.cat([prompts, completions], dim=1),
        torch.cat([prompt_mask, completion_mask], dim=1),
        completion_mask,
    )


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses, so scoring matches sampling."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logits(model, batch: SequenceBatch, output_hidden_states: bool = False):
    """Logits predicting each completion token (B, T, V), and optionally the last hidden states at
    the same positions (B, T, H). Only the positions that predict completion tokens go through the
    LM head. Rows that share a prompt (the samples of one prompt, the chosen and rejected answers
    of a pair) have that prompt computed once: see :func:`shared_prompt_logits`."""
    shared = shared_prompt_logits(model, batch, output_hidden_states)
    if shared is not None:
        return shared
    T = batch.num_completion_tokens
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids_from_mask(batch.attention_mask),
        logits_to_keep=T + 1,
        output_hidden_states=output_hidden_states,
        use_cache=False,
    )
    logits = out.logits[:, -(T + 1) : -1]
    hidden = out.hidden_states[-1][:, -(T + 1) : -1] if output_hidden_states else None
    return logits, hidden


def shared_prompt_logits(model, batch: SequenceBatch, output_hidden_states: bool = False):
    """:func:`completion_logits` computing each distinct prompt once, or None when no two rows
    share a prompt (or the model takes no key/value cache).

    The distinct prompts go through the model once (Bp rows); their per-layer keys and values are
    then gathered to the B rows (a differentiable index, so gradients from every completion flow
    back into the one prompt computation) and the completions run on top of them as a cached
    continuation. Same mathematics as the full forward pass — attention of a completion token over
    [prompt | completion] — with B·P prompt-token positions replaced by Bp·P. The last completion
    token predicts nothing the loss uses, so it is not fed."""
    from transformers import DynamicCache

    T, width = batch.num_completion_tokens, batch.input_ids.shape[1]
    P = width - T
    if P == 0 or batch.input_ids.shape[0] < 2:
        return None
    if torch.is_grad_enabled() and model.training and _checkpointing(model):
        return None  # gradient checkpointing drops the prompt's key/value cache in training
    prompt_part = torch.cat([batch.input_ids[:, :P], batch.attention_mask[:, :P].long()], dim=1)
    unique, row_to_prompt = torch.unique(prompt_part, dim=0, return_inverse=True)
    cache_arg = None if unique.shape[0] == batch.input_ids.shape[0] else cache_argument(model)
    if cache_arg is None:
        return None
    first_row = torch.full((unique.shape[0],), -1, dtype=torch.long, device=row_to_prompt.device)
    first_row.scatter_reduce_(
        0, row_to_prompt, torch.arange(len(row_to_prompt), device=first_row.device), reduce="amin", include_self=False
    )
    positions = position_ids_from_mask(batch.attention_mask)
    config = causal_lm(model).config
    body, lm_head = trunk(model), head(model)
    # Trunk and head called separately, so the head runs once over all B x T positions (one
    # gradient contribution to its 49k-row weight instead of two): only for heads that are a plain
    # linear map of the trunk's output (no logit scaling or soft-capping in the model's forward).
    # (Not under FSDP, whose hooks gather the root's weights, the head's among them, only around the model's
    # own forward.)
    split_head = (
        body is not None
        and type(lm_head) is torch.nn.Linear
        and getattr(config, "model_type", "") in _PLAIN_HEAD_MODELS
        and not _sharded(model)
    )
    prompt_cache = DynamicCache(config=config)
    prompt_inputs = dict(
        input_ids=batch.input_ids[first_row, :P],
        attention_mask=batch.attention_mask[first_row, :P],
        position_ids=positions[first_row, :P],
        use_cache=True,
        **{cache_arg: prompt_cache},
    )
    if split_head:
        first_hidden = body(**prompt_inputs).last_hidden_state[:, -1][row_to_prompt]
        first_logits = None
    else:
        prompt_out = model(**prompt_inputs, logits_to_keep=1, output_hidden_states=output_hidden_states)
        first_logits = prompt_out.logits[:, -1][row_to_prompt]  # predicts each row's first completion token
        first_hidden = prompt_out.hidden_states[-1][:, -1][row_to_prompt] if output_hidden_states else None
    if T == 1:
        if split_head:
            return lm_head(first_hidden)[:, None], first_hidden[:, None] if output_hidden_states else None
        return first_logits[:, None], None if first_hidden is None else first_hidden[:, None]
    rows_cache = DynamicCache(config=config)
    for layer_idx, layer in enumerate(prompt_cache.layers):
        rows_cache.update(layer.keys[row_to_prompt], layer.values[row_to_prompt], layer_idx)
    completion_inputs = dict(
        input_ids=batch.input_ids[:, P : width - 1],
        attention_mask=batch.attention_mask[:, : width - 1],
        position_ids=positions[:, P : width - 1],
        use_cache=True,
        **{cache_arg: rows_cache},
    )
    if split_head:
        hidden = torch.cat([first_hidden[:, None], body(**completion_inputs).last_hidden_state], dim=1)
        return lm_head(hidden), hidden if output_hidden_states else None
    out = model(**completion_inputs, output_hidden_states=output_hidden_states)
    logits = torch.cat([first_logits[:, None].to(out.logits.dtype), out.logits], dim=1)
    hidden = torch.cat([first_hidden[:, None], out.hidden_states[-1]], dim=1) if output_hidden_states else None
    return logits, hidden


def _checkpointing(model) -> bool:
    """Whether HF gradient checkpointing is on anywhere in ``model``."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


# Causal LMs whose logits are exactly ``lm_head(final hidden state)``.
_PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "gpt2"}


class _TokenLogprob(torch.autograd.Function):
    """log softmax(x)[t] = x_t − logsumexp(x) with a hand-written backward, onehot(t) − softmax(x)
    scaled by the incoming gradient: one fused softmax, one in-place scale and a scatter of the token
    terms, where autograd's graph for the same expression allocates and passes over the (…, V) logits
    five times (logsumexp's sub / exp / mul, the gather's zero-filled gradient, and their sum). Nothing
    V-sized is saved beyond the logits themselves."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        log_normaliser = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, tokens)
        return torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1) - log_normaliser

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, tokens = ctx.saved_tensors
        grad_logits = torch.softmax(logits, dim=-1)
        grad_logits.mul_(grad.neg().unsqueeze(-1))
        grad_logits.scatter_add_(-1, tokens.unsqueeze(-1), grad.unsqueeze(-1))
        return grad_logits, None


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token | prefix) for each position, in fp32 (the logits upcast) and without a second
    V-sized tensor in the forward pass (:class:`_TokenLogprob`)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return _TokenLogprob.apply(logits, tokens)


def completion_logprobs(model, batch: SequenceBatch, temperature: float = 1.0) -> torch.Tensor:
    """log pi(o_t | c, o_<t) for every completion position (B, T); padding positions hold junk
    and must be masked with ``batch.completion_mask``."""
    logits, _ = completion_logits(model, batch)
    return logprobs_from_logits(logits, batch.completion_ids, temperature)


@torch.no_grad()
def batched_completion_logprobs(model, batch: SequenceBatch, batch_size: int, temperature: float = 1.0) -> torch.Tensor:
    """``completion_logprobs`` without gradients, in chunks of ``batch_size`` rows."""
    rows, parts = batch.input_ids.shape[0], []
    with bar(rows, "log-probs of the samples", unit="sample") as progress:
        for i in range(0, rows, batch_size):
            parts.append(completion_logprobs(model, batch.select(slice(i, i + batch_size)), temperature))
            progress.update(parts[-1].shape[0])
    return torch.cat(parts, dim=0)


@dataclass
class Rollout:
    """Sampled completions: ``num_samples`` consecutive rows per prompt."""

    batch: SequenceBatch
    prompt_index: torch.Tensor  # (B,) which prompt each row answers
    completion_texts: list[str]
    truncated: torch.Tensor  # (B,) bool: hit max_new_tokens without an end-of-sequence token
    extras: dict = field(default_factory=dict)


def completion_mask_after_eos(tokens: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of tokens up to and including the first end-of-sequence token, and whether each row
    never produced one."""
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= tokens == e
    seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~seen_before).long(), ~is_eos.any(-1)


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ConfigError("the policy has no end-of-sequence token; set tokenizer.eos_token")
    return ids


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    num_samples: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 64,
    return_logprobs: bool = False,
) -> Rollout:
    """Sample ``num_samples`` completions per prompt (pure ancestral sampling by default, which the
    KL-regularised objective assumes).

    With ``return_logprobs``, where the lean engine samples, ``extras["logprobs"]`` holds log
    softmax(logits / temperature) of each sampled token, (B, T) aligned with
    ``batch.completion_mask`` (0 at padding): the numbers a forward pass of the same model would
    give, to within float rounding, without a second pass. Absent where ``model.generate`` samples."""
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    rows: list[list[int]] = []
    picked: list[list[float]] | None = [] if return_logprobs and generation.supports(model) else None
    progress = bar(len(prompt_ids), f"sampling {num_samples} per prompt", unit="prompt")
    # FSDP: the weights gathered once for the whole rollout (nothing to do for an unsharded model)
    with gathered_parameters(model):
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start : start + batch_size]
            if generation.supports(model):
                # The lean engine: same sampling distribution, shared prefill, static cache.
                out = generation.generate(
                    model,
                    chunk,
                    num_samples,
                    max_new_tokens,
                    eos_ids,
                    pad_id,
                    temperature,
                    top_k,
                    top_p,
                    return_logprobs=picked is not None,
                )
                if picked is not None:
                    out, chunk_logprobs = out
                    picked.extend(chunk_logprobs)
                rows.extend(out)
                progress.update(len(chunk))
                continue
            ids, mask = pad_left(chunk, pad_id)
            ids, mask = ids.to(model.device), mask.to(model.device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=top_k,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
            )
            new = out[:, ids.shape[1] :].cpu()
            keep, _ = completion_mask_after_eos(new, eos_ids)
            rows.extend(row[: int(k.sum())].tolist() for row, k in zip(new, keep))
            progress.update(len(chunk))
    progress.close()
    model.train(was_training)
    repeated_prompts = [p for p in prompt_ids for _ in range(num_samples)]
    batch = join_prompt_completion(repeated_prompts, rows, pad_id)
    _, truncated = completion_mask_after_eos(batch.completion_ids, eos_ids)
    truncated = truncated | (batch.completion_mask.sum(-1) == 0)
    texts = tokenizer.batch_decode([r for r in rows], skip_special_tokens=True)
    index = torch.arange(len(prompt_ids)).repeat_interleave(num_samples)
    rollout = Rollout(batch, index, texts, truncated)
    if picked is not None:
        logprobs = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
        for i, row in enumerate(picked):
            logprobs[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
        rollout.extras["logprobs"] = logprobs
    return rollout
