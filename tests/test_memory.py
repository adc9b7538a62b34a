"""The memory estimator (rlhflab.train.memory) against what a real training step holds.

Weights, gradients and AdamW state are counted exactly; activations are checked against the bytes
autograd actually saves in one training forward of the tiny policy (within ESTIMATE_FACTOR), and so
is the saving that gradient checkpointing brings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlhflab.cli import main
from rlhflab.models.loading import apply_lora, load_policy
from rlhflab.sampling.rollout import completion_logprobs, join_prompt_completion
from rlhflab.train.loop import enable_gradient_checkpointing, make_optimizer
from rlhflab.train.memory import (
    MemoryRequest,
    SavedTensorBytes,
    estimate_memory,
    model_shape,
    saved_for_backward_bytes,
)
from rlhflab.train.offline import SFTConfig

# How far the activation estimate may be from the measured saved bytes (either way).
ESTIMATE_FACTOR = 1.25


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _one_step(model, config):
    """One AdamW step as the loop makes it; returns the optimiser."""
    optimizer, _ = make_optimizer(config, {"policy": model}, total_steps=1)
    batch = join_prompt_completion([[5, 6, 7]], [[8, 9, 10, 11]], pad_id=0)
    completion_logprobs(model, batch).sum().backward()
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("lora_r", [0, 4])
def test_weights_gradients_and_adamw_bytes_match_a_real_step_exactly(model_cache, lora_r):
    config = SFTConfig(policy="tiny-policy", lora_r=lora_r)
    model, _ = load_policy("tiny-policy")
    model = apply_lora(model, config)
    optimizer = _one_step(model, config)
    trained = [p for p in model.parameters() if p.requires_grad]
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]

    components = estimate_memory(MemoryRequest("tiny-policy", lora_r=lora_r)).components
    assert components["weights (fp32)"] == _tensor_bytes(model.parameters())
    assert components["gradients (fp32)"] == _tensor_bytes(p.grad for p in trained)
    assert components["AdamW moments + step (fp32)"] == _tensor_bytes(state)


def test_parameter_counts_come_from_the_config_as_transformers_builds_it():
    """The published sizes, counted on the meta device: SmolLM2-135M, SmolLM2-1.7B, Llama-3.1-8B."""
    assert model_shape("smollm2-135m-instruct").causal_lm_params == 134_515_008
    assert model_shape("smollm2-1.7b").causal_lm_params == 1_711_376_384
    assert model_shape("llama-3.1-8b").causal_lm_params == 8_030_261_248


def _padded_batch(rows: int = 4):
    """Prompts and completions of different lengths: left- and right-padded, as rlhflab batches them."""
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(6, 90, (8 + 3 * i,), generator=generator).tolist() for i in range(rows)]
    completions = [torch.randint(6, 90, (40 - 4 * i,), generator=generator).tolist() for i in range(rows)]
    return join_prompt_completion(prompts, completions, pad_id=0)


def _measured_saved_bytes(model, batch, mixed_precision: str) -> int:
    """Bytes autograd saves in one SFT forward, as the loop runs it (autocast around the loss)."""
    dtype = {"bf16": torch.bfloat16}.get(mixed_precision)
    context = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with SavedTensorBytes(exclude=model) as saved, context:
        logprobs = completion_logprobs(model, batch)
        loss = -(logprobs * batch.completion_mask).sum()
    loss.backward()
    return saved.bytes


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_activation_estimate_and_checkpointing_saving_match_what_autograd_saves(model_cache, mixed_precision):
    batch = _padded_batch()
    rows, seq = batch.input_ids.shape
    shape = model_shape("tiny-policy")
    estimated, measured = {}, {}
    for checkpointing in (False, True):
        model, _ = load_policy("tiny-policy")
        model.train()
        if checkpointing:
            enable_gradient_checkpointing({"policy": model})
        measured[checkpointing] = _measured_saved_bytes(model, batch, mixed_precision)
        head_positions = batch.num_completion_tokens + 1
        estimated[checkpointing] = saved_for_backward_bytes(
            shape, rows, seq, head_positions, mixed_precision, checkpointing
        )
    for checkpointing in (False, True):
        ratio = estimated[checkpointing] / measured[checkpointing]
        assert 1 / ESTIMATE_FACTOR <= ratio <= ESTIMATE_FACTOR, (checkpointing, estimated, measured)
    saving_ratio = (estimated[False] - estimated[True]) / (measured[False] - measured[True])
    assert 1 / ESTIMATE_FACTOR <= saving_ratio <= ESTIMATE_FACTOR, (estimated, measured)
    assert measured[True] < measured[False] / 2  # the tiny model's checkpointing keeps under half


def test_sharding_divides_the_trained_state_and_zero3_reads_as_fsdp():
    base = MemoryRequest("smollm2-1.7b", method="dpo", num_processes=8, batch_size=16, max_length=256)
    ddp = estimate_memory(base).components
    fsdp = estimate_memory(dataclasses.replace(base, strategy="fsdp")).components
    zero3 = estimate_memory(dataclasses.replace(base, strategy="zero3")).components
    assert fsdp == zero3
    for name in ("weights (fp32)", "gradients (fp32)"):
        assert fsdp[name] == pytest.approx(ddp[name] / 8, rel=1e-6)
    assert fsdp["activations (saved for backward)"] == ddp["activations (saved for backward)"]


def test_methods_hold_the_models_rlhflab_keeps():
    base = MemoryRequest("smollm2-135m-instruct", batch_size=8, max_length=128)
    frozen = "frozen models (fp32: reference, reward model)"
    params = model_shape("smollm2-135m-instruct")
    assert estimate_memory(dataclasses.replace(base, method="dpo")).components[frozen] == 0  # log-probs cached
    dpo_live = estimate_memory(dataclasses.replace(base, method="dpo", precompute_reference=False))
    assert dpo_live.components[frozen] == 4 * params.causal_lm_params
    grpo = estimate_memory(dataclasses.replace(base, method="grpo")).components[frozen]
    assert grpo == 4 * (params.causal_lm_params + params.classifier_params)  # reference + reward model
    lora_grpo = estimate_memory(dataclasses.replace(base, method="grpo", lora_r=8)).components[frozen]
    assert lora_grpo == 4 * params.classifier_params  # the adapter-disabled policy is the reference
    shared, separate = (
        estimate_memory(dataclasses.replace(base, method="ppo", critic=critic)).components["weights (fp32)"]
        for critic in ("shared", "separate")
    )
    assert separate - shared == 4 * params.trunk_params  # a second trunk; the value head either way


def test_memory_command_prints_a_table_and_refuses_bad_options_in_one_line(capsys):
    assert main(["memory", "--model", "smollm2-1.7b", "--method", "ppo", "--mixed_precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "| autocast bf16 weight copies |" in out and "total" in out
    assert main(["memory", "--table", "--max_length", "256"]) == 0
    table = capsys.readouterr().out
    assert table.count("| llama-3.1-8b |") == 5 and "ZeRO-3" in table
    assert main(["memory", "--model", "smollm2-1.7b", "--completion_length", "600", "--max_length", "512"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlhflab memory: error: --completion_length 600") and "\n" not in err
