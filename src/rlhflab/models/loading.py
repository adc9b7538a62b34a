"""Load and save policies (causal LMs) and reward models (backbone + scalar head).

Both are plain Hugging Face models: a policy is an ``AutoModelForCausalLM``; a reward model is an
``AutoModelForSequenceClassification`` with one label, so an encoder (MiniLM/BERT) or a decoder
(Llama: the score of the last non-pad token) works, and ``save_pretrained`` / ``from_pretrained``
round-trip with no rlhflab code at all.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhflab.errors import ConfigError
from rlhflab.files import atomic_path, write_json, write_text
from rlhflab.models.card import measured, model_card
from rlhflab.models.registry import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


ADAPTER_CONFIG = "adapter_config.json"  # what marks a directory of LoRA adapters (peft)


def _from_pretrained(loader, name_or_path: str, **kwargs):
    path = resolve_model(name_or_path)
    try:
        if (Path(path) / ADAPTER_CONFIG).is_file() and loader.__name__ != "AutoTokenizer":  # tokenizers are saved whole
            return _merged_adapters(loader, path, **kwargs)
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load model '{name_or_path}': {first}") from None


def _merged_adapters(loader, path: str, **kwargs):
    """A directory of LoRA adapters (what a LoRA run saves without --merge_lora) loaded on its base
    model and merged, so that every command reads it as the plain model it stands for."""
    import peft

    peft_loader = {
        "AutoModelForCausalLM": peft.AutoPeftModelForCausalLM,
        "AutoModelForSequenceClassification": peft.AutoPeftModelForSequenceClassification,
    }[loader.__name__]
    return peft_loader.from_pretrained(path, **kwargs).merge_and_unload()


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


def seeded(seed: int | None):
    """A block whose torch draws come from ``seed`` (None: from the global RNG as it stands), leaving
    the global RNG as it was: for weights drawn before the training loop seeds the run (a fresh
    reward head, LoRA adapters), so a run depends on its seed alone."""
    if seed is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=[]))
    torch.manual_seed(seed)
    return stack


def load_reward_model(
    name_or_path: str, dtype: str | torch.dtype = "float32", num_labels: int = 1, seed: int | None = None
):
    """Load a reward model R_phi: any transformer backbone with a scalar head (one label), or with
    ``num_labels`` outputs on the one backbone (per-annotator or mean-variance heads, see
    :mod:`rlhflab.rewards.heads`).

    A plain backbone (e.g. ``minilm-l6``) gets a freshly initialised head, drawn from ``seed`` when
    given (see :func:`seeded`); a saved reward model loads whole.
    """
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(name_or_path, padding_side="right")
    with seeded(seed):
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
    # A reward model's (sequence classifier's) fresh head trains in full beside the adapters (peft's
    # SEQ_CLS task keeps its 'score' / 'classifier' module trainable and saved).
    classifier = type(model).__name__.endswith("ForSequenceClassification")
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="SEQ_CLS" if classifier else "CAUSAL_LM",
    )
    with seeded(getattr(config, "seed", None)):  # the adapters' initial A matrices are random
        return get_peft_model(model, lora)


def load_trainable_policy(config, policy=None, tokenizer=None):
    """The policy ``config.policy`` names (in ``config.dtype``) unless one is given, with LoRA
    adapters when ``config.lora_r > 0``: how every training command gets the model it trains."""
    if policy is None:
        policy, tokenizer = load_policy(config.policy, config.dtype)
    return apply_lora(policy, config), tokenizer


def save_model(
    model,
    tokenizer,
    path: str,
    merge_lora: bool | None = None,
    extra_json: dict | None = None,
    method: str | None = None,
    config: Any = None,
    kind: str = "policy",
    results: dict | None = None,
) -> None:
    """``save_pretrained`` model and tokenizer atomically, with a model card (README.md: base model,
    ``method``, data and key options of ``config``, ``results`` or the J / Ĵ of the run's
    metrics.jsonl; :mod:`rlhflab.models.card`). ``extra_json``: {file name: object} written into the
    folder before it is renamed into place, so a reader never sees the weights without them.

    A LoRA model is saved as its adapters (adapter_config.json, loadable with
    ``PeftModel.from_pretrained`` and by every rlhflab command) unless ``merge_lora`` (default: the
    config's ``merge_lora``; merged when no config is given). A reward model (``kind="reward
    model"``) is always saved merged, as an ``AutoModelForSequenceClassification`` directory whose
    config records its input format, and keeps its adapters in ``adapter/`` unless merged."""
    merge = bool(getattr(config, "merge_lora", True)) if merge_lora is None else merge_lora
    lora = hasattr(model, "merge_and_unload")
    adapters = model if lora and not merge else None
    if lora and (merge or kind == "reward model"):
        model = copy.deepcopy(model).merge_and_unload()
    results = measured(Path(path).parent) if results is None else results
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if adapters is not None and kind == "reward model":
            adapters.save_pretrained(tmp / "adapter")
            tokenizer.save_pretrained(tmp / "adapter")
        for name, obj in (extra_json or {}).items():
            write_json(tmp / name, obj)
        in_dir = adapters is not None and kind != "reward model"
        card = model_card(model, method or "train", config, kind, in_dir, results, str(path))
        write_text(tmp / "README.md", card)  # after save_pretrained: peft writes a README of its own
