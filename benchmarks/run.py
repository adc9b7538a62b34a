"""rlhflab against TRL, side by side in one run: ``python benchmarks/run.py [--quick]``.

Method (also written into the results):
- Every (case, framework, trial) runs in a child process forked from this one after torch,
  transformers, TRL and rlhflab are imported and before any tensor work, so each child starts from
  the same state. Trials are interleaved A/B/A/B (rlhflab, TRL, rlhflab, TRL, ...) so that drift in
  machine load hits both alike.
- A trial builds the trainer, trains ``1 + k`` optimiser steps and reports the wall time of each
  (end of one optimiser step to the end of the next); the first step is a warm-up and dropped.
- Peak RSS per trial is the child's VmHWM (peak resident set). A forked child starts with the
  parent's resident pages (the imported libraries, reported as ``start RSS``), as a fresh process
  would after the same imports; peak minus start is what the trial itself added.
- Precision: ``--mixed_precision auto`` (the default) is resolved once, before any case, by
  rlhflab's own ``resolve_mixed_precision`` (a bf16 against an fp32 matmul; bf16 where it is at
  least 1.15x faster). Under bf16, rlhflab runs every case with ``mixed_precision="bf16"`` (bf16
  autocast over fp32 weights and AdamW state) and TRL with ``bf16=True`` (accelerate's bf16
  autocast over fp32 weights, on a CPU too with ``use_cpu=True``); otherwise both run fp32. A
  forward hook on each model's first attention projection and its output head records the dtype
  its matmuls actually produced in every trial, so the table states what ran, not what a flag
  promised. rlhflab's reward model is also run in fp32 (``reward (rlhflab fp32 RM)``), as its pool
  commands train it. Generation: ``model.generate`` and rlhflab's engine under the same autocast.
- Executed FLOP/s: the model FLOPs each framework executes in a step (2 x body parameters per
  token and 2 x LM-head size per position that needs logits, per forward; 3x for forward +
  backward; attention 4 x layers x d per query-key pair; rlhflab's DPO and reward model count each
  pair's prompt once, and its engine each prompt's prefill once, as they compute them once;
  rollouts counted at their measured mean completion length), divided by the median step time, as
  a fraction of the matmul peak (2048 x 2048 @ 2048 x 2048) in the precision the cases ran in,
  measured in this same run before and after the cases (the fp32 peak is shown beside it).
- torch uses 2 threads everywhere. The machine may be shared with other work: its load average
  at the start and end is in the header; the interleaving is what keeps the ratios fair.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

THREADS = 2

# Figures quoted in the issue (TRL 1.16 on this machine, s/step) and the targets (speed-up over TRL).
QUOTED = {
    "sft": None,
    "reward": 10.7,
    "dpo": 27.0,
    "dpo_precompute": 19.9,
    "rloo": 16.1,
    "grpo": 14.2,
    "ppo_1_epoch": 20.6,
    "ppo_4_epochs": 50.5,
}
# Issue X item 3: >= 2x TRL on every training case, engine >= 3x generate at 8 rows as at 64, and
# every case >= 60% of the matmul peak of the precision it runs in.
TARGETS = {
    "training": 2.0,
    "generation": 3.0,
    "flop_fraction": 0.6,
}


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB
    return float("nan")


def in_child(fn, *args, log=None) -> dict:
    """Run ``fn(*args)`` in a forked child; return its dict plus the child's RSS figures."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        code = 0
        try:
            if log is not None:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            import torch

            torch.set_num_threads(THREADS)
            start = _status("VmRSS")
            result = fn(*args)
            result["start_rss_mb"] = start
            result["peak_rss_mb"] = _status("VmHWM")
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        except BaseException:  # noqa: BLE001 - reported to the parent
            result = {"error": traceback.format_exc()[-3000:]}
            code = 1
        with os.fdopen(write, "wb") as f:
            f.write(json.dumps(result, default=str).encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        return {"error": f"child died without a result ({len(data)} bytes)"}


def matmul_peak(dtype: str) -> dict:
    import torch
    from cases import DEVICE

    from rlhflab.hardware import matmul_peak as measure

    return measure(DEVICE, getattr(torch, dtype))


def contention_probe() -> dict:
    """Median ms of one small elementwise op (a (8, 128, 576) bf16 cast and product, the size of
    an activation of the SFT case) at the benchmark's thread count and at one thread. On an idle
    machine they are close; where other work holds the CPUs, each parallel region waits at its
    barrier for a descheduled thread and the multi-threaded figure grows by orders of magnitude,
    and every small op of every case with it (measured here at load ~10: 80 ms against 0.12 ms)."""
    import torch

    x = torch.randn(8, 128, 576)
    out = {}
    for threads in (THREADS, 1):
        torch.set_num_threads(threads)
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            x.to(torch.bfloat16)
            x * x
            times.append(time.perf_counter() - t0)
        out[f"ms_{threads}_threads"] = statistics.median(times) * 1e3
    torch.set_num_threads(THREADS)
    return out


def resolve_precision(requested: str, device: str) -> dict:
    """rlhflab's own resolution of ``requested`` (``auto`` measures bf16 against fp32), run in a
    child so that the parent does no tensor work before forking."""
    import torch

    from rlhflab.hardware import AUTO_BF16_MIN_SPEEDUP, bf16_matmul_speedup, resolve_mixed_precision

    device_type = torch.device(device).type
    chosen = resolve_mixed_precision(requested, device_type, announce=False)
    ratio = bf16_matmul_speedup(device_type) if requested == "auto" else None  # cached: the one auto used
    return {"requested": requested, "chosen": chosen, "bf16_speedup": ratio, "threshold": AUTO_BF16_MIN_SPEEDUP}


# ---- FLOP counts ---------------------------------------------------------------------------------
def _dims():
    from transformers import AutoConfig

    from rlhflab.models.registry import resolve_model

    c = AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct"))
    head_dim = c.hidden_size // c.num_attention_heads
    per_layer = (
        2 * c.hidden_size * c.hidden_size
        + 2 * c.hidden_size * c.num_key_value_heads * head_dim
        + 3 * c.hidden_size * c.intermediate_size
    )
    return {
        "layers": c.num_hidden_layers,
        "d": c.hidden_size,
        "body": c.num_hidden_layers * per_layer,
        "vocab": c.vocab_size,
    }


def forward_flops(dims, rows: int, length: int, head_positions: int) -> float:
    attention = 4 * dims["layers"] * length * length * dims["d"]
    return rows * (2 * dims["body"] * length + 2 * dims["d"] * dims["vocab"] * head_positions + attention)


def decode_flops(dims, rows: int, context: int, new: int) -> float:
    """``new`` one-token decode steps per row after ``context`` tokens: body and LM head at one
    position each, attending over everything before it."""
    attention = 4 * dims["layers"] * dims["d"] * (context * new + new * (new + 1) / 2)
    return rows * (new * (2 * dims["body"] + 2 * dims["d"] * dims["vocab"]) + attention)


def rollout_flops(dims, prompts: int, samples: int, prompt_tokens: int, new: float, shared_prefill: bool) -> float:
    """Sampling ``samples`` completions of ``new`` tokens for each prompt: the prefill (logits at
    its last position give the first token; once per prompt with ``shared_prefill``, as rlhflab's
    engine computes it, else once per row as ``generate`` does) and ``new - 1`` decode steps."""
    prefill_rows = prompts if shared_prefill else prompts * samples
    return forward_flops(dims, prefill_rows, prompt_tokens, 1) + decode_flops(
        dims, prompts * samples, prompt_tokens, max(new - 1, 0)
    )


def mean_completion(summary: dict, default: float) -> float:
    lengths = [x for x in summary.get("completion_length") or [] if x is not None]
    return statistics.median(lengths) if lengths else default


def step_flops(case: str, name: str, summary: dict | None = None) -> float | None:
    """Model FLOPs of one optimiser step of ``case`` as runner ``name`` executes it."""
    from workloads import SETTINGS

    if case in ("rloo", "grpo"):
        s = SETTINGS["rl"]
        T = mean_completion(summary or {}, s["new_tokens"])
        dims, rows, length = _dims(), s["prompts"] * s["generations"], s["prompt_tokens"] + T
        rollout = rollout_flops(dims, s["prompts"], s["generations"], s["prompt_tokens"], T, name == "rlhflab")
        # a frozen-reference forward, then the policy's forward + backward, logits at the T completion positions
        return rollout + 4 * forward_flops(dims, rows, length, T)
    return training_flops(case, shared_prompt=name.startswith("rlhflab") and case in ("dpo", "reward"))


def ppo_flops(epochs: int, summary: dict) -> float:
    """One PPO update of the rlhflab case: rollout (8 prompts, one sample each), reference forward,
    reward-model forward, the old policy and value forwards (only with more than one epoch; one
    epoch takes them from the update's own pass), and per epoch the policy's and the separate value
    model's forward + backward (the value model: the trunk without the LM head)."""
    from workloads import SETTINGS

    s, dims = SETTINGS["ppo"], _dims()
    T = mean_completion(summary, s["new_tokens"])
    rows, length = s["prompts"], s["prompt_tokens"] + T
    policy, trunk = forward_flops(dims, rows, length, T), forward_flops(dims, rows, length, 0)
    old = (policy + trunk) if epochs > 1 else 0.0
    return (
        rollout_flops(dims, rows, 1, s["prompt_tokens"], T, True) + policy + trunk + old + epochs * 3 * (policy + trunk)
    )


def generation_flops(g: dict, engine: bool) -> float:
    """One rollout set of the generation benchmark; prompts counted at the longest prompt's length
    (both left-pad to it)."""
    return rollout_flops(
        _dims(), g["prompts"], g["samples_per_prompt"], max(g["prompt_tokens"]), g["new_tokens"], engine
    )


def training_flops(case: str, shared_prompt: bool = False) -> float | None:
    """Model FLOPs of one training step (forward + backward = 3 x forward). With
    ``shared_prompt`` the pair's prompt is counted once (what rlhflab's DPO and reward model
    execute); without it, once per row (what TRL executes, and the standard count)."""
    from workloads import SETTINGS

    dims = _dims()
    if case == "sft":
        s = SETTINGS["sft"]
        n = s["prompt_tokens"] + s["completion_tokens"] + 1
        return 3 * forward_flops(dims, s["batch"], n, s["completion_tokens"] + 1)
    if case in ("dpo", "reward"):
        s = SETTINGS["pairs"]
        P, C = s["prompt_tokens"], s["completion_tokens"] + 1
        heads = C if case == "dpo" else 0
        if not shared_prompt:
            return 3 * forward_flops(dims, 2 * s["batch"], P + C, heads)
        # Prompt once per pair; each completion token attends over prompt + completion.
        prompt = forward_flops(dims, s["batch"], P, 0)
        completions = (
            2
            * s["batch"]
            * (
                2 * dims["body"] * C
                + 2 * dims["d"] * dims["vocab"] * heads
                + 4 * dims["layers"] * C * (P + C) * dims["d"]
            )
        )
        return 3 * (prompt + completions)
    return None


# ---- statistics and report -----------------------------------------------------------------------
def summarize(trials: list[dict]) -> dict:
    errors = [t["error"] for t in trials if "error" in t]
    good = [t for t in trials if "error" not in t]
    steps = [x for t in good for x in t["step_times"][1:]]
    out = {"trials": len(trials), "errors": errors, "steps": steps}
    if steps:
        out.update({"median": statistics.median(steps), "min": min(steps), "max": max(steps)})
    if good:
        out["peak_rss_mb"] = max(t["peak_rss_mb"] for t in good)
        out["start_rss_mb"] = min(t["start_rss_mb"] for t in good)
        for key in ("tokens_per_row", "reference", "setup_reference_seconds", "completion_length"):
            if key in good[0]:
                out[key] = good[0][key]
        if "metrics" in good[0]:
            out["last_metrics"] = good[-1]["metrics"][-1] if good[-1]["metrics"] else {}
        out["activation_dtypes"] = {k: v for t in good for k, v in t.get("activation_dtypes", {}).items()}
        if "trl_mixed_precision" in good[0]:
            out["trl_mixed_precision"] = good[0]["trl_mixed_precision"]
    return out


def _fmt(s: dict) -> str:
    if "median" not in s:
        return "failed"
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def _mark(value: float | None, target: float) -> str:
    return "" if value is None else (" ✅" if value >= target else " ❌")


def _precision_words(results: dict) -> str:
    p = results["precision"]
    label = "bf16" if p["chosen"] == "bf16" else "fp32"
    if p.get("bf16_speedup") is None:
        why = f"--mixed_precision {p['requested']} given"
    else:
        why = (
            f"rlhflab's resolve_mixed_precision('auto') measured a bf16 matmul {p['bf16_speedup']:.2f}× as fast as "
            f"fp32 (threshold {p['threshold']}×)"
        )
    if label == "bf16":
        return f"**bf16 beside bf16**: {why}, so rlhflab runs mixed_precision=bf16 and TRL bf16=True"
    return f"**fp32 beside fp32**: {why}, so both run fp32"


def _dtypes_line(results: dict) -> str:
    """What the forward hooks saw: the dtype of layer 0's q_proj output while training, per runner."""
    seen: dict[str, set] = {}
    for row in results["cases"].values():
        for name, summary in row.items():
            if isinstance(summary, dict) and "activation_dtypes" in summary:
                framework = "TRL" if name.startswith("trl") else name.replace("rlhflab", "rlhflab").replace("_", " ")
                train = summary["activation_dtypes"].get("layer0.q_proj train")
                if train:
                    seen.setdefault(framework, set()).add(train)
    parts = [f"{k}: {', '.join(sorted(v))}" for k, v in sorted(seen.items())]
    return "; ".join(parts) if parts else "not recorded"


def render_markdown(results: dict) -> str:
    peak = results["matmul_peak_gflops"]
    fp32_peak = results.get("fp32_matmul_peak_gflops", peak)
    used = results.get("peak_dtype", results["dtype"])
    label = "bf16" if used == "bfloat16" else "fp32"
    load = results.get("load_average", {})
    lines = [
        "# rlhflab vs TRL — side-by-side benchmark",
        "",
        f"{results['machine']}; torch {results['versions']['torch']}, transformers {results['versions']['transformers']}, "
        f"TRL {results['versions']['trl']}; {THREADS} threads; SmolLM2-135M-Instruct, {results['dtype']} weights on "
        f"{results['device']}, no gradient checkpointing. "
        f"Mode: {results['mode']} ({results['trials']} trial(s) per framework, {results['steps']} steps per trial, "
        "the first a dropped warm-up); trials interleaved A/B/A/B. Seconds per optimiser step: median (min–max). "
        f"Whole suite: {results['wall_seconds'] / 60:.1f} min.",
        "",
        f"Precision: {_precision_words(results)}. Matmul peak measured in this run (best of the before/after "
        f"medians): {label} {peak:.1f} GFLOP/s"
        + (f", fp32 {fp32_peak:.1f} GFLOP/s" if label == "bf16" else "")
        + ". Dtype of layer 0's q_proj output while training, seen by a forward hook in every trial: "
        f"{_dtypes_line(results)}.",
        "",
        f"Machine load: 1-minute load average {load.get('start', float('nan')):.2f} at the start, "
        f"{load.get('end', float('nan')):.2f} at the end, on {results['machine'].split()[1]} CPUs shared with other "
        "work; the A/B interleaving exposes both frameworks to the same load, but load slows small ops far more than "
        "matmuls (see the contention note), so under heavy load ratios favour whichever framework issues fewer ops, "
        "and absolute times and %-of-peak are lower bounds.",
    ]
    probe = results.get("contention", {})
    if probe.get("start") and "error" not in probe["start"]:
        parts = [
            f"{when} {p[f'ms_{THREADS}_threads']:.2f} ms at {THREADS} threads vs {p['ms_1_threads']:.2f} ms at 1"
            for when, p in probe.items()
            if p and "error" not in p
        ]
        worst = _contention_slowdown(results)
        lines[-1] += (
            " Contention probe (a (8, 128, 576) cast + product): "
            + "; ".join(parts)
            + (
                f" — {worst:.0f}× slower multi-threaded: the CPUs are oversubscribed, every small op waits at "
                "OpenMP barriers, and these figures measure the machine's contention more than either framework."
                if _contended(results)
                else "."
            )
        )
    for other in results.get("merged_runs", []):
        lines[-1] += (
            f" Rows {', '.join(other['cases'])} come from a second run of the same command with only those cases "
            f"({other['wall_seconds'] / 60:.1f} min, load {other['load_average'].get('start', float('nan')):.2f} → "
            f"{other['load_average'].get('end', float('nan')):.2f}, {label} peak {other['matmul_peak_gflops']:.1f} "
            "GFLOP/s, against which their %-of-peak is taken), each of its rows still an interleaved A/B pair."
        )
    lines += [
        "",
        f"Targets (issue X item 3): ≥ {TARGETS['training']}× TRL on every training case, ≥ {TARGETS['generation']}× "
        f"`generate` at 8 rows as at 64, every case ≥ {TARGETS['flop_fraction']:.0%} of the {label} matmul peak.",
        "",
        f"| case | settings | rlhflab s/step | TRL s/step | rlhflab/TRL | speed-up (≥ {TARGETS['training']}×) | "
        f"peak RSS MB rlhflab / TRL | executed FLOP/s, % of {label} peak: rlhflab / TRL (rlhflab ≥ "
        f"{TARGETS['flop_fraction']:.0%}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    misses: list[tuple[str, str]] = []
    for row in results["cases"].values():
        for ours, theirs, case_label in row["comparisons"]:
            a, b = row[ours], row[theirs]
            ratio = a["median"] / b["median"] if "median" in a and "median" in b else None
            if not ratio:
                lines.append(f"| {case_label} | {row['settings']} | {_fmt(a)} | {_fmt(b)} | — | — | — | — |")
                continue
            flops = row.get("flops") or {}
            row_peak = row.get("peak_gflops", peak)  # a merged row keeps its own run's peak
            frac_a = flops[ours] / a["median"] / 1e9 / row_peak if flops.get(ours) else None
            frac_b = flops[theirs] / b["median"] / 1e9 / row_peak if flops.get(theirs) else None
            frac = f"{frac_a:.0%}{_mark(frac_a, TARGETS['flop_fraction'])} / {frac_b:.0%}" if frac_a else "—"
            speed = 1 / ratio
            if speed < TARGETS["training"]:
                detail = ""
                if frac_b and flops.get(ours):
                    # The most rlhflab could gain: TRL's work over rlhflab's, run at the whole peak.
                    work = flops[theirs] / flops[ours]
                    detail = (
                        f"TRL executes {work:.2f}× rlhflab's FLOPs here and ran at {frac_b:.0%} of the peak, so even "
                        f"at 100% of the peak rlhflab would be at most {work / frac_b:.2f}× faster"
                        + (
                            f" (at the {TARGETS['flop_fraction']:.0%} target: {work * TARGETS['flop_fraction'] / frac_b:.2f}×). "
                            if work * TARGETS["flop_fraction"] / frac_b < TARGETS["training"]
                            else ". "
                        )
                    )
                misses.append((case_label, "speed-up", detail))
            if frac_a is not None and frac_a < TARGETS["flop_fraction"]:
                misses.append((case_label, "peak", ""))
            lines.append(
                f"| {case_label} | {row['settings']} | {_fmt(a)} | {_fmt(b)} | {ratio:.2f} | "
                f"{speed:.2f}×{_mark(speed, TARGETS['training'])} | "
                f"{a.get('peak_rss_mb', float('nan')):.0f} / {b.get('peak_rss_mb', float('nan')):.0f} | {frac} |"
            )
    gen = results.get("generation")
    if gen and "generation" in gen:
        lines += [
            "",
            "## Generation: new tokens/s producing one set of rollouts",
            "",
            "`model.generate` in calls of 8 rows (a prompt's samples via `num_return_sequences`) against "
            "rlhflab's engine as the trainers call it (rows per call below; shared prompt prefill, lean decode "
            f"step), both under the run's precision ({label}); EOS ignored by both, so both produce exactly "
            f"rows × new tokens. Target: ≥ {TARGETS['generation']}× generate at 8 rows as at 64, and "
            f"≥ {TARGETS['flop_fraction']:.0%} of the {label} peak.",
            "",
            "| rollouts (prompts × samples) | new tokens | generate rows/call | tok/s | engine rows/call | tok/s | "
            f"speed-up | executed FLOP/s, % of {label} peak: engine / generate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for g in gen["generation"]:
            hf_s, me_s = statistics.median(g["seconds"]["generate"]), statistics.median(g["seconds"]["rlhflab"])
            hf, me = g["tokens"]["generate"] / hf_s, g["tokens"]["rlhflab"] / me_s
            same = g["engine_batch"] == g["generate_batch"]
            gen_peak = gen.get("peak_gflops", peak)
            frac_me = generation_flops(g, engine=True) / me_s / 1e9 / gen_peak
            frac_hf = generation_flops(g, engine=False) / hf_s / 1e9 / gen_peak
            case_label = (
                f"generation {g['rows']} rows ({g['prompts']} × {g['samples_per_prompt']}, {g['new_tokens']} tokens)"
            )
            if me / hf < TARGETS["generation"]:
                misses.append((case_label, "speed-up", ""))
            if frac_me < TARGETS["flop_fraction"]:
                misses.append((case_label, "peak", ""))
            lines.append(
                f"| {g['rows']} ({g['prompts']} × {g['samples_per_prompt']}) | {g['new_tokens']} | "
                f"{g['generate_batch']} | {hf:.1f} | {g['engine_batch']}{' (same batch)' if same else ''} | "
                f"{me:.1f} | {me / hf:.2f}×{_mark(me / hf, TARGETS['generation'])} | "
                f"{frac_me:.0%}{_mark(frac_me, TARGETS['flop_fraction'])} / {frac_hf:.0%} |"
            )
        lines.append(f"\nPeak RSS of the generation child: {gen.get('peak_rss_mb', 0):.0f} MB.")
    ppo = results.get("ppo")
    if ppo:
        lines += [
            "",
            "## PPO (rlhflab only; TRL's PPOTrainer was removed — compared with the fp32 figures quoted in the issue)",
            "",
            f"8 prompts × 32 new tokens; policy + separate value model + frozen reference + 135M reward model "
            f"(the reward model scores in fp32 under any autocast); rlhflab in {label}.",
            "",
            "| epochs | rlhflab s/update | generate | policy fwd | critic fwd | reference fwd | score | update | "
            f"TRL fp32 (quoted) | speed-up | % of {label} peak | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in ppo.items():
            if "median" not in s:
                lines.append(f"| {name} | failed | | | | | | | | | | |")
                continue
            m = s.get("stage_medians", {})
            quoted = QUOTED["ppo_1_epoch" if s["epochs"] == 1 else "ppo_4_epochs"]
            speed = quoted / s["median"]
            frac = ppo_flops(s["epochs"], s) / s["median"] / 1e9 / s.get("peak_gflops", peak)
            case_label = f"ppo {s['epochs']} epoch(s)"
            if speed < TARGETS["training"]:
                misses.append((case_label, "speed-up", "compared with TRL's quoted fp32 figure, not a bf16 run. "))
            if frac < TARGETS["flop_fraction"]:
                misses.append((case_label, "peak", ""))
            lines.append(
                f"| {s['epochs']} | {_fmt(s)} | "
                + " | ".join(
                    f"{m[k]:.2f}" if k in m else "— (single pass)"
                    for k in (
                        "time_generate",
                        "time_policy_forward",
                        "time_critic_forward",
                        "time_reference_forward",
                        "time_score",
                        "time_update",
                    )
                )
                + f" | {quoted} | {speed:.2f}×{_mark(speed, TARGETS['training'])} | "
                f"{frac:.0%}{_mark(frac, TARGETS['flop_fraction'])} | {s.get('peak_rss_mb', 0):.0f} |"
            )
    lines += ["", "Reference-model handling: " + "; ".join(results.get("reference_handling", [])), ""]
    if misses:
        from bounds import NOTE, why_not_met

        lines += [
            "## Targets not met, and what bounds each",
            "",
            "Each line is measured (the command that measured it is named); `—` where nothing was measured.",
            "",
        ]
        reasons = [
            f"- {case_label} ({kind}): {detail}{why_not_met(case_label, kind, label, _contended(results))}"
            for case_label, kind, detail in misses
        ]
        lines += reasons
        if any("†" in r for r in reasons):
            lines += ["", NOTE]
        lines.append("")
    if results.get("errors"):
        lines += ["Errors:", ""] + [f"- {e}" for e in results["errors"]] + [""]
    lines += [f"Note: {n}" for n in results.get("notes", [])]
    return "\n".join(lines) + "\n"


def _contention_slowdown(results: dict) -> float | None:
    """How much slower the contention probe's small op ran multi-threaded than single-threaded, at the worse
    of the run's start and end; None without a probe."""
    probes = [p for p in results.get("contention", {}).values() if p and "error" not in p]
    return max(p[f"ms_{THREADS}_threads"] / p["ms_1_threads"] for p in probes) if probes else None


def _contended(results: dict) -> bool:
    """Whether the CPUs were oversubscribed (the probe over 3× slower multi-threaded); runs without a probe
    count as contended."""
    slowdown = _contention_slowdown(results)
    return slowdown is None or slowdown > 3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One trial of one warm-up + one measured step per case.")
    parser.add_argument("--cases", default="sft,reward,dpo,rloo,grpo,generation,ppo")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="Optimiser steps per trial (first dropped).")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--device", default="cpu", help="cpu (the reference setting) or cuda (benchmarks/gpu.sh).")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="Storage dtype of the weights."
    )
    parser.add_argument(
        "--mixed_precision",
        default="auto",
        choices=["auto", "no", "bf16"],
        help="Autocast precision of both frameworks (auto: rlhflab's resolver decides; ignored with --dtype bfloat16).",
    )
    parser.add_argument("--render", metavar="JSON", help="Only rewrite the Markdown table of an earlier results file.")
    parser.add_argument(
        "--merge",
        metavar="JSON",
        nargs="+",
        default=[],
        help="With --render: take these runs' cases (training rows, generation, PPO) into it, each row keeping "
        "its own run's peak; the header lists every run.",
    )
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        for other_path in args.merge:
            other = json.loads(Path(other_path).read_text())
            results.setdefault("merged_runs", []).append(
                {
                    "cases": list(other["cases"]) + [k for k in ("generation", "ppo") if other.get(k)],
                    "wall_seconds": other["wall_seconds"],
                    "load_average": other.get("load_average", {}),
                    "matmul_peak_gflops": other["matmul_peak_gflops"],
                    "precision": other.get("precision"),
                }
            )
            for case, row in other["cases"].items():
                results["cases"][case] = {**row, "peak_gflops": other["matmul_peak_gflops"]}
            for key in ("generation", "ppo"):
                if other.get(key):
                    results[key] = other[key]
            if other.get("ppo"):
                for s in results["ppo"].values():
                    s["peak_gflops"] = other["matmul_peak_gflops"]
            if other.get("generation"):
                results["generation"]["peak_gflops"] = other["matmul_peak_gflops"]
            results["errors"] = [e for e in results["errors"] if e.split("/")[0].split(":")[0] not in other["cases"]]
            results["errors"] = [e for e in results["errors"] if not e.startswith("ppo/") or not other.get("ppo")]
            results["errors"] += other["errors"]
        for case, row in results["cases"].items():
            row["flops"] = {name: step_flops(case, name, row[name]) for name in row["runners"]}
        Path(args.render).with_suffix(".md").write_text(render_markdown(results))
        Path(args.render).write_text(json.dumps(results, indent=1, default=str))
        print(render_markdown(results))
        return 0
    # Read by cases.py at import (below), so every forked child sees the same setting.
    os.environ["BENCH_DEVICE"], os.environ["BENCH_DTYPE"] = args.device, args.dtype
    trials = args.trials or (1 if args.quick else 2)
    steps = args.steps or (2 if args.quick else 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = str(out / "bench.log")
    Path(log).write_text("")
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]

    # Import everything the children need before forking (and do no tensor work here).
    import accelerate  # noqa: F401
    import cases
    import datasets  # noqa: F401
    import torch
    import transformers
    import trl
    from trl import DPOTrainer, GRPOTrainer, RewardTrainer, RLOOTrainer, SFTTrainer  # noqa: F401

    import rlhflab.sampling.generation  # noqa: F401
    import rlhflab.train.offline  # noqa: F401
    import rlhflab.train.policy_optimization  # noqa: F401
    import rlhflab.train.preference  # noqa: F401

    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    results: dict = {
        "mode": "quick" if args.quick else "full",
        "trials": trials,
        "steps": steps,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs" + ("" if args.device == "cpu" else f", {args.device}"),
        "device": args.device,
        "dtype": args.dtype,
        "load_average": {"start": load_start},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "method": __doc__,
        "cases": {},
        "errors": [],
        "reference_handling": [
            "DPO: rlhflab precomputes π_ref log-probs of the dataset once before step 0 and drops π_ref; TRL is run "
            "both ways (default: a reference forward every step; precompute_ref_log_probs=True: once before step 0); "
            "precompute time is excluded from step times and reported",
            "RLOO/GRPO (β=0.05): both keep a frozen copy of the policy and run it once per step on the sampled completions",
            "PPO: a frozen copy of the policy, run once per update",
        ],
    }

    def say(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    # bf16 storage (gpu.sh) is its own precision: no autocast on top (rlhflab refuses both at once).
    requested = "no" if args.dtype == "bfloat16" else args.mixed_precision
    precision = in_child(resolve_precision, requested, args.device, log=log)
    if "error" in precision:
        print(precision["error"], file=sys.stderr)
        return 1
    results["precision"] = precision
    results["contention"] = {"start": in_child(contention_probe, log=log)}
    os.environ["BENCH_MIXED_PRECISION"] = precision["chosen"]
    say(
        f"mixed precision {requested} -> {precision['chosen']}"
        + (
            f" (bf16 matmul {precision['bf16_speedup']:.2f}x fp32, threshold {precision['threshold']}x)"
            if precision["bf16_speedup"]
            else ""
        )
    )
    peak_dtype = "bfloat16" if precision["chosen"] == "bf16" or args.dtype == "bfloat16" else "float32"
    peak_dtypes = sorted({peak_dtype, "float32"}, reverse=peak_dtype == "bfloat16")
    results["peak_dtype"] = peak_dtype
    peaks = {dt: [in_child(matmul_peak, dt, log=log)] for dt in peak_dtypes}
    say("matmul peak " + ", ".join(f"{dt} {p[0].get('gflops_median', float('nan')):.1f}" for dt, p in peaks.items()))
    settings_text = {
        "sft": "8 × 128 tokens (63 prompt + 64 completion + EOS), completion-only loss, lr 2e-5",
        "reward": "8 pairs × 97 tokens (48 + 48 + EOS), Bradley-Terry, SmolLM2-135M + scalar head",
        "dpo": "8 pairs × 97 tokens, β 0.1, lr 1e-6",
        "rloo": "2 prompts × 4 samples × 32 new tokens, β 0.05, 32-token prompts",
        "grpo": "2 prompts × 4 samples × 32 new tokens, β 0.05, 32-token prompts",
    }
    for case in [c for c in wanted if c in cases.RUNNERS]:
        runners = dict(cases.RUNNERS[case])
        if precision["chosen"] == "no":
            runners.pop("rlhflab_fp32", None)  # the same run as "rlhflab"
        collected = {name: [] for name in runners}
        for trial in range(trials):
            for name, fn in runners.items():
                res = in_child(fn, steps, log=log)
                collected[name].append(res)
                say(
                    f"{case} {name} trial {trial}: "
                    + (
                        f"steps {[round(x, 2) for x in res['step_times']]}"
                        if "error" not in res
                        else "ERROR " + res["error"][-300:]
                    )
                )
        row = {name: summarize(trs) for name, trs in collected.items()}
        for name, s in row.items():
            results["errors"] += [f"{case}/{name}: {e.strip().splitlines()[-1]}" for e in s["errors"]]
        row["settings"] = settings_text[case]
        row["runners"] = list(runners)
        row["flops"] = {name: step_flops(case, name, row[name]) for name in runners}
        row["comparisons"] = [("rlhflab", "trl", case)]
        if case == "dpo":
            row["comparisons"].append(("rlhflab", "trl_precompute", "dpo_precompute"))
        if "rlhflab_fp32" in runners:
            row["comparisons"].append(("rlhflab_fp32", "trl", "reward (rlhflab fp32 RM)"))
        results["cases"][case] = row
    if "generation" in wanted:
        res = in_child(cases.generation, args.quick, log=log)
        results["generation"] = res
        if "error" in res:
            results["errors"].append("generation: " + res["error"].strip().splitlines()[-1])
        say("generation done")
    if "ppo" in wanted:
        results["ppo"] = {}
        for epochs in (1, 4):
            trs = [in_child(cases.rlhflab_ppo, steps, epochs, log=log) for _ in range(1 if args.quick else 1)]
            s = summarize(trs)
            s["epochs"] = epochs
            good = [t for t in trs if "error" not in t]
            if good:
                rows = [r for t in good for r in t["metrics"][1:]]
                stage = (
                    {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith("time_")} if rows else {}
                )
                if rows:
                    collect = sum(v for k, v in stage.items())
                    stage["time_update"] = statistics.median(r["seconds"] for r in rows) - collect
                s["stage_medians"] = stage
            results["errors"] += [f"ppo/{epochs}: {e.strip().splitlines()[-1]}" for e in s["errors"]]
            results["ppo"][f"{epochs}_epoch"] = s
            say(f"ppo {epochs} epoch(s): {s.get('steps')}")
    for dt in peak_dtypes:
        peaks[dt].append(in_child(matmul_peak, dt, log=log))
    best = {
        dt: max((p["gflops_median"] for p in runs if "gflops_median" in p), default=float("nan"))
        for dt, runs in peaks.items()
    }
    say(
        "matmul peak after the cases "
        + ", ".join(f"{dt} {p[-1].get('gflops_median', float('nan')):.1f}" for dt, p in peaks.items())
    )
    results["matmul_peak_runs"] = peaks
    results["matmul_peak_gflops"] = best[peak_dtype]
    results["fp32_matmul_peak_gflops"] = best["float32"]
    results["load_average"]["end"] = os.getloadavg()[0]
    results["contention"]["end"] = in_child(contention_probe, log=log)
    results["wall_seconds"] = time.perf_counter() - t_start
    (out / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    table = render_markdown(results)
    (out / "latest.md").write_text(table)
    print(table)
    return 0 if not results["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
