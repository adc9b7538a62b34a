"""How fast this machine multiplies matrices: the yardstick for reading wall times.

Training and sampling a 135M-parameter model on a CPU is bound by matrix products, so a run's wall
time scales with the fp32 matmul rate; `rlhflab demo` and the benchmarks print it beside their
times so a reader on another machine can scale them. The same measurement, in bf16 against fp32,
is how ``--mixed_precision auto`` decides whether this device gains from bf16 autocast.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time

import torch

from rlhflab.errors import ConfigError


def matmul_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 10) -> dict:
    """Median and best GFLOP/s of an n×n @ n×n product (2n³ FLOPs), n = 2048 on a CPU and 8192 on an
    accelerator (which needs a bigger product to reach its peak). One untimed product warms up."""
    n = 2048 if device == "cpu" else 8192

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    flops = 2 * n**3
    return {"gflops_median": flops / statistics.median(times) / 1e9, "gflops_best": flops / min(times) / 1e9}


# ---- mixed precision ---------------------------------------------------------------------------
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
# bf16 must beat fp32 by this factor for `auto` to take it: a ratio within timing noise of 1 keeps
# the exact path.
AUTO_BF16_MIN_SPEEDUP = 1.15
_SPEEDUP_CACHE: dict[str, float] = {}


def bf16_matmul_speedup(device_type: str = "cpu") -> float:
    """How many times faster a bf16 matmul runs than an fp32 one on this device: the best of a
    few alternating 1024² (CPU) or 4096² (accelerator) products each, ~0.1-0.5 s in all, measured
    once per process and device type (on a CPU a 256² probe first: where it shows bf16 more than 2x
    slower, as where bf16 is emulated, that ratio is the answer and the long products are skipped). Above 1 on AMX / AVX512-BF16 CPUs and on Ampere-or-later
    GPUs; below 1 on AVX2-only CPUs, where bf16 is emulated."""
    if device_type not in _SPEEDUP_CACHE and device_type == "cpu":
        # A 256² probe first: where bf16 is emulated (AVX2) a 1024² bf16 product takes seconds, and a
        # probe already shows it several times slower than fp32; that answer is enough.
        probe = _best_seconds(256, device_type, repeats=2)
        if probe[torch.bfloat16] > 2 * probe[torch.float32]:
            _SPEEDUP_CACHE[device_type] = probe[torch.float32] / probe[torch.bfloat16]
    if device_type not in _SPEEDUP_CACHE:
        best = _best_seconds(1024 if device_type == "cpu" else 4096, device_type, repeats=5)
        _SPEEDUP_CACHE[device_type] = best[torch.float32] / best[torch.bfloat16]
    return _SPEEDUP_CACHE[device_type]


def _best_seconds(n: int, device_type: str, repeats: int) -> dict:
    """The fastest of ``repeats`` alternating n² products in fp32 and in bf16, after a warm-up each."""
    best = {torch.float32: math.inf, torch.bfloat16: math.inf}
    operands = {dt: (torch.randn(n, n, device=device_type, dtype=dt),) * 2 for dt in best}
    for a, b in operands.values():
        a @ b  # warm-up: kernel selection, packing buffers
    for _ in range(repeats):
        for dt, (a, b) in operands.items():
            _sync(device_type)
            t0 = time.perf_counter()
            a @ b
            _sync(device_type)
            best[dt] = min(best[dt], time.perf_counter() - t0)
    return best


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def resolve_mixed_precision(requested: str | None, device_type: str, announce: bool = True) -> str:
    """The autocast precision a run uses: ``no``, ``bf16`` or ``fp16``.

    ``requested`` None means "not given": accelerate's own launch setting (``accelerate launch
    --mixed_precision X`` or its config file, passed as ACCELERATE_MIXED_PRECISION), else ``no``.
    ``auto`` takes bf16 where :func:`bf16_matmul_speedup` measures it at least
    ``AUTO_BF16_MIN_SPEEDUP`` times faster, and (``announce``) prints one line saying what it chose
    and the measured ratio. fp16 needs a CUDA device (accelerate runs no fp16 autocast or loss
    scaling on a CPU: it would silently train in fp32), so on a CPU it is a ConfigError. An explicit
    bf16 on a CPU where bf16 measures slower than fp32 is honoured with a one-line warning."""
    source = "--mixed_precision"
    if requested is None:
        requested = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        source = "accelerate launch --mixed_precision (ACCELERATE_MIXED_PRECISION)"
    if requested not in MIXED_PRECISIONS:
        raise ConfigError(f"{source} {requested}: unsupported; choose from {', '.join(MIXED_PRECISIONS)}")
    if requested == "fp16" and device_type != "cuda":
        raise ConfigError(
            f"{source} fp16: needs a CUDA GPU (accelerate has no fp16 autocast or loss scaling on {device_type}); "
            "use bf16 or auto"
        )
    if requested == "bf16" and announce and device_type == "cpu":
        # Honoured, but not silently: on an AVX2-only CPU bf16 is emulated, a matmul 10-100x slower.
        ratio = bf16_matmul_speedup(device_type)
        if ratio < 1:
            print(
                f"{source} bf16: running bf16 autocast as asked, though a bf16 matmul ran {ratio:.2f}x as fast as "
                f"fp32 on this cpu (auto would choose fp32)",
                file=sys.stderr,
            )
    if requested != "auto":
        return requested
    ratio = bf16_matmul_speedup(device_type)
    chosen = "bf16" if ratio >= AUTO_BF16_MIN_SPEEDUP else "no"
    if announce:
        verdict = "bf16 autocast" if chosen == "bf16" else f"fp32 (bf16 not {AUTO_BF16_MIN_SPEEDUP}x faster)"
        print(
            f"mixed_precision auto: {verdict}; a bf16 matmul ran {ratio:.2f}x as fast as fp32 on this {device_type}",
            file=sys.stderr,
        )
    return chosen


def autocast(mixed_precision: str, device_type: str):
    """The autocast context of a resolved precision (``no``: none), for work outside the training
    loop (evaluation, best-of-n scoring) that should compute as the run trained. Inside
    :func:`rlhflab.train.loop.train` the loop enters accelerate's own ``accelerator.autocast()``."""
    if mixed_precision == "no":
        # explicitly off, so that fp32 work (a reward model) stays fp32 inside a command-wide autocast
        return torch.autocast(device_type=device_type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
    return torch.autocast(device_type=device_type, dtype=dtype)


def model_autocast(requested: str | None, model: torch.nn.Module):
    """The autocast context for sampling and scoring ``model`` outside the training loop (``eval``,
    ``bon``, ``rad``), ``requested`` resolved as a training run resolves it (:func:`resolve_mixed_precision`)."""
    device_type = next(model.parameters()).device.type
    return autocast(resolve_mixed_precision(requested, device_type), device_type)


# ---- sharded weights ---------------------------------------------------------------------------
@contextlib.contextmanager
def gathered_parameters(model: torch.nn.Module):
    """The full weights of an FSDP2-sharded ``model`` while the block runs (one all-gather per
    sharded unit, on every process together), resharded after; nothing for an unsharded model.
    For code that reads weights outside the module's own forward (the lean sampling engine, the
    final save): FSDP's hooks gather a unit's weights only around its forward."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)
