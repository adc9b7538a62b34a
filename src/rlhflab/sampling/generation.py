"""A lean sampling engine for decoder-only policies: the rollout hot path without ``generate``'s
generality.

What it does differently from ``model.generate(num_return_sequences=n)``, each for speed only:

- **Shared prefill.** The prompts go through the model once; their key/value states are then
  repeated for the n samples of each prompt (``generate`` repeats the prompt n times *before* the
  prefill and computes it n times).
- **Static cache.** Keys and values of prompt + completion live in buffers allocated once
  (``transformers.StaticCache``) and written in place, instead of a cache re-concatenated at
  every step.
- **A lean decode step for Llama-family decoders** (:class:`LlamaStepper`: Llama, Mistral
  without sliding window, Qwen2 — plain ``nn.Linear`` projections, so not under LoRA adapters).
  A decode step is one token per row, so ``generate``'s general forward (mask construction, cache
  objects, module dispatch) costs as much as the arithmetic. The stepper runs each layer as a
  dozen tensor ops on the model's own weights and norm/activation/rotary modules: keys and values
  go straight into preallocated buffers, attention is two batched products over the filled part
  of the cache with the query heads grouped by their key/value head (no ``repeat_kv`` copies),
  and each projection picks the faster BLAS orientation for the batch width. Other decoders
  step through the model's own trunk with a ``transformers.StaticCache``.
- **A cheap sampler.** ``torch.multinomial`` draws an exponential variate for every vocabulary
  entry of every row (49k per row per step, ~20% of a wide decode step on CPU). The engine
  inverts the CDF instead: one uniform per row and a binary search in the cumulative
  probabilities — the same categorical distribution for a fraction of the cost.
- The LM head is applied to the last hidden state only.

The sampling distribution is unchanged: at each step the next token is drawn from
softmax(logits / temperature) restricted by top-k and then top-p exactly as ``generate``'s
warpers restrict it (see :func:`next_token_probs`), so a rollout has the same distribution as
``generate``'s ancestral sampling. ``tests/test_speed_paths.py`` checks the per-step
distribution, the sampler's frequencies, greedy decoding token for token against ``generate``,
and the engine's token log-probs against a full forward pass of the model (both step paths).

Models the engine does not know how to drive (encoder-decoders, no output-embedding matrix, a
base model without a cache argument) make :func:`supports` return False; ``rollout.sample`` then
falls back to ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhflab.models.decoder_parts import causal_lm, decoder_parts


def supports(model) -> bool:
    """Whether :func:`generate` can drive this model (otherwise use ``model.generate``)."""
    try:
        return decoder_parts(model) is not None
    except Exception:  # noqa: BLE001 - any oddity means "use generate"
        return False


def next_token_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """The sampling distribution of ``generate(do_sample=True)`` for these logits: temperature,
    then top-k (keep the k largest; ties at the k-th value kept), then top-p (drop the smallest
    tokens whose cumulative probability is at most 1 - top_p, always keeping the largest)."""
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if top_k and top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores.softmax(dim=-1)


def sample_from_probs(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row from the categorical distributions ``probs`` (B, V) by inverting the CDF:
    the first index whose cumulative probability exceeds u * total, u ~ U[0, 1). Entries of
    probability zero are never drawn (their cumulative value equals their predecessor's)."""
    cdf = probs.float().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``layer(x)`` for a (B, in) batch of single tokens, in the faster BLAS orientation. On CPU,
    ``W @ x^T`` (weights as the long operand) beats ``x @ W^T`` for square and widening
    projections at any width and for all of them from about 32 rows; ``x @ W^T`` stays ahead for
    narrowing ones (k/v, down) at small widths (measured with SmolLM2's shapes, cold caches)."""
    weight = layer.weight
    if x.device.type == "cpu" and (x.shape[0] >= 32 or weight.shape[0] >= weight.shape[1]):
        out = torch.mm(weight, x.t()).t()
        return out if layer.bias is None else out + layer.bias
    return torch.nn.functional.linear(x, weight, layer.bias)


_LLAMA_LAYERS = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"}


class LlamaStepper:
    """Decode steps of a Llama-family trunk on its own weights, with per-layer key/value buffers
    (B, kv_heads, P + T, head_dim). Same arithmetic as the model's forward (RMSNorm, rotary
    embedding and activation are the model's own modules), fewer and larger ops."""

    @staticmethod
    def applies(trunk) -> bool:
        layers = getattr(trunk, "layers", None)
        if not layers or not hasattr(trunk, "rotary_emb") or not hasattr(trunk, "norm"):
            return False
        config = trunk.config
        if getattr(config, "attention_dropout", 0.0) or (getattr(config, "pretraining_tp", 1) or 1) > 1:
            return False
        for layer in layers:
            if type(layer).__name__ not in _LLAMA_LAYERS:
                return False
            attn, mlp = layer.self_attn, layer.mlp
            linears = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
            linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
            # Exactly nn.Linear: adapter-wrapped projections (LoRA) must run through their own forward.
            if any(type(m) is not torch.nn.Linear for m in linears):
                return False
            if hasattr(attn, "q_norm") or hasattr(attn, "k_norm") or not hasattr(attn, "head_dim"):
                return False
        return True

    def __init__(self, trunk, prefill_cache, repeats: int, max_len: int):
        self.trunk = trunk
        self.layers = list(trunk.layers)
        first = self.layers[0].self_attn
        self.head_dim, self.scaling = first.head_dim, first.scaling
        self.heads = trunk.config.num_attention_heads
        self.kv_heads = trunk.config.num_key_value_heads
        self.keys, self.values = [], []
        for layer in prefill_cache.layers:
            k, v = layer.keys.repeat_interleave(repeats, 0), layer.values.repeat_interleave(repeats, 0)
            B, H, P, D = k.shape
            kb, vb = k.new_empty(B, H, max_len, D), v.new_empty(B, H, max_len, D)
            kb[:, :, :P], vb[:, :, :P] = k, v
            self.keys.append(kb)
            self.values.append(vb)

    def step(self, token: torch.Tensor, position: torch.Tensor, column: int, key_mask: torch.Tensor) -> torch.Tensor:
        """Hidden state after the final norm for ``token`` (B,) at ``position`` (B, 1), written
        at cache column ``column``; ``key_mask`` (B, column + 1) marks the keys it may attend."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        B, D, groups = token.shape[0], self.head_dim, self.heads // self.kv_heads
        x = self.trunk.embed_tokens(token)
        cos, sin = self.trunk.rotary_emb(x[:, None], position)  # (B, 1, D)
        # Additive mask over the filled columns, shared by all layers: (B, 1, 1, column + 1).
        bias = torch.zeros(key_mask.shape, dtype=torch.float32, device=x.device)
        bias = bias.masked_fill_(~key_mask, float("-inf"))[:, None, None, :]
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = _linear(h, attn.q_proj).view(B, self.heads, 1, D)
            k = _linear(h, attn.k_proj).view(B, self.kv_heads, 1, D)
            v = _linear(h, attn.v_proj).view(B, self.kv_heads, 1, D)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys[:, :, column] = k[:, :, 0]
            values[:, :, column] = v[:, :, 0]
            # Query heads grouped under their key/value head: (B, kv, groups, D) against (B, kv, L, D).
            q = q.view(B, self.kv_heads, groups, D)
            scores = torch.matmul(q, keys[:, :, : column + 1].transpose(-1, -2)) * self.scaling
            weights = (scores.float() + bias).softmax(-1).to(q.dtype)
            context = torch.matmul(weights, values[:, :, : column + 1]).reshape(B, self.heads * D)
            x = x + _linear(context, attn.o_proj)
            h = layer.post_attention_layernorm(x)
            mlp = layer.mlp
            x = x + _linear(mlp.act_fn(_linear(h, mlp.gate_proj)) * _linear(h, mlp.up_proj), mlp.down_proj)
        return self.trunk.norm(x)


def _head(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    # (V, H) @ (H, B): BLAS streams the big matrix once; h @ W^T is far slower on CPU for small B.
    logits = torch.mm(head.weight, hidden.t().to(head.weight.dtype)).t()
    return logits if head.bias is None else logits + head.bias


@torch.no_grad()
def generate(
    model,
    prompt_ids: Sequence[Sequence[int]],
    num_samples: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_logprobs: bool = False,
):
    """Sample ``num_samples`` completions of every prompt; returns their token ids (cut after the
    first end-of-sequence token, which is kept), ``num_samples`` consecutive rows per prompt, and
    with ``return_logprobs`` also log softmax(logits / temperature) of each sampled token (the
    engine's own numbers, for checking it against a full forward pass)."""
    from transformers import DynamicCache, StaticCache

    trunk, head, cache_arg = decoder_parts(model)
    lm = causal_lm(model)
    device = head.weight.device
    n, T = num_samples, max_new_tokens
    P = max(len(p) for p in prompt_ids)
    Bp = len(prompt_ids)
    if T <= 0:
        empty = [[] for _ in range(Bp * n)]
        return (empty, [[] for _ in range(Bp * n)]) if return_logprobs else empty

    # Prompt layout: left-padded, as in rollout.pad_left. Positions skip the padding.
    ids = torch.full((Bp, P), pad_id, dtype=torch.long)
    real = torch.zeros((Bp, P + T), dtype=torch.bool)
    for i, p in enumerate(prompt_ids):
        if len(p):
            ids[i, P - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            real[i, P - len(p) : P] = True
    ids, real = ids.to(device), real.to(device)
    positions = (real[:, :P].long().cumsum(-1) - 1).clamp(min=0)
    # Prefill mask (Bp, 1, P, P): causal and real keys; a padding query sees itself only, so no
    # attention row is empty (an empty row gives NaN states that would poison later steps).
    causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
    prefill_mask = causal & real[:, None, :P]
    prefill_mask |= torch.eye(P, dtype=torch.bool, device=device)
    prefill = DynamicCache(config=lm.config)
    out = trunk(
        input_ids=ids,
        attention_mask=prefill_mask[:, None],
        position_ids=positions,
        use_cache=True,
        **{cache_arg: prefill},
    )
    hidden = out.last_hidden_state[:, -1]

    # Share the prefill: repeat each prompt's states for its n samples into the decode cache.
    lean = LlamaStepper(trunk, prefill, n, P + T) if LlamaStepper.applies(trunk) else None
    if lean is None:
        cache = StaticCache(config=lm.config, max_cache_len=P + T)
        for layer_idx, layer in enumerate(prefill.layers):
            cache.update(layer.keys.repeat_interleave(n, 0), layer.values.repeat_interleave(n, 0), layer_idx)
    del prefill, out
    real = real.repeat_interleave(n, 0)
    next_position = positions[:, -1:].repeat_interleave(n, 0) + 1
    logits = _head(head, hidden).repeat_interleave(n, 0)

    B = Bp * n
    tokens = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    eos = torch.as_tensor(list(eos_ids), dtype=torch.long, device=device)
    lengths = torch.full((B,), T, dtype=torch.long, device=device)
    picked = torch.zeros((B, T), dtype=torch.float32, device=device) if return_logprobs else None
    for t in range(T):
        if temperature > 0:
            token = sample_from_probs(next_token_probs(logits, temperature, top_k, top_p))
        else:
            token = logits.argmax(-1)
        token = token.masked_fill(done, pad_id)
        tokens[:, t] = token
        if picked is not None:
            scaled = logits.float() / (temperature if temperature > 0 else 1.0)
            picked[:, t] = scaled.gather(-1, token[:, None]).squeeze(-1) - scaled.logsumexp(-1)
        just_ended = ~done & torch.isin(token, eos)
        lengths = torch.where(just_ended, torch.full_like(lengths, t + 1), lengths)
        done |= just_ended
        if t == T - 1 or bool(done.all()):
            break
        real[:, P + t] = True
        if lean is not None:
            hidden = lean.step(token, next_position, P + t, real[:, : P + t + 1])
        else:
            step_mask = real[:, None, None, :]  # (B, 1, 1, P + T): future columns are still False
            hidden = trunk(
                input_ids=token[:, None],
                attention_mask=step_mask,
                position_ids=next_position,
                use_cache=True,
                **{cache_arg: cache},
            ).last_hidden_state[:, -1]
        next_position = next_position + 1
        logits = _head(head, hidden)
    lengths = lengths.tolist()
    rows = [row[:k] for row, k in zip(tokens.cpu().tolist(), lengths)]
    if return_logprobs:
        return rows, [row[:k] for row, k in zip(picked.cpu().tolist(), lengths)]
    return rows
