"""``rlhflab memory``: peak training memory per process, estimated before a run (no weights loaded)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from rlhflab.config import DEFAULT_POLICY, option
from rlhflab.train.memory import (
    METHODS,
    PUBLISHED_CONFIGS,
    STRATEGIES,
    MemoryRequest,
    estimate_memory,
    format_estimate,
    format_table,
)


@dataclass
class MemoryConfig:
    """Estimate the peak memory per process of one training step: weights, gradients, AdamW state,
    frozen models, autocast copies, activations and logits (rlhflab.train.memory says what each
    counts). --table prints the README's table of three sizes x five methods x DDP / FSDP / ZeRO-3."""

    model: str = option(
        DEFAULT_POLICY,
        f"Model: {', '.join(PUBLISHED_CONFIGS)} (published config dimensions), a registry name or a model directory.",
    )
    method: str = option("sft", "Training method.", choices=list(METHODS))
    num_processes: int = option(1, "Processes (GPUs) the run is launched on.")
    strategy: str = option(
        "ddp",
        "ddp (all replicated), fsdp (rlhflab's FSDP2: trained weights, gradients and AdamW sharded), "
        "zero3 (DeepSpeed ZeRO-3: the same sharding; rlhflab runs it for SFT, reward and the DPO family).",
        choices=list(STRATEGIES),
    )
    batch_size: int = option(8, "Examples (RL: sampled sequences) per micro-batch across all processes.")
    max_length: int = option(512, "Tokens per sequence, prompt + completion.")
    completion_length: int = option(0, "Tokens per sequence that carry the loss (0: all but the first).")
    mixed_precision: str = option("no", "Autocast precision of the run.", choices=["no", "bf16"])
    gradient_checkpointing: bool = option(False, "Recompute each decoder layer's activations in the backward pass.")
    lora_r: int = option(0, "LoRA rank (0: full fine-tuning).")
    critic: str = option(
        "shared",
        "ppo / a2c critic: a value head on the policy, or a separate value model.",
        choices=["shared", "separate"],
    )
    precompute_reference: bool = option(
        True, "DPO family: pi_ref's log-probs cached before training, so pi_ref is not held while training."
    )
    reward_model: str | None = option(None, "RL methods: the frozen reward model's size (default: --model's).")
    table: bool = option(False, "Print the README table instead (at this batch size, length and precision).")

    def validate(self) -> None:
        self.request().validate()

    def request(self) -> MemoryRequest:
        return MemoryRequest(**{f.name: getattr(self, f.name) for f in fields(MemoryRequest)})


def run_memory(cfg: MemoryConfig) -> str:
    """The estimate's table, or (``--table``) the README table over 8 processes by default."""
    if cfg.table:
        request = cfg.request()
        if request.num_processes == 1:
            request = replace(request, num_processes=8)
        return format_table(request)
    return format_estimate(estimate_memory(cfg.request()))
