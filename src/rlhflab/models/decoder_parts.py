"""The pieces of a decoder-only causal LM that the fast paths drive directly: the bare
``*ForCausalLM`` under any PEFT wrapper, its trunk, its output-embedding head and the keyword its
trunk takes a key/value cache under.

``generation`` (the sampling engine) and ``rollout`` (shared-prompt log-probs) both run trunk and
head separately; they find them here, so neither needs the other.
"""

from __future__ import annotations

import inspect

import torch


def causal_lm(model):
    """The bare ``*ForCausalLM`` (a PEFT wrapper's base model keeps its injected adapters)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trunk(model):
    """The decoder trunk (``model.model`` for Llama, ``model.transformer`` for GPT-2), or None."""
    lm = causal_lm(model)
    return getattr(lm, getattr(lm, "base_model_prefix", ""), None)


def head(model):
    """The output-embedding module (the LM head), or None."""
    lm = causal_lm(model)
    return lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None


def cache_argument(model) -> str | None:
    """The keyword under which this decoder takes a key/value cache (None: not a cached decoder)."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None


def context_length(model) -> int | None:
    """The most positions (prompt + completion) the model was built for, or None if it does not say."""
    config = getattr(causal_lm(model), "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def uses_full_attention(config) -> bool:
    """False for sliding-window or hybrid layers, which need their own cache layout."""
    if getattr(config, "sliding_window", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    return not layer_types or all(t == "full_attention" for t in layer_types)


def decoder_parts(model):
    """(trunk, head, cache argument) of a full-attention decoder whose head is a linear map, or None."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    body, lm_head = trunk(lm), head(lm)
    if body is None or not isinstance(lm_head, torch.nn.Linear) or not uses_full_attention(config):
        return None
    cache_arg = cache_argument(body)
    if cache_arg is None:
        return None
    return body, lm_head, cache_arg
