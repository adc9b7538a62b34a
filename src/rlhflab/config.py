"""Dataclass configs, YAML files and command-line overrides (flags win over the YAML file).

Every option is a dataclass field declared once, with its help text in ``metadata["help"]``;
``rlhflab CMD --help`` prints them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from rlhflab.errors import ConfigError
from rlhflab.files import write_text

T = TypeVar("T")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with its help text (the one place the option is documented)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option: value")
    return data


def parse_config(cls: type[T], argv: Sequence[str] | None, prog: str, description: str = "") -> T:
    """Build ``cls`` from ``--config FILE.yaml`` and flags; flags override the file."""
    from transformers import HfArgumentParser

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)

    parser = HfArgumentParser(cls, prog=prog, description=description)
    parser.add_argument("--config", default=None, help="YAML file of options; command-line flags override it.")
    if known.config:
        values = load_yaml(known.config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{known.config}: unknown option '{unknown[0]}' (see {prog} --help)")
        parser.set_defaults(**values)
    try:
        cfg, _ = parser.parse_args_into_dataclasses(args=list(argv or []), look_for_args_file=False)
    except SystemExit as exc:  # argparse already printed the message
        raise SystemExit(exc.code if exc.code else 0)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def default_run_dir(command: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{command}-{stamp}")


@dataclass
class TrainConfig:
    """Options shared by every training loop (SFT, reward modelling, policy optimisation, DPO...)."""

    output_dir: str | None = option(None, "Run directory (config, metrics, checkpoints, models). Default: runs/CMD-TIMESTAMP.")
    seed: int = option(0, "Random seed for sampling, shuffling, initialisation and simulated annotators.")
    learning_rate: float = option(1e-5, "Peak learning rate of AdamW.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    lr_scheduler: str = option("constant", "Learning-rate schedule after warm-up.", choices=["constant", "linear", "cosine"])
    warmup_steps: int = option(0, "Linear warm-up steps.")
    batch_size: int = option(8, "Examples per optimiser step across all processes (the global batch).")
    gradient_accumulation_steps: int = option(1, "Micro-batches accumulated per optimiser step (each of batch_size / (processes * accumulation)).")
    num_epochs: float = option(1.0, "Passes over the training data (offline methods).")
    max_steps: int = option(-1, "Stop after this many optimiser steps (-1: run num_epochs).")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).")
    max_length: int = option(512, "Maximum tokens of prompt + completion; longer examples are an error unless truncate is set.")
    truncate: bool = option(False, "Truncate over-long examples (prompt from the left) instead of failing.")
    logging_steps: int = option(1, "Write a metrics row every N optimiser steps.")
    save_steps: int = option(0, "Checkpoint every N optimiser steps (0: only the final model).")
    resume: str | None = option(None, "Resume from this run directory's latest checkpoint.")
    lora_r: int = option(0, "LoRA rank (0: train all weights). With LoRA the reference policy is the adapter-disabled model.")
    lora_alpha: int = option(16, "LoRA scaling alpha.")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_target_modules: str = option("all-linear", "Modules that get LoRA adapters (peft syntax, comma-separated or 'all-linear').")
    dtype: str = option("float32", "Parameter dtype.", choices=["float32", "bfloat16", "float16"])
    progress: bool = option(True, "Show progress bars.")

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError("batch_size must be positive")
        if self.gradient_accumulation_steps <= 0 or self.batch_size % self.gradient_accumulation_steps:
            raise ConfigError("batch_size must be a positive multiple of gradient_accumulation_steps")
        if self.learning_rate < 0:
            raise ConfigError("learning_rate must be non-negative")
