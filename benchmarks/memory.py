"""Gradient checkpointing's memory saving on SmolLM2-135M, measured beside ``rlhflab memory``'s estimate:
``python benchmarks/memory.py [--rows 8] [--tokens 256] [--mixed_precision no|bf16]``.

One SFT training step (8 rows x 256 tokens: a 32-token prompt and a 224-token completion each,
completion-only loss, forward under the run's autocast, backward, gradient clipping, fused AdamW)
as rlhflab's loop runs it, with and without ``gradient_checkpointing``, each in a child process
forked from this one after the imports (benchmarks/run.py's ``in_child``). Per configuration:

- saved-activation bytes: the unique storages autograd saves in the step's forward
  (:class:`rlhflab.train.memory.SavedTensorBytes`), beside the estimator's count of the same;
- peak RSS: the child's VmHWM. The child first runs one warm-up step (AdamW's state now exists),
  then resets the high-water mark (``/proc/self/clear_refs``) and runs the measured step, so
  "step peak" is what the step adds over the resident weights and AdamW state (gradients,
  activations, logits, autocast copies), beside the estimator's sum of those components; glibc is
  told to hand freed memory straight back (mallopt), so RSS follows live tensors. "process peak" is
  the child's whole peak over its starting RSS (libraries), beside the estimator's total;
- step time: the measured step's wall time (the machine may be shared; the figures are one step each).

Writes benchmarks/results/memory.md.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from run import _status, in_child  # noqa: E402

from rlhflab.losses import sft_loss  # noqa: E402
from rlhflab.models import load_policy  # noqa: E402
from rlhflab.sampling.rollout import completion_logprobs, join_prompt_completion  # noqa: E402
from rlhflab.train.loop import enable_gradient_checkpointing, make_optimizer  # noqa: E402
from rlhflab.train.memory import (  # noqa: E402
    GIB,
    MemoryRequest,
    SavedTensorBytes,
    estimate_memory,
    model_shape,
    saved_for_backward_bytes,
)
from rlhflab.train.offline import SFTConfig  # noqa: E402

POLICY = "smollm2-135m-instruct"
PROMPT_TOKENS = 32
M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1  # glibc mallopt parameters
STATE = ("weights (fp32)", "AdamW moments + step (fp32)", "frozen models (fp32: reference, reward model)")


def _batch(rows: int, tokens: int, vocab: int):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (rows, tokens), generator=generator).tolist()
    return join_prompt_completion([r[:PROMPT_TOKENS] for r in ids], [r[PROMPT_TOKENS:] for r in ids], pad_id=0)


def _step(model, optimizer, batch, mixed_precision: str, saved: SavedTensorBytes | None = None) -> float:
    """One optimiser step as the loop takes it; its wall seconds."""
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if mixed_precision == "bf16"
        else torch.autocast("cpu", enabled=False)
    )
    t0 = time.perf_counter()
    with saved or torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t), autocast:
        loss = sft_loss(completion_logprobs(model, batch), batch.completion_mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def measure(checkpointing: bool, rows: int, tokens: int, mixed_precision: str) -> dict:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)  # large blocks mmapped, so freeing them returns the pages
    libc.mallopt(M_TRIM_THRESHOLD, 64 * 1024)
    model, _ = load_policy(POLICY)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    if checkpointing:
        enable_gradient_checkpointing({"policy": model})
    config = SFTConfig(policy=POLICY, gradient_checkpointing=checkpointing)
    optimizer, _ = make_optimizer(config, {"policy": model}, total_steps=2)
    batch = _batch(rows, tokens, model.config.vocab_size)
    _step(model, optimizer, batch, mixed_precision)  # warm-up: AdamW state now exists
    resident = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    saved = SavedTensorBytes(exclude=model)
    seconds = _step(model, optimizer, batch, mixed_precision, saved)
    return {
        "params": params,
        "saved_bytes": saved.bytes,
        "step_peak_mb": _status("VmHWM") - resident,
        "resident_mb": resident,
        "seconds": seconds,
        "completion_tokens": batch.num_completion_tokens,
    }


def estimate(checkpointing: bool, rows: int, tokens: int, completion: int, mixed_precision: str) -> dict:
    request = MemoryRequest(
        POLICY,
        batch_size=rows,
        max_length=tokens,
        completion_length=completion,
        mixed_precision=mixed_precision,
        gradient_checkpointing=checkpointing,
    )
    e = estimate_memory(request)
    saved = saved_for_backward_bytes(model_shape(POLICY), rows, tokens, completion + 1, mixed_precision, checkpointing)
    step = sum(v for k, v in e.components.items() if k not in STATE)
    return {"saved_bytes": saved, "step_bytes": step, "total_bytes": e.total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--output", default=str(HERE / "results" / "memory.md"))
    args = parser.parse_args()
    mib = 2**20
    rows = []
    for checkpointing in (False, True):
        got = in_child(measure, checkpointing, args.rows, args.tokens, args.mixed_precision)
        if "error" in got:
            raise SystemExit(got["error"])
        est = estimate(checkpointing, args.rows, args.tokens, got["completion_tokens"], args.mixed_precision)
        rows.append((checkpointing, got, est))
    params, shape_params = rows[0][1]["params"], model_shape(POLICY).causal_lm_params
    lines = [
        f"# Gradient checkpointing on {POLICY}: measured beside `rlhflab memory`",
        "",
        f"`python benchmarks/memory.py --rows {args.rows} --tokens {args.tokens} --mixed_precision "
        f"{args.mixed_precision}`: one SFT step, {args.rows} rows x {args.tokens} tokens ({PROMPT_TOKENS}-token "
        f"prompt, {rows[0][1]['completion_tokens']}-token completion), fp32 weights and AdamW, "
        f"mixed_precision {args.mixed_precision}, torch {torch.get_num_threads()} threads, on this CPU. "
        f"Parameters: {params:,} loaded, {shape_params:,} counted from the published config.",
        "",
        "| gradient_checkpointing | saved activations MiB (measured / estimated) | step peak RSS MiB "
        "(measured / estimated) | process peak RSS MiB (measured / estimated) | step s |",
        "|---|---:|---:|---:|---:|",
    ]
    for checkpointing, got, est in rows:
        process_peak = got["resident_mb"] + got["step_peak_mb"] - got["start_rss_mb"]
        lines.append(
            f"| {checkpointing} | {got['saved_bytes'] / mib:,.0f} / {est['saved_bytes'] / mib:,.0f} | "
            f"{got['step_peak_mb']:,.0f} / {est['step_bytes'] / mib:,.0f} | "
            f"{process_peak:,.0f} / {est['total_bytes'] / mib:,.0f} | {got['seconds']:.1f} |"
        )
    (off, on) = rows[0][1], rows[1][1]
    saved_ratio = off["saved_bytes"] / on["saved_bytes"]
    lines += [
        "",
        f"Checkpointing keeps {saved_ratio:.1f}x fewer saved bytes (estimated "
        f"{rows[0][2]['saved_bytes'] / rows[1][2]['saved_bytes']:.1f}x), cuts the step's peak by "
        f"{off['step_peak_mb'] - on['step_peak_mb']:,.0f} MiB (estimated "
        f"{(rows[0][2]['step_bytes'] - rows[1][2]['step_bytes']) / mib:,.0f} MiB) and costs "
        f"{on['seconds'] / off['seconds']:.2f}x the step time.",
        "",
        "Process peak = resident weights + AdamW state before the measured step, plus its step peak, "
        f"over the forked child's starting RSS; the estimate's total is in GiB {rows[0][2]['total_bytes'] / GIB:.2f} "
        f"/ {rows[1][2]['total_bytes'] / GIB:.2f}.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
