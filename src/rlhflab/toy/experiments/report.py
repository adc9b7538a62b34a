"""``rlhflab toy report`` (every experiment, summary.md, report.html) and ``rlhflab toy export``."""

from __future__ import annotations

import time
from pathlib import Path

from rlhflab.evaluation.html_report import write_report
from rlhflab.files import write_text
from rlhflab.toy.exact import export_instance, performance
from rlhflab.toy.experiments.common import lab_instance
from rlhflab.toy.experiments.registry import EXPERIMENTS


def export_lab_instance(run_dir, seed: int = 0) -> dict:
    """The lab instance of ``seed`` (contexts, d_C, π_ref, R*, seen/unseen) as ``run_dir``/instance.json,
    for recomputation elsewhere; returns its path, size and J(π_ref)."""
    instance = lab_instance(seed)
    path = Path(run_dir) / "instance.json"
    export_instance(instance, path)
    return {
        "path": str(path),
        "num_contexts": instance.num_contexts,
        "num_outputs": instance.num_outputs,
        "J_ref": performance(instance.require_reference(), instance.oracle_reward, instance.context_dist),
    }


def run_toy_report(run_dir, seed: int = 0) -> dict:
    """Every experiment into its own subfolder, summary.md with the headline numbers, report.html."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    export_lab_instance(run_dir, seed)
    results = {name: module.run(run_dir / name, seed=seed) for name, module in EXPERIMENTS.items()}
    write_text(run_dir / "summary.md", summary_markdown(results, seed))
    write_report([run_dir])
    return {
        "experiment": "report",
        "seed": seed,
        "results": results,
        "wall_time_s": round(time.perf_counter() - started, 2),
    }


def summary_markdown(results: dict, seed: int) -> str:
    """One table row per experiment: its name, headline and wall time."""
    lines = [f"# Toy lab report (seed {seed})", "", "| experiment | headline | wall time (s) |", "|---|---|---|"]
    for name, res in results.items():
        lines.append(f"| {name} | {EXPERIMENTS[name].headline(res)} | {res['wall_time_s']} |")
    return "\n".join(lines) + "\n"
