"""Tiny real runs for the run-report tests (tests/evaluation/test_html_report.py, tests/evaluation/test_report_browser.py):
a demo and a loop on the tiny in-process models, a few seconds each, and a toy-lab report folder
of the shape ``rlhflab toy report`` writes (its experiments take minutes, their files do not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhflab.commands import demo
from rlhflab.commands.demo import DemoConfig, run_demo
from rlhflab.commands.iterate import LoopConfig, run_loop
from rlhflab.evaluation.plots import pyplot
from rlhflab.files import write_text

TINY_DEMO = dict(
    quick=True,
    feedback_prompts=8,
    eval_prompts=4,
    eval_samples=2,
    policy_iterations=2,
    prompts_per_iteration=4,
    max_new_tokens=8,
    reward_epochs=1.0,
)
TINY_LOOP = dict(
    quick=True,
    rounds=2,
    feedback_prompts=8,
    policy_iterations=2,
    prompts_per_iteration=4,
    eval_prompts=4,
    eval_samples=2,
    max_new_tokens=8,
    reward_epochs=1.0,
)


def tiny_demo(run_dir: Path) -> Path:
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:  # the machine's matmul rate (seconds to measure) is not under test
        patch.setattr(demo, "matmul_peak", lambda: {"gflops_median": 100.0, "gflops_best": 100.0})
        return run_demo(DemoConfig(**TINY_DEMO, output_dir=str(run_dir)))


def tiny_loop(run_dir: Path) -> Path:
    torch.set_num_threads(1)
    return run_loop(LoopConfig(**TINY_LOOP, output_dir=str(run_dir)))


def toy_report_folder(run_dir: Path) -> Path:
    """summary.md, instance.json and one experiment folder with its figure, as the toy lab writes."""
    plt = pyplot()
    for folder, name in (("coverage", "coverage"), ("beta", "beta_tradeoff")):  # a folder's files keep their own name
        (run_dir / folder).mkdir(parents=True)
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([0, 1], [1, 0])
        fig.savefig(run_dir / folder / f"{name}.png", dpi=60)
        plt.close(fig)
        write_text(run_dir / folder / f"{name}.json", json.dumps({"wall_time_s": 1.5}))
    write_text(run_dir / "instance.json", json.dumps({"num_contexts": 2}))
    write_text(
        run_dir / "summary.md",
        "# Toy lab report (seed 0)\n\n| experiment | headline | wall time (s) |\n|---|---|---|\n"
        "| coverage | ΔJ at κ=0.1,ρ=0.1: seen 0.5 <unseen> | 1.5 |\n"
        "| beta | ΔJ unseen 1.3 at β=0.01 | best at β=0.05 | 1.5 |\n",
    )
    return run_dir
