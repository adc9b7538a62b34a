"""``rlhflab toy EXPERIMENT``: the exact toy-lab experiments from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.config import option
from rlhflab.errors import ConfigError
from rlhflab.toy.experiments.registry import EXPERIMENTS
from rlhflab.toy.experiments.report import export_lab_instance, run_toy_report

# export writes the instance alone; report runs every experiment.
CHOICES = ("export", *EXPERIMENTS, "report")


@dataclass
class ToyConfig:
    """Run one exact toy-lab experiment: `rlhflab toy EXPERIMENT` (or --experiment EXPERIMENT).
    `report` runs them all and writes summary.md and report.html; `export` writes the instance."""

    experiment: str | None = option(
        None, "Which experiment; report runs them all, export writes instance.json.", choices=list(CHOICES)
    )
    output_dir: str | None = option(None, "Run directory. Default: runs/toy-EXPERIMENT-seedN.")
    seed: int = option(0, "Seeds the instance, π_ref's pre-training and the feedback.")

    def validate(self) -> None:
        # A YAML file's value reaches the config without argparse's check of choices.
        if self.experiment not in CHOICES:
            given = "no experiment given" if self.experiment is None else f"unknown experiment '{self.experiment}'"
            raise ConfigError(f"{given}; choose one of {', '.join(CHOICES)} (rlhflab toy EXPERIMENT)")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / f"toy-{self.experiment}-seed{self.seed}")


def run_toy(cfg: ToyConfig) -> dict:
    """Run ``cfg.experiment`` into ``cfg.run_dir``; returns its result."""
    # Every tensor here is tiny: threads cost more in synchronisation than they give back.
    torch.set_num_threads(1)
    if cfg.experiment == "export":
        return export_lab_instance(cfg.run_dir, seed=cfg.seed)
    if cfg.experiment == "report":
        return run_toy_report(cfg.run_dir, seed=cfg.seed)
    return EXPERIMENTS[cfg.experiment].run(cfg.run_dir, seed=cfg.seed)


def format_toy_result(cfg: ToyConfig, res: dict) -> str:
    """What ``rlhflab toy`` prints: the experiment's headline row (the whole summary for report)."""
    out = cfg.run_dir
    if cfg.experiment == "export":
        return (
            f"wrote {res['path']} ({res['num_contexts']} contexts × {res['num_outputs']} outputs, "
            f"J(π_ref) = {res['J_ref']:.4f})"
        )
    if cfg.experiment == "report":
        return (
            (out / "summary.md").read_text()
            + f"wrote {out}/ (summary.md, report.html, instance.json, one folder per experiment) in {res['wall_time_s']} s"
        )
    headline = EXPERIMENTS[cfg.experiment].headline(res)
    return f"| {cfg.experiment} | {headline} | {res['wall_time_s']} s |\nwrote {out}/"
