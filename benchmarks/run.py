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
- Achieved FLOP/s of training passes: the model FLOPs each framework executes (6 x body
  parameters x tokens + 6 x LM-head size x positions that need logits + attention; rlhflab's DPO
  and reward model count each pair's prompt once, as they compute it once), divided by the median
  step time, as a fraction of the fp32 matmul peak (2048 x 2048 @ 2048 x 2048) measured in this
  same run, before and after the cases.
- torch uses 2 threads everywhere.
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
TARGETS = {
    "sft": 1.1,
    "reward": 1.2,
    "dpo": 2.0,
    "dpo_precompute": 1.5,
    "rloo": 1.8,
    "grpo": 1.5,
    "ppo": 1.5,
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


def matmul_peak() -> dict:
    import torch
    from cases import DEVICE, DTYPE

    from rlhflab.hardware import matmul_peak as measure

    return measure(DEVICE, getattr(torch, DTYPE))


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
    return out


def _fmt(s: dict) -> str:
    if "median" not in s:
        return "failed"
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def render_markdown(results: dict) -> str:
    peak = results["matmul_peak_gflops"]
    lines = [
        "# rlhflab vs TRL — side-by-side benchmark",
        "",
        f"{results['machine']}; torch {results['versions']['torch']}, transformers {results['versions']['transformers']}, "
        f"TRL {results['versions']['trl']}; {THREADS} threads; SmolLM2-135M-Instruct {results['dtype']} on {results['device']}, "
        "no gradient checkpointing. "
        f"Mode: {results['mode']} ({results['trials']} trial(s) per framework, {results['steps']} steps per trial, "
        "the first a dropped warm-up); trials interleaved A/B/A/B. Seconds per optimiser step: median (min–max). "
        f"{results['dtype']} matmul peak measured in this run: {peak:.1f} GFLOP/s. Whole suite: {results['wall_seconds'] / 60:.1f} min.",
        "",
        "| case | settings | rlhflab s/step | TRL s/step | rlhflab/TRL | speed-up | target | peak RSS MB rlhflab / TRL | executed training FLOP/s vs peak rlhflab / TRL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["cases"].values():
        for trl_name, label in row["comparisons"]:
            a, b = row["rlhflab"], row[trl_name]
            ratio = a["median"] / b["median"] if "median" in a and "median" in b else None
            target = TARGETS.get(label)
            flops = row.get("flops") or {}
            frac = (
                f"{flops['rlhflab'] / a['median'] / 1e9 / peak:.0%} / {flops['trl'] / b['median'] / 1e9 / peak:.0%}"
                if flops.get("rlhflab") and ratio
                else "—"
            )
            speed = f"{1 / ratio:.2f}×" if ratio else "—"
            met = "" if not (ratio and target) else (" ✅" if 1 / ratio >= target else " ❌")
            lines.append(
                f"| {label} | {row['settings']} | {_fmt(a)} | {_fmt(b)} | {ratio:.2f} | {speed}{met} | ≥ {target}× | "
                f"{a.get('peak_rss_mb', float('nan')):.0f} / {b.get('peak_rss_mb', float('nan')):.0f} | {frac} |"
                if ratio
                else f"| {label} | {row['settings']} | {_fmt(a)} | {_fmt(b)} | — | — | ≥ {target}× | — | — |"
            )
    gen = results.get("generation")
    if gen and "generation" in gen:
        lines += [
            "",
            "## Generation: new tokens/s producing one set of rollouts",
            "",
            "`model.generate` in calls of 8 rows (a prompt's samples via `num_return_sequences`) against "
            "rlhflab's engine as the trainers call it (rows per call below; shared prompt prefill, lean decode "
            "step); EOS ignored by both, so both produce exactly rows × new tokens. Target: ≥ 3× generate at "
            "batch 8.",
            "",
            "| rollouts (prompts × samples) | new tokens | generate rows/call | tok/s | engine rows/call | tok/s | speed-up |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in gen["generation"]:
            hf = g["tokens"]["generate"] / statistics.median(g["seconds"]["generate"])
            me = g["tokens"]["rlhflab"] / statistics.median(g["seconds"]["rlhflab"])
            same = g["engine_batch"] == g["generate_batch"]
            mark = "" if same else (" ✅" if me / hf >= TARGETS["generation"] else " ❌")
            lines.append(
                f"| {g['rows']} ({g['prompts']} × {g['samples_per_prompt']}) | {g['new_tokens']} | "
                f"{g['generate_batch']} | {hf:.1f} | {g['engine_batch']}{' (same batch)' if same else ''} | "
                f"{me:.1f} | {me / hf:.2f}×{mark} |"
            )
        lines.append(f"\nPeak RSS of the generation child: {gen.get('peak_rss_mb', 0):.0f} MB.")
    ppo = results.get("ppo")
    if ppo:
        lines += [
            "",
            "## PPO (rlhflab only; TRL's PPOTrainer was removed — compared with the figures quoted in the issue)",
            "",
            "8 prompts × 32 new tokens; policy + separate value model + frozen reference + 135M reward model.",
            "",
            "| epochs | rlhflab s/update | generate | policy fwd | critic fwd | reference fwd | score | update | TRL (quoted) | speed-up | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in ppo.items():
            if "median" not in s:
                lines.append(f"| {name} | failed | | | | | | | | | |")
                continue
            m = s.get("stage_medians", {})
            quoted = QUOTED["ppo_1_epoch" if s["epochs"] == 1 else "ppo_4_epochs"]
            speed = quoted / s["median"]
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
                + f" | {quoted} | {speed:.2f}×{' ✅' if speed >= TARGETS['ppo'] else ' ❌'} | {s.get('peak_rss_mb', 0):.0f} |"
            )
    lines += ["", "Reference-model handling: " + "; ".join(results.get("reference_handling", [])), ""]
    if results.get("errors"):
        lines += ["Errors:", ""] + [f"- {e}" for e in results["errors"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One trial of one warm-up + one measured step per case.")
    parser.add_argument("--cases", default="sft,reward,dpo,rloo,grpo,generation,ppo")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="Optimiser steps per trial (first dropped).")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--device", default="cpu", help="cpu (the reference setting) or cuda (benchmarks/gpu.sh).")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--render", metavar="JSON", help="Only rewrite the Markdown table of an earlier results file.")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        for case, row in results["cases"].items():
            row["flops"] = {
                "rlhflab": training_flops(case, shared_prompt=case in ("dpo", "reward")),
                "trl": training_flops(case),
            }
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

    peaks = [in_child(matmul_peak, log=log)]
    say(f"matmul peak {peaks[0].get('gflops_median', float('nan')):.1f} GFLOP/s")
    settings_text = {
        "sft": "8 × 128 tokens (63 prompt + 64 completion + EOS), completion-only loss, lr 2e-5",
        "reward": "8 pairs × 97 tokens (48 + 48 + EOS), Bradley-Terry, SmolLM2-135M + scalar head",
        "dpo": "8 pairs × 97 tokens, β 0.1, lr 1e-6",
        "rloo": "2 prompts × 4 samples × 32 new tokens, β 0.05, 32-token prompts",
        "grpo": "2 prompts × 4 samples × 32 new tokens, β 0.05, 32-token prompts",
    }
    for case in [c for c in wanted if c in cases.RUNNERS]:
        runners = cases.RUNNERS[case]
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
        row["flops"] = {
            "rlhflab": training_flops(case, shared_prompt=case in ("dpo", "reward")),
            "trl": training_flops(case),
        }
        row["comparisons"] = (
            [("trl", case)] if case != "dpo" else [("trl", "dpo"), ("trl_precompute", "dpo_precompute")]
        )
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
    peaks.append(in_child(matmul_peak, log=log))
    good_peaks = [p["gflops_median"] for p in peaks if "gflops_median" in p]
    results["matmul_peak_runs"] = peaks
    results["matmul_peak_gflops"] = max(good_peaks) if good_peaks else float("nan")
    results["wall_seconds"] = time.perf_counter() - t_start
    (out / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    table = render_markdown(results)
    (out / "latest.md").write_text(table)
    print(table)
    return 0 if not results["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
