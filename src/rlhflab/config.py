"""Dataclass configs, YAML files and command-line overrides (flags win over the YAML file).

Every option is a dataclass field declared once, with its help text in ``metadata["help"]``;
``rlhflab CMD --help`` prints them all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import os
from collections.abc import Callable, Sequence
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


def chat_template_option() -> Any:
    """``use_chat_template``, declared once for every config that renders prompts (the rule itself is
    :func:`rlhflab.data.render.render_prompt`'s)."""
    return option(
        "auto",
        "Chat template: auto (message lists templated, string prompts left as text, as TRL does), "
        "true (template string prompts too), false (plain text where a prompt has one).",
        choices=["auto", "true", "false"],
    )


def data_format_option() -> Any:
    """``format``, declared once for every config that reads ``--data`` (the schemas themselves are
    :data:`rlhflab.data.schemas.SCHEMAS`; a test checks that this help names each of them)."""
    return option(
        None,
        "Public schema --data is laid out in: hh-rlhf, shp, ultrafeedback, helpsteer2, oasst1, label-studio, "
        "argilla (default: detected from the first row and said in one line, else rlhflab's / TRL's columns).",
    )


def reward_template_option() -> Any:
    """``reward_template``, declared once for every config that scores with a reward-model directory (the
    rule itself is :func:`rlhflab.models.scoring.reward_template`'s)."""
    return option(
        "auto",
        "How a reward-model directory's input is laid out: auto (as its config records, rlhflab's own; else chat "
        "where its tokenizer has a chat template, said in one line), chat (its chat template of the user turn "
        "and reply, as TRL trains on conversational data), plain (rlhflab's: context, newline, output, EOS; a "
        "sentence pair for encoders), text (context + output + EOS with special tokens, TRL's standard rows).",
        choices=["auto", "chat", "plain", "text"],
    )


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


def _processes() -> int:
    # accelerate launch (and torchrun) set WORLD_SIZE; a plain run is one process.
    return int(os.environ.get("WORLD_SIZE", "1"))


def _comma_list(value: Any) -> Any:
    """A list, as transformers takes it (``report_to: [tensorboard, wandb]``), as rlhflab's comma list."""
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def _bf16(value: Any) -> str:
    return "bf16" if value in (True, "true", "True", "1") else "no"


def _fp16(value: Any) -> str:
    return "fp16" if value in (True, "true", "True", "1") else "no"


def _per_device(value: Any) -> Any:
    return int(value) * _processes() if str(value).lstrip("-").isdigit() else value


# TRL / transformers option names (TrainingArguments, TRL's trainer configs and ModelConfig), each either
# taken with TRL's meaning — (rlhflab fields it may set, in order of preference; the value's conversion) —
# or refused with the rlhflab equivalent named. Names TRL and rlhflab share (learning_rate, seed,
# gradient_accumulation_steps, gradient_checkpointing, max_length, lora_r, ...) need no entry.
TRL_NAMES: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]] | str] = {
    "per_device_train_batch_size": (("batch_size",), _per_device),
    "num_train_epochs": (("num_epochs",), lambda v: v),
    "lr_scheduler_type": (("lr_scheduler",), lambda v: v),
    "bf16": (("mixed_precision",), _bf16),
    "fp16": (("mixed_precision",), _fp16),
    "model_name_or_path": (("policy", "model"), lambda v: v),
    "dataset_name": (("data",), lambda v: v),
    "torch_dtype": (("dtype",), lambda v: v),
    "max_completion_length": (("max_new_tokens",), lambda v: v),
    "num_generations": (("samples_per_prompt",), lambda v: v),
    "beta": (("kl_coef",), lambda v: v),
    "report_to": (("report_to",), _comma_list),
    "lora_target_modules": (("lora_target_modules",), _comma_list),
    "warmup_ratio": "rlhflab takes --warmup_steps (a number of optimiser steps)",
    "max_prompt_length": "rlhflab takes --max_length (prompt + completion) with --truncate (cut prompts from the left)",
    "per_device_eval_batch_size": "rlhflab's evaluation batches are not an option of the training commands",
    "logging_dir": "rlhflab logs into --output_dir (metrics.jsonl; RUN/tensorboard with --report_to tensorboard)",
    "dataset_config": "rlhflab reads --data NAME's default configuration; save the one you need and pass the file",
    "dataset_train_split": "rlhflab takes --data NAME:SPLIT",
    "use_peft": "rlhflab trains LoRA adapters when --lora_r > 0",
    "eval_strategy": "rlhflab evaluates through `rlhflab eval` and the reward command's held-out report",
    "save_strategy": "rlhflab takes --save_steps (0: only the final model)",
    "push_to_hub": "rlhflab saves to --output_dir; push the saved directory with huggingface_hub",
}


