"""How fast this machine multiplies matrices: the yardstick for reading wall times.

Training and sampling a 135M-parameter model on a CPU is bound by matrix products, so a run's wall
time scales with the fp32 matmul rate; `rlhflab demo` and the benchmarks print it beside their
times so a reader on another machine can scale them.
"""

from __future__ import annotations

import statistics
import time

import torch


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
