"""Mixed precision and gradient checkpointing in the one training loop (``rlhflab.train.loop``):
``--mixed_precision`` reaches accelerate on a CPU, ``auto`` follows the start-up measurement,
accelerate launch's own setting is read when the flag is not given, conflicting or unsupported
requests are one-line errors, and a bf16 run computes close to (not exactly) the fp32 one while
its weights stay fp32."""

from __future__ import annotations

import json

import pytest
import torch

from rlhflab import hardware
from rlhflab.config import parse_config
from rlhflab.errors import ConfigError
from rlhflab.train.loop import make_accelerator
from rlhflab.train.offline import SFTConfig
from tests._train_entry import main as train_entry_main


@pytest.fixture(autouse=True)
def _fresh_accelerate_state(monkeypatch):
    """No launch setting from the environment, and accelerate's process-wide state reset after."""
    from accelerate.state import AcceleratorState

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    yield
    AcceleratorState._reset_state()


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_flag_parses_on_a_training_command():
    cfg = parse_config(SFTConfig, ["--mixed_precision", "bf16", "--gradient_checkpointing"], "rlhflab sft")
    assert cfg.mixed_precision == "bf16" and cfg.gradient_checkpointing
    assert parse_config(SFTConfig, [], "rlhflab sft").mixed_precision is None


