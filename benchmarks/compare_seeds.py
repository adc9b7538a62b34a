"""The summary over seeds of finished `rlhflab compare` runs, as `rlhflab compare --seeds` writes it:
each method's ΔJ against π_0 with a crossed seeds × prompts interval, J at matched KL, each pair of
methods' difference, and for what is within noise, the seeds or prompts that would show it
(:mod:`rlhflab.evaluation.comparison`).

    rlhflab compare --seeds 0-2 --output_dir runs/compare-seeds      # runs the seeds and writes this itself
    python benchmarks/compare_seeds.py runs/compare-seeds/seed-*     # the same summary from run directories

Runs made before compare recorded its path points are read from their final points (each method
then compared at its own KL).
"""

from __future__ import annotations

import sys

from rlhflab.commands.compare import seed_record
from rlhflab.evaluation.comparison import summarize_seeds, summary_markdown


def main(run_dirs: list[str]) -> None:
    if not run_dirs:
        sys.exit("usage: python benchmarks/compare_seeds.py RUN_DIR [RUN_DIR ...]")
    records = sorted((seed_record(d) for d in run_dirs), key=lambda r: r["seed"])
    summary = summarize_seeds(records)
    seeds = ", ".join(str(r["seed"]) for r in records)
    print(summary_markdown(summary, f"{len(records)} seeds ({seeds}) from {', '.join(run_dirs)}."))


if __name__ == "__main__":
    main(sys.argv[1:])