def _trl_value(name: str, value: Any, fields: set[str], problems: list[str]) -> tuple[str, Any] | None:
    """(rlhflab field, value) for a TRL option name, or None with the reason appended to ``problems``."""
    entry = TRL_NAMES[name]
    if isinstance(entry, str):
        problems.append(f"'{name}' (TRL's; {entry})")
        return None
    targets, convert = entry
    target = next((t for t in targets if t in fields), None)
    if target is None:
        problems.append(f"'{name}' (TRL's name for --{targets[0]}, which this command does not take)")
        return None
    return target, convert(value)


def _trl_flags(argv: list[str], fields: set[str], prog: str) -> list[str]:
    """``argv`` with TRL's flag names rewritten as rlhflab's (``--bf16`` → ``--mixed_precision=bf16``;
    several values after ``--report_to`` joined by commas); a refused name is a one-line ConfigError."""
    out, problems, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if name in TRL_NAMES and (name not in fields or name in ("report_to", "lora_target_modules")):
            values = [inline] if eq else []
            while not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
                values.append(argv[i])
            value = values if len(values) > 1 else (values[0] if values else True)
            mapped = _trl_value(name, value, fields, problems)
            if mapped is not None:
                out.append(f"--{mapped[0]}={mapped[1]}")
        else:
            out.append(arg)
        i += 1
    if problems:
        raise ConfigError(f"options not taken: {'; '.join(problems)} (see {prog} --help)")
    return out


def parse_config(cls: type[T], argv: Sequence[str] | None, prog: str, description: str = "") -> T:
    """Build ``cls`` from ``--config FILE.yaml`` and flags; flags override the file. TRL's option
    names (:data:`TRL_NAMES`) are read with TRL's meaning or refused naming rlhflab's; every key of
    the file that is not taken is reported in one error."""
    from transformers import HfArgumentParser

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    names = {f.name for f in dataclasses.fields(cls)}
    argv = _trl_flags(list(argv or []), names, prog)

    parser = HfArgumentParser(cls, prog=prog, description=description)
    parser.add_argument("--config", default=None, help="YAML file of options; command-line flags override it.")
    if known.config:
        values = load_yaml(known.config)
        for f in dataclasses.fields(cls):  # a flag's old spelling works in the file too
            for alias in f.metadata.get("aliases", []):
                if alias.lstrip("-") in values and f.name not in values:
                    values[f.name] = values.pop(alias.lstrip("-"))
        problems: list[str] = []
        for key in [k for k in values if k in TRL_NAMES and (k not in names or isinstance(values[k], list))]:
            mapped = _trl_value(key, values.pop(key), names, problems)
            if mapped is None:
                continue
            target, value = mapped
            if target in values and values[target] != value and "no" not in (values[target], value):
                problems.append(f"'{key}' sets {target} {value!r}, which another key sets {values[target]!r}")
            elif target not in values or values[target] == "no":  # bf16: true beside fp16: false
                values[target] = value
        unknown = sorted(set(values) - names)
        if unknown:
            quoted = ", ".join(f"'{k}'" for k in unknown)
            problems.insert(0, f"unknown option{'s' if len(unknown) > 1 else ''} {quoted}")
        if problems:
            raise ConfigError(f"{known.config}: {'; '.join(problems)} (see {prog} --help)")
        parser.set_defaults(**values)
    try:
        cfg, _ = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
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
    names = {f.name for f in dataclasses.fields(cls)}
    with contextlib.suppress(ConfigError):  # a refused TRL name: parse_config has said so already
        argv = _trl_flags(list(argv), names, "")  # TRL's flag names count as the options they set
    given = {by_flag[arg.split("=", 1)[0]] for arg in argv if arg.split("=", 1)[0] in by_flag}
    if "--config" in argv[:-1]:
        values = load_yaml(argv[list(argv).index("--config") + 1])
        for key in values:
            entry = TRL_NAMES.get(key)
            field_name = next((t for t in entry[0] if t in names), key) if isinstance(entry, tuple) else key
            given.add(by_flag.get(f"--{key}", field_name))
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
    report_to = ",".join(report_to) if isinstance(report_to, (list, tuple)) else report_to  # transformers' list form
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
class TruncateOption:
    """What happens to input longer than the model takes: declared once, read by prompt encoding and
    by the training loop's example tokenising alike."""

    truncate: bool = option(
        False,
        "Keep the last tokens of a prompt longer than the context minus max_new_tokens, or of an example "
        "longer than max_length, instead of failing on it.",
    )