def test_bf16_on_cpu_reaches_the_accelerator_and_its_autocast():
    accelerator = make_accelerator(SFTConfig(mixed_precision="bf16"))
    assert accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu"
    with accelerator.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        y = torch.nn.Linear(8, 8)(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16
    assert make_accelerator(SFTConfig(mixed_precision="no")).mixed_precision == "no"


def test_accelerate_launch_setting_is_used_when_the_flag_is_not_given(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    assert make_accelerator(SFTConfig()).mixed_precision == "bf16"
    assert make_accelerator(SFTConfig(mixed_precision="no")).mixed_precision == "no"  # the flag wins
    with pytest.raises(ConfigError, match="--dtype bfloat16"):
        make_accelerator(SFTConfig(dtype="bfloat16"))


@pytest.mark.parametrize("speedup, chosen", [(2.0, "bf16"), (0.6, "no"), (1.05, "no")])
def test_auto_takes_bf16_only_where_the_measurement_says_it_is_faster(monkeypatch, capsys, speedup, chosen):
    monkeypatch.setattr(hardware, "bf16_matmul_speedup", lambda device_type="cpu": speedup)
    assert make_accelerator(SFTConfig(mixed_precision="auto")).mixed_precision == chosen
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mixed_precision auto")]
    assert len(lines) == 1 and f"{speedup:.2f}x" in lines[0]
    assert ("bf16 autocast" in lines[0]) == (chosen == "bf16")


@pytest.mark.parametrize("speedup, warned", [(0.01, True), (2.0, False)])
def test_an_explicit_bf16_is_honoured_and_says_so_where_bf16_is_slower(monkeypatch, capsys, speedup, warned):
    monkeypatch.setattr(hardware, "bf16_matmul_speedup", lambda device_type="cpu": speedup)
    assert hardware.resolve_mixed_precision("bf16", "cpu") == "bf16"
    lines = [line for line in capsys.readouterr().err.splitlines() if "bf16 autocast as asked" in line]
    assert len(lines) == int(warned)
    if warned:
        assert lines[0].startswith("--mixed_precision bf16:") and "0.01x" in lines[0]


def test_the_measurement_is_short_and_cached_per_process():
    import time

    hardware._SPEEDUP_CACHE.pop("cpu", None)
    t0 = time.perf_counter()
    ratio = hardware.bf16_matmul_speedup("cpu")
    assert time.perf_counter() - t0 < 3.0 and ratio > 0  # <1 s alone; margin for a loaded machine
    t0 = time.perf_counter()
    assert hardware.bf16_matmul_speedup("cpu") == ratio and time.perf_counter() - t0 < 0.01


def test_unsupported_or_conflicting_precision_is_a_one_line_error(monkeypatch):
    with pytest.raises(ConfigError, match="fp16: needs a CUDA GPU") as err:
        make_accelerator(SFTConfig(mixed_precision="fp16"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="choose one") as err:
        SFTConfig(dtype="bfloat16", mixed_precision="bf16").validate()
    assert "\n" not in str(err.value)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="fp8: unsupported"):
        make_accelerator(SFTConfig())


def test_deepspeed_request_is_a_one_line_error_not_ddp(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed requested") as err:
        make_accelerator(SFTConfig())
    assert "\n" not in str(err.value)


def test_a_bf16_sft_run_computes_close_to_fp32_not_identically_with_fp32_weights(model_cache, tmp_path):
    """Same data and seed: every step's loss within a few percent, not one bit-identical; a
    computation actually done in bf16 differs in its ~3rd significant digit."""
    steps = ["max_steps=3"]
    train_entry_main(["sft", str(tmp_path / "fp32"), *steps, "mixed_precision=no"])
    train_entry_main(["sft", str(tmp_path / "bf16"), *steps, "mixed_precision=bf16"])
    fp32, bf16 = _metrics(tmp_path / "fp32"), _metrics(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 3
    for a, b in zip(fp32, bf16):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    assert all(a["loss"] != b["loss"] for a, b in zip(fp32, bf16))
    from safetensors.torch import load_file

    saved = load_file(next((tmp_path / "bf16").rglob("model.safetensors")))
    assert {t.dtype for t in saved.values()} == {torch.float32}  # fp32 master weights


def test_training_inside_a_command_wide_autocast_sees_every_step(model_cache, tmp_path):
    """The pool commands hold one autocast block around the whole command, and autocast keeps its
    bf16 casts of the weights until the outermost block ends: the loop must drop them after each
    optimiser step, or every later forward runs on the weights as they were (the policy then never
    moves in its own rollouts while its saved weights drift). So the same run inside such a block
    and outside it are the same run, step for step."""
    steps = ["max_steps=4", "mixed_precision=bf16"]
    train_entry_main(["sft", str(tmp_path / "alone"), *steps])
    with hardware.autocast("bf16", "cpu"):
        train_entry_main(["sft", str(tmp_path / "inside"), *steps])
    alone, inside = _metrics(tmp_path / "alone"), _metrics(tmp_path / "inside")
    assert len(alone) == len(inside) == 4
    assert [m["loss"] for m in inside] == pytest.approx([m["loss"] for m in alone], rel=1e-6)


def test_gradient_checkpointing_is_on_and_changes_no_loss(model_cache, tmp_path, monkeypatch):
    """Recomputing activations gives the same gradients: the same losses, step by step. (The
    run's models are caught as the loop enables checkpointing on them.)"""
    from rlhflab.train import loop

    enabled = []
    original = loop.enable_gradient_checkpointing

    def spy(modules):
        original(modules)
        enabled.extend(any(getattr(s, "gradient_checkpointing", False) for s in m.modules()) for m in modules.values())

    monkeypatch.setattr(loop, "enable_gradient_checkpointing", spy)
    for kind in ("sft", "reward"):
        train_entry_main([kind, str(tmp_path / "plain" / kind), "max_steps=3"])
        train_entry_main([kind, str(tmp_path / "ckpt" / kind), "max_steps=3", "gradient_checkpointing=true"])
        plain, ckpt = _metrics(tmp_path / "plain" / kind), _metrics(tmp_path / "ckpt" / kind)
        assert [r["loss"] for r in ckpt] == pytest.approx([r["loss"] for r in plain], rel=1e-5, abs=1e-6)
    assert enabled == [True, True]


def test_gradient_checkpointing_keeps_shared_prompts_exact(model_cache):
    """Rows sharing a prompt normally reuse its key/value cache, which checkpointing would drop;
    the logits must still equal a full forward pass."""
    from rlhflab.models import load_policy
    from rlhflab.sampling.rollout import completion_logits, join_prompt_completion
    from rlhflab.train import loop

    policy, _ = load_policy("tiny-policy")
    batch = join_prompt_completion([[5, 6, 7], [5, 6, 7]], [[8, 9], [10, 11, 12]], pad_id=0)
    policy.train()
    reference, _ = completion_logits(policy, batch)
    loop.enable_gradient_checkpointing({"policy": policy})
    checkpointed, _ = completion_logits(policy, batch)
    torch.testing.assert_close(checkpointed, reference)
