"""`rlhflab compare` over several seeds, as one table: each method's ΔJ against π_0 per seed, and
the mean and spread over seeds.

    python benchmarks/compare_seeds.py runs/compare-seeds/seed-*     # finished `rlhflab compare` runs
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(run_dirs: list[str]) -> None:
    runs = [json.loads((Path(d) / "comparison.json").read_text()) for d in run_dirs]
    runs.sort(key=lambda r: r["config"]["seed"])
    seeds = [r["config"]["seed"] for r in runs]
    methods = [m for m in dict.fromkeys(row["method"] for row in runs[0]["rows"]) if m != "initial"]
    head = "| method | contexts | " + " | ".join(f"ΔJ seed {s} (z)" for s in seeds) + " | mean ΔJ ± sd | beyond noise |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for method in methods:
        for contexts in ("seen", "unseen"):
            cells, deltas, beyond = [], [], 0
            for run in runs:
                row = next(r for r in run["rows"] if r["method"] == method and r["contexts"] == contexts)
                z = row["z"]
                cells.append(f"{row['delta_J']:+.3f} ({'–' if z is None else format(z, '+.1f')})")
                deltas.append(row["delta_J"])
                beyond += z is not None and abs(z) >= 2
            spread = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
            lines.append(
                f"| {method} | {contexts} | "
                + " | ".join(cells)
                + f" | {statistics.mean(deltas):+.3f} ± {spread:.3f} | {beyond} of {len(runs)} |"
            )
    accuracy = [r["pool"]["reward_model"].get("accuracy") for r in runs]
    lines += ["", "Reward model held-out accuracy per seed: " + ", ".join(f"{a:.3f}" for a in accuracy) + "."]
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