@dataclass
class PrecisionOption:
    """The autocast precision, declared once for the training loop and for the commands that only
    sample and score (eval, bon, rad); resolved by :func:`rlhflab.hardware.resolve_mixed_precision`."""

    mixed_precision: str | None = option(
        None,
        "Autocast precision of training, sampling and scoring (fp32 weights, optimiser and log-probs): "
        "auto (bf16 where a start-up matmul measures it faster here), no, bf16, fp16 (CUDA only). "
        "Default: accelerate launch's --mixed_precision, else no.",
        choices=["auto", "no", "bf16", "fp16"],
    )


@dataclass
class PromptOptions(TruncateOption):
    """Where a command's prompts come from and how they become model input."""

    prompts: str = option("train", "Prompts: 'train' / 'unseen' (shipped sets) or a prompts file (prompt | messages).")
    limit: int = option(0, "Use only the first N prompts (0: all).")
    use_chat_template: str = chat_template_option()


@dataclass
class SamplingOptions:
    """How completions are sampled from the policy."""

    max_new_tokens: int = option(32, "Maximum completion length in tokens.")
    temperature: float = option(1.0, "Sampling temperature (1.0 samples from pi itself, as the objective assumes).")
    top_p: float = option(1.0, "Nucleus sampling (1.0: off).")
    generation_batch_size: int = option(32, "Prompts per generate call.")


@dataclass
class LoopOptions(TruncateOption, PrecisionOption):
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
        1,
        "Micro-batches accumulated per optimiser step. Offline methods: each micro-batch is batch_size examples, "
        "so a step sees batch_size x this many (TRL's meaning); RL: the step is one minibatch of the rollout, "
        "made of this many micro-batches, as TRL's GRPO makes one step of its generation batch "
        "(per_device_train_batch_size x gradient_accumulation_steps).",
    )
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables).")
    max_length: int = option(
        512, "Maximum tokens of prompt + completion; longer examples are an error unless truncate is set."
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
    merge_lora: bool = option(
        False,
        "Save a LoRA run's model with the adapters merged into plain weights (default: the adapters, "
        "adapter_config.json, for PeftModel.from_pretrained; rlhflab commands load either).",
    )
    dtype: str = option(
        "float32",
        "Parameter (storage) dtype. bfloat16/float16 train the weights themselves in low precision, with no "
        "fp32 master copy; for mixed precision keep float32 and set --mixed_precision.",
        choices=["float32", "bfloat16", "float16"],
    )
    gradient_checkpointing: bool = option(
        False, "Recompute activations in the backward pass (HF gradient checkpointing): less memory, ~1/3 more compute."
    )
    progress: bool = option(True, "Show progress bars.")
    report_to: str = option("none", REPORT_TO_HELP)

    def __post_init__(self) -> None:
        # Built from Python (the API, a notebook), a config gets the command line's checks: one that
        # cannot train (kl_coef 0, an unknown tracker, ...) is refused when it is made, not after a run.
        self.validate()

    def validate(self) -> None:
        tracker_names(self.report_to)
        if self.dtype != "float32" and self.mixed_precision not in (None, "no"):
            raise ConfigError(
                f"--dtype {self.dtype} with --mixed_precision {self.mixed_precision}: choose one (low-precision "
                "weights, or fp32 weights under autocast: --dtype float32 --mixed_precision bf16)"
            )
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

    batch_size: int = option(
        8,
        "Examples per micro-batch across all processes; an optimiser step takes gradient_accumulation_steps of them.",
    )
    num_epochs: float = option(1.0, "Passes over the training data (offline methods).")
    max_steps: int = option(-1, "Stop after this many optimiser steps (-1: run num_epochs).")

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError("batch_size must be positive")


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
