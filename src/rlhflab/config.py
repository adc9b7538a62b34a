"""Dataclass configs, YAML files and command-line overrides (flags win over the YAML file).

Every option is a dataclass field declared once, with its help text in ``metadata["help"]``;
``rlhflab CMD --help`` prints them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
        for f in dataclasses.fields(cls):  # a flag's old spelling works in the file too
            for alias in f.metadata.get("aliases", []):
                if alias.lstrip("-") in values and f.name not in values:
                    values[f.name] = values.pop(alias.lstrip("-"))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{known.config}: unknown option '{unknown[0]}' (see {prog} --help)")
        parser.set_defaults(**values)
    try:
        cfg, _ = parser.parse_args_into_dataclasses(args=list(argv or []), look_for_args_file=False)
    except SystemExit as exc:  # argparse already printed the message
        raise SystemExit(exc.code if exc.code else 0) from None
    except ValueError as exc:  # HfArgumentParser's way of saying an option is not this command's
        raise ConfigError(f"{exc} (see {prog} --help)") from None
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def explicit_options(cls: type, argv: Sequence[str]) -> set[str]:
    """The fields of ``cls`` that ``argv`` sets, by a flag (``--name`` or one of its aliases, also
    as ``--name=value``) or through its ``--config`` file; the rest kept their defaults."""
    by_flag = {}
    for f in dataclasses.fields(cls):
        for flag in [f"--{f.name}", *f.metadata.get("aliases", [])]:
            by_flag[flag] = f.name
            if f.type in (bool, "bool"):
                by_flag[f"--no_{f.name}"] = f.name
    given = {by_flag[arg.split("=", 1)[0]] for arg in argv if arg.split("=", 1)[0] in by_flag}
    if "--config" in argv[:-1]:
        values = load_yaml(argv[list(argv).index("--config") + 1])
        given |= {by_flag.get(f"--{key}", key) for key in values}
    return given


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def default_run_dir(command: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{command}-{stamp}")


# ---- option groups, mixed into each command's config ------------------------------------------
DEFAULT_POLICY = "smollm2-135m-instruct"
# --report_to: the experiment trackers (accelerate's) a run can log to, and the package each needs.
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
REPORT_TO_HELP = (
    "Experiment trackers that follow the run live, comma-separated: none, tensorboard (RUN/tensorboard/), "
    "trackio (local; `trackio show`), wandb, mlflow (the last two: pip install 'rlhflab[trackers]')."
)


def tracker_names(report_to: str | None) -> list[str]:
    """The trackers of ``--report_to`` (comma-separated; ``none`` or empty: none). An unknown name,
    or one whose package is not installed, is a one-line ConfigError."""
    names = [n.strip() for n in (report_to or "none").split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"--report_to {name}: unknown tracker; choose from none, {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(
                f"--report_to {name}: the '{TRACKERS[name]}' package is not installed (pip install 'rlhflab[trackers]')"
            )
    return names


@dataclass
class PolicyOptions:
    """The policy a command samples, trains or evaluates."""

    policy: str = option(DEFAULT_POLICY, "Policy: registry name, hub id or local path.", aliases=["--model"])


@dataclass
class PromptOptions:
    """Where a command's prompts come from and how they become model input."""

    prompts: str = option("train", "Prompts: 'train' / 'unseen' (shipped sets) or a prompts file (prompt | messages).")
    limit: int = option(0, "Use only the first N prompts (0: all).")
    use_chat_template: bool = option(True, "Render string prompts with the policy's chat template.")
    truncate: bool = option(
        False,
        "Keep the last tokens of prompts longer than the policy's context minus max_new_tokens (default: such a prompt is an error).",
    )


@dataclass
class SamplingOptions:
    """How completions are sampled from the policy."""

    max_new_tokens: int = option(32, "Maximum completion length in tokens.")
    temperature: float = option(1.0, "Sampling temperature (1.0 samples from pi itself, as the objective assumes).")
    top_p: float = option(1.0, "Nucleus sampling (1.0: off).")
    generation_batch_size: int = option(32, "Prompts per generate call.")


