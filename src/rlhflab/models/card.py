"""The model card (README.md) of every saved model directory: base model, method, data, the options
that differ from their defaults, the run's J / Ĵ where it measured them, the reward model's input
format, and how to load the directory with plain transformers / peft."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

# Options that say where a run wrote or how it displayed, not what it trained.
_NOT_KEY = {"output_dir", "progress", "resume", "report_to", "config"}
# Where the model came from and what it learnt from: each is a line of its own on the card.
_BASE = ("policy", "model")
_DATA = ("data", "prompts", "reward", "oracle", "eval_data", "ptx_data", "reference")


def _fields(config) -> dict:
    if config is None or not dataclasses.is_dataclass(config):
        return {}
    return {f.name: (getattr(config, f.name), f.default) for f in dataclasses.fields(config)}


def key_options(config) -> dict:
    """The options of ``config`` that differ from their defaults (beside base model and data)."""
    out = {}
    for name, (value, default) in _fields(config).items():
        if name in _NOT_KEY or name in _BASE or name in _DATA or default is dataclasses.MISSING:
            continue
        if value != default:
            out[name] = value
    return out


def measured(run_dir: Path) -> dict:
    """J (oracle reward, R*) and Ĵ (reward-model reward, R_phi) of the run's last logged iteration,
    where its metrics.jsonl has them (RL runs); {} otherwise."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        last = json.loads(rows[-1]) if rows else {}
    except json.JSONDecodeError:
        return {}
    names = {"oracle_reward": "J (oracle reward R*)", "reward": "Ĵ (optimised reward R_phi)"}
    return {label: last[key] for key, label in names.items() if isinstance(last.get(key), (int, float))}


def _loading(kind: str, adapters: bool, path: str) -> str:
    auto = "AutoModelForSequenceClassification" if kind == "reward model" else "AutoModelForCausalLM"
    if adapters:
        peft_auto = "AutoPeftModelForSequenceClassification" if kind == "reward model" else "AutoPeftModelForCausalLM"
        return (
            f"from peft import {peft_auto}\nmodel = {peft_auto}.from_pretrained({path!r})  # LoRA adapters on the base"
        )
    return f"from transformers import {auto}\nmodel = {auto}.from_pretrained({path!r})"


def model_card(
    model,
    method: str,
    config: Any = None,
    kind: str = "policy",
    adapters: bool = False,
    results: dict | None = None,
    path: str = "DIR",
) -> str:
    """README.md text for a saved ``kind`` ("policy" or "reward model") trained by ``method``."""
    fields = _fields(config)
    base = next((fields[n][0] for n in _BASE if n in fields), None) or getattr(model.config, "_name_or_path", "")
    data = {n: fields[n][0] for n in _DATA if n in fields and fields[n][0] not in (None, "")}
    tags = ["rlhflab", method, "reward-model" if kind == "reward model" else "text-generation"]
    lines = ["---", "library_name: " + ("peft" if adapters else "transformers"), f"base_model: {base}"]
    lines += ["tags:", *[f"- {t}" for t in tags], "---", "", f"# A {kind} trained by `rlhflab {method}`", ""]
    lines += [f"- **Base model**: `{base}`", f"- **Method**: `rlhflab {method}`"]
    lines += [f"- **{name.replace('_', ' ').capitalize()}**: `{value}`" for name, value in data.items()]
    options = key_options(config)
    shown = ", ".join(f"`{k}={v}`" for k, v in options.items()) if options else "all defaults"
    lines.append(f"- **Key options** (those not at their defaults): {shown}")
    results = results or {}
    if results:
        lines.append("- **Measured**: " + ", ".join(f"{k} = {v:.4g}" for k, v in results.items()))
    else:
        lines.append("- **Measured**: no J / Ĵ in this run (`rlhflab eval` measures them)")
    fmt = getattr(model.config, "rlhflab_input_format", None)
    if kind == "reward model" and fmt:
        lines.append(f"- **Input format** (config.json `rlhflab_input_format`): {json.dumps(fmt)}")
    labels = getattr(model.config, "id2label", None) or {}
    if kind == "reward model" and len(labels) > 1:
        lines.append(f"- **Outputs** (config.json `id2label`): {', '.join(str(v) for v in labels.values())}")
    if adapters:
        lines.append("- **Weights**: LoRA adapters (`adapter_config.json`); `--merge_lora` saves merged weights")
    elif kind == "reward model" and getattr(config, "lora_r", 0) > 0 and not getattr(config, "merge_lora", False):
        lines.append(
            "- **Weights**: LoRA merged here; the adapters themselves are in `adapter/` (`adapter_config.json`)"
        )
    lines += ["", "## Load", "", "```python", _loading(kind, adapters, path), "```", ""]
    return "\n".join(lines)
