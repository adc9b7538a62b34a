"""``rlhflab toy <experiment>``: the exact toy-lab experiments from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rlhflab.toy import experiments

CHOICES = (
    "export",
    "coverage",
    "beta",
    "overopt",
    "sft-vs-pg",
    "annotators",
    "iterated",
    "trainers",
    "ensemble",
    "dense",
    "report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhflab toy", description=__doc__)
    parser.add_argument("experiment", choices=CHOICES, help="which experiment (report runs them all)")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="run directory (default: runs/toy-<experiment>-seed<N>)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the instance, π_ref's pre-training and the feedback")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Every tensor here is tiny: threads cost more in synchronisation than they give back.
    torch.set_num_threads(1)
    out = args.output_dir or Path("runs") / f"toy-{args.experiment}-seed{args.seed}"
    if args.experiment == "export":
        res = experiments.export(out, seed=args.seed)
        print(
            f"wrote {res['path']} ({res['num_contexts']} contexts × {res['num_outputs']} outputs, J(π_ref) = {res['J_ref']:.4f})"
        )
        return 0
    if args.experiment == "report":
        res = experiments.report(out, seed=args.seed)
        print((out / "summary.md").read_text(), end="")
        print(
            f"wrote {out}/ (summary.md, report.html, instance.json, one folder per experiment) in {res['wall_time_s']} s"
        )
        return 0
    res = experiments.EXPERIMENTS[args.experiment](out, seed=args.seed)
    print(f"| {args.experiment} | {experiments.headline(args.experiment, res)} | {res['wall_time_s']} s |")
    print(f"wrote {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
