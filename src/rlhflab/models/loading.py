"""Load and save policies (causal LMs) and reward models (backbone + scalar head).

Both are plain Hugging Face models: a policy is an ``AutoModelForCausalLM``; a reward model is an
``AutoModelForSequenceClassification`` with one label, so an encoder (MiniLM/BERT) or a decoder
(Llama: the score of the last non-pad token) works, and ``save_pretrained`` / ``from_pretrained``
round-trip with no rlhflab code at all.
"""

from __future__ import annotations

import torch
from torch import nn

from rlhflab.errors import ConfigError
from rlhflab.files import atomic_path, write_json
from rlhflab.models.registry import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def _from_pretrained(loader, name_or_path: str, **kwargs):
    path = resolve_model(name_or_path)
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load model '{name_or_path}': {first}") from None


def load_tokenizer(name_or_path: str, padding_side: str = "left"):
    """The model's tokenizer, with a pad token (the EOS token if it has none) and left padding,
    which batched generation needs."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    tokenizer.padding_side = padding_side
    return tokenizer


def disable_dropout(model: nn.Module) -> nn.Module:
    """RLHF losses compare log-probs of the same tokens across passes; dropout would make the
    policy disagree with itself (and with the reference), so it is off everywhere."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def load_policy(name_or_path: str, dtype: str | torch.dtype = "float32"):
    """Load a causal LM policy and its tokenizer. Registry names (see ``registry``) work offline."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path)
    model = _from_pretrained(AutoModelForCausalLM, name_or_path, dtype=_dtype(dtype))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return disable_dropout(model), tokenizer


def load_reward_model(name_or_path: str, dtype: str | torch.dtype = "float32", num_labels: int = 1):
    """Load a reward model R_phi: any transformer backbone with a scalar head (one label), or with
    ``num_labels`` outputs on the one backbone (per-annotator or mean-variance heads, see
    :mod:`rlhflab.rewards.heads`).

    A plain backbone (e.g. ``minilm-l6``) gets a freshly initialised head; a saved reward model
    loads whole.
    """
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(name_or_path, padding_side="right")
    model = _from_pretrained(
        AutoModelForSequenceClassification, name_or_path, num_labels=num_labels, dtype=_dtype(dtype)
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return disable_dropout(model), tokenizer


def apply_lora(model, config):
    """Wrap ``model`` in LoRA adapters when ``config.lora_r > 0`` (the reference policy is then the
    same weights with adapters disabled). ``config``: any config with the ``lora_*`` options."""
    if config.lora_r <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def save_model(model, tokenizer, path: str, merge_lora: bool = True, extra_json: dict | None = None) -> None:
    """``save_pretrained`` model and tokenizer atomically. LoRA adapters are merged so the result
    loads with plain ``from_pretrained``. ``extra_json``: {file name: object} written into the
    folder before it is renamed into place, so a reader never sees the weights without them."""
    if merge_lora and hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            write_json(tmp / name, obj)