@dataclass
class LoopOptions:
    """Options of the one training loop, shared by every trainer."""

    output_dir: str | None = option(
        None, "Run directory (config, metrics, checkpoints, models). Default: runs/CMD-TIMESTAMP."
    )
    seed: int = option(0, "Random seed for sampling, shuffling, initialisation and simulated annotators.")
    learning_rate: float = option(1e-5, "Peak learning rate of AdamW.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    lr_scheduler: str = option(
        "constant", "Learning-rate schedule after warm-up.", choices=["constant", "linear", "cosine"]
    )
    warmup_steps: int = option(0, "Linear warm-up steps.")
    gradient_accumulation_steps: int = option(
        1, "Micro-batches accumulated per optimiser step (each of batch_size / (processes * accumulation))."
    )
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).")
    max_length: int = option(
        512, "Maximum tokens of prompt + completion; longer examples are an error unless truncate is set."
    )
    truncate: bool = option(
        False, "Truncate over-long prompts and examples from the left (keep their last tokens) instead of failing."
    )
    logging_steps: int = option(1, "Write a metrics row every N optimiser steps.")
    save_steps: int = option(0, "Checkpoint every N optimiser steps (0: only the final model).")
    lora_r: int = option(
        0, "LoRA rank (0: train all weights). With LoRA the reference policy is the adapter-disabled model."
    )
    lora_alpha: int = option(16, "LoRA scaling alpha.")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_target_modules: str = option(
        "all-linear", "Modules that get LoRA adapters (peft syntax, comma-separated or 'all-linear')."
    )
    dtype: str = option("float32", "Parameter dtype.", choices=["float32", "bfloat16", "float16"])
    progress: bool = option(True, "Show progress bars.")
    report_to: str = option("none", REPORT_TO_HELP)

    def validate(self) -> None:
        tracker_names(self.report_to)
        if self.gradient_accumulation_steps <= 0:
            raise ConfigError("gradient_accumulation_steps must be positive")
        if self.learning_rate < 0:
            raise ConfigError("learning_rate must be non-negative")


@dataclass
class ResumeOptions:
    """Resuming an interrupted run of the loop."""

    resume: str | None = option(None, "Resume from this run directory's latest checkpoint.")


@dataclass
class DatasetOptions:
    """Passes over a fixed dataset (the offline methods)."""

    batch_size: int = option(8, "Examples per optimiser step across all processes (the global batch).")
    num_epochs: float = option(1.0, "Passes over the training data (offline methods).")
    max_steps: int = option(-1, "Stop after this many optimiser steps (-1: run num_epochs).")

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError("batch_size must be positive")
        accumulation = getattr(self, "gradient_accumulation_steps", 1)
        if accumulation <= 0 or self.batch_size % accumulation:
            raise ConfigError("batch_size must be a positive multiple of gradient_accumulation_steps")


@dataclass
class TrainConfig(LoopOptions, DatasetOptions, ResumeOptions):
    """Options shared by the training loops on a fixed dataset (SFT, reward modelling, DPO...)."""

    def validate(self) -> None:
        DatasetOptions.validate(self)
        LoopOptions.validate(self)


# ---- named presets -----------------------------------------------------------------------------
def preset_option(presets: dict[str, dict], name: str, help: str, **kwargs: Any) -> Any:
    """A field left at None unless given, then filled from the chosen preset; --help shows each
    preset's value."""
    values = ", ".join(f"{p}={v[name]}" for p, v in presets.items())
    return option(None, f"{help} (preset: {values})", **kwargs)


def apply_preset(cfg: T, presets: dict[str, dict], preset: str) -> T:
    """``cfg`` with every field left at None filled from ``presets[preset]``."""
    if preset not in presets:
        raise ConfigError(f"unknown preset '{preset}'; choose from {', '.join(presets)}")
    values = {k: v for k, v in presets[preset].items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **values)
