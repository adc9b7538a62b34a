"""The demo over several seeds, as one table: does RLHF raise the true reward J on every draw?

    python benchmarks/demo_seeds.py --seeds 0 1 2 3 4 --root runs/demo-seeds   # runs `rlhflab demo` per seed
    python benchmarks/demo_seeds.py --tabulate runs/demo-seeds/seed-*           # only tabulates finished runs

Per seed: the reward model's held-out accuracy and Spearman correlation with R*, ΔJ (oracle) and ΔĴ
(reward model) on seen and unseen contexts with their paired standard errors, KL of the final
policy, and the demo's wall time and matmul rate (from its summary).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from rlhflab.evaluation.metrics import PolicyEvaluation, paired_difference


def _evaluations(run_dir: Path) -> dict:
    raw = json.loads((run_dir / "evaluation.json").read_text())
    return {p: {s: PolicyEvaluation(**e) for s, e in sets.items()} for p, sets in raw.items()}


def seed_row(run_dir: Path) -> dict:
    config = (run_dir / "demo_config.yaml").read_text()
    seed = int(re.search(r"^seed: (\d+)", config, re.M).group(1))
    ev = _evaluations(run_dir)
    reward = json.loads((run_dir / "reward" / "reward_report.json").read_text())
    seconds = json.loads((run_dir / "stage_seconds.json").read_text())
    peaks = re.search(r"before and after the run: (\d+) and (\d+) GFLOP/s", (run_dir / "summary.md").read_text())
    row = {
        "seed": seed,
        "rm_accuracy": reward["accuracy"],
        "rm_spearman_seen": reward["seen"]["spearman"],
        "rm_spearman_unseen": reward["unseen"]["spearman"],
        "seconds": sum(seconds.values()),
        "gflops": [int(g) for g in peaks.groups()] if peaks else None,
    }
    for contexts in ("seen", "unseen"):
        before, after = ev["initial"][contexts], ev["final"][contexts]
        row[f"dJ_{contexts}"], row[f"dJ_se_{contexts}"] = paired_difference(before, after)
        row[f"dJhat_{contexts}"], _ = paired_difference(before, after, "proxy_rewards")
        row[f"kl_{contexts}"] = after.kl
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| seed | RM accuracy | Spearman seen / unseen | ΔJ seen (z) | ΔJ unseen (z) | ΔĴ seen / unseen "
        "| KL seen | wall s | GFLOP/s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        z = {c: r[f"dJ_{c}"] / r[f"dJ_se_{c}"] for c in ("seen", "unseen")}
        lines.append(
            f"| {r['seed']} | {r['rm_accuracy']:.3f} | {r['rm_spearman_seen']:.2f} / {r['rm_spearman_unseen']:.2f} "
            f"| {r['dJ_seen']:+.3f} ± {r['dJ_se_seen']:.3f} ({z['seen']:+.1f}) "
            f"| {r['dJ_unseen']:+.3f} ± {r['dJ_se_unseen']:.3f} ({z['unseen']:+.1f}) "
            f"| {r['dJhat_seen']:+.3f} / {r['dJhat_unseen']:+.3f} | {r['kl_seen']:.2f} | {r['seconds']:.0f} "
            f"| {' / '.join(map(str, r['gflops'])) if r['gflops'] else '–'} |"
        )
    seen_ok = sum(r["dJ_seen"] >= 3 * r["dJ_se_seen"] for r in rows)
    unseen_ok = sum(r["dJ_unseen"] > 0 for r in rows)
    lines += [
        "",
        f"ΔJ seen ≥ 3 se in {seen_ok} of {len(rows)} seeds; ΔJ unseen > 0 in {unseen_ok} of {len(rows)}; "
        f"ΔĴ > ΔJ on seen contexts in {sum(r['dJhat_seen'] > r['dJ_seen'] for r in rows)} of {len(rows)}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--root", default="runs/demo-seeds", help="Run directories go to ROOT/seed-N.")
    parser.add_argument("--tabulate", nargs="*", help="Only tabulate these finished run directories.")
    parser.add_argument("demo_args", nargs=argparse.REMAINDER, help="Further `rlhflab demo` options after --.")
    args = parser.parse_args()
    if args.tabulate:
        dirs = [Path(d) for d in args.tabulate]
    else:
        dirs = []
        for seed in args.seeds:
            run_dir = Path(args.root) / f"seed-{seed}"
            extra = [a for a in args.demo_args if a != "--"]
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "rlhflab.cli",
                    "demo",
                    "--seed",
                    str(seed),
                    "--output_dir",
                    str(run_dir),
                    *extra,
                ],
                check=True,
            )
            dirs.append(run_dir)
    print(table(sorted((seed_row(d) for d in dirs), key=lambda r: r["seed"])))


if __name__ == "__main__":
    main()
