"""What iterated RLHF buys (Section 7.6.4), measured: ``rlhflab loop`` with 1 round against N rounds at
one total label budget (the same feedback prompts, split over the rounds) and one total RL budget,
over several seeds, on the offline default models with simulated feedback.

    python benchmarks/loop_rounds.py --rounds 1 3 --seeds 0 1 2 --root runs/loop-rounds   # runs and tabulates
    python benchmarks/loop_rounds.py --tabulate --root runs/loop-rounds                   # tabulates finished runs

A run that was interrupted is resumed (``--resume``), a finished one is read, not rerun. Per run: the
final policy's J and Ĵ − J on seen and unseen contexts, ΔJ against π_0, KL to π_0 and the final
reward model's agreement with R* on the final policy's own samples; then mean ± std over seeds per
number of rounds. Runs made with ``-- --eval_every K`` also give, per round, J's measured fall along
that round's update (``round-NN/frontier.json``: from the path's best J to its largest KL, paired by
prompt) over seeds, and on how many seeds it reached 2 standard errors: whether over-optimisation
shrinks round by round. The tables go to stdout and to benchmarks/results/loop_rounds.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "loop_rounds.md"
METRICS = [
    ("J_seen", "final J seen"),
    ("J_unseen", "final J unseen"),
    ("dJ_seen", "ΔJ seen"),
    ("dJ_unseen", "ΔJ unseen"),
    ("gap_seen", "Ĵ − J seen"),
    ("gap_unseen", "Ĵ − J unseen"),
    ("order_seen", "RM vs R* on final samples, seen"),
    ("order_unseen", "RM vs R* on final samples, unseen"),
    ("kl", "KL to π_0 (seen)"),
    ("labels", "labels"),
]


def run_row(run_dir: Path) -> dict:
    rows = json.loads((run_dir / "rounds.json").read_text())
    last = rows[-1]
    row = {
        "labels": sum(r["labels"] for r in rows),
        "kl": last["seen"]["kl_initial"],
        "seconds": sum(sum(r["seconds"].values()) for r in rows),
    }
    for contexts in ("seen", "unseen"):
        ev = last[contexts]
        row[f"J_{contexts}"] = ev["J"]
        row[f"dJ_{contexts}"] = ev["delta_J"]
        row[f"gap_{contexts}"] = ev["J_hat"] - ev["J"]
        row[f"order_{contexts}"] = ev["reward_model_order_accuracy"]
    return row


def _cell(values: list[float]) -> str:
    if values and all(v == values[0] for v in values):  # e.g. the label budget
        return f"{values[0]:g}"
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "–"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def frontier_rows(run_dir: Path) -> list[dict]:
    """Per round and context set of one run: J's measured fall along the round's update, and the KL
    its path reached (``--eval_every``; none without it)."""
    rows = []
    for path in sorted(run_dir.glob("round-*/frontier.json")):
        frontier = json.loads(path.read_text())
        for contexts, entry in frontier["fits"][f"round {frontier['round']}"].items():
            fall = entry["measured_fall"]
            rows.append({"round": frontier["round"], "contexts": contexts, **fall})
    return rows


def frontier_table(root: Path) -> list[str]:
    """Over-optimisation round by round over seeds; empty where no run was evaluated along its path."""
    cells: dict[tuple, list[dict]] = {}
    for seed_dir in sorted(root.glob("rounds-*/seed-*")):
        rounds = int(seed_dir.parent.name.split("-")[1])
        for row in frontier_rows(seed_dir):
            cells.setdefault((rounds, row["round"], row["contexts"]), []).append(row)
    if not cells:
        return []
    lines = [
        "",
        "Over-optimisation per round (`--eval_every`): J's measured fall along the round's update, from its",
        "best point to its largest KL (paired by prompt; mean ± std over seeds), and the seeds where it",
        "reached 2 se.",
        "",
        "| rounds | round | contexts | seeds | largest KL to π_0 | fall of J | seeds with fall ≥ 2 se |",
        "|---|---|---|---|---|---|---|",
    ]
    for (rounds, r, contexts), rows in sorted(cells.items()):
        beyond = sum(1 for row in rows if row["z"] is not None and row["z"] >= 2)
        lines.append(
            f"| {rounds} | {r} | {contexts} | {len(rows)} | {_cell([row['last_kl'] for row in rows])} | "
            f"{_cell([row['fall'] for row in rows])} | {beyond} of {len(rows)} |"
        )
    return lines


def table(root: Path) -> str:
    by_rounds: dict[int, dict[int, dict]] = {}
    for rounds_dir in sorted(root.glob("rounds-*")):
        for seed_dir in sorted(rounds_dir.glob("seed-*")):
            if (seed_dir / "rounds.json").is_file():
                rounds, seed = int(rounds_dir.name.split("-")[1]), int(seed_dir.name.split("-")[1])
                by_rounds.setdefault(rounds, {})[seed] = run_row(seed_dir)
    lines = ["| rounds | seeds | " + " | ".join(h for _, h in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for rounds, seeds in sorted(by_rounds.items()):
        cells = [_cell([r[k] for r in seeds.values() if r[k] is not None]) for k, _ in METRICS]
        lines.append(f"| {rounds} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    if len(by_rounds) >= 2:  # the same seeds, paired: each seed's runs share π_0, prompts and eval samples
        (base, base_runs), *others = sorted(by_rounds.items())
        for rounds, runs in others:
            common = sorted(set(base_runs) & set(runs))
            diffs = {
                k: [runs[s][k] - base_runs[s][k] for s in common]
                for k in ("J_seen", "J_unseen", "gap_seen", "order_seen")
            }
            lines += [
                "",
                f"Paired over seeds {','.join(map(str, common))}, {rounds} rounds minus {base}: "
                f"final J seen {_cell(diffs['J_seen'])}, unseen {_cell(diffs['J_unseen'])}; "
                f"Ĵ − J seen {_cell(diffs['gap_seen'])}; RM vs R* on final samples (seen) {_cell(diffs['order_seen'])}.",
            ]
    per_seed = ["", "Per seed (final J seen / unseen, RM vs R* seen):", ""]
    for rounds, seeds in sorted(by_rounds.items()):
        per_seed.append(
            f"- {rounds} round(s): "
            + "; ".join(
                f"seed {s}: {r['J_seen']:.3f} / {r['J_unseen']:.3f}, {r['order_seen']:.3f}"
                for s, r in sorted(seeds.items())
            )
        )
    return "\n".join(lines + per_seed + frontier_table(root)) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/loop-rounds"))
    parser.add_argument("--tabulate", action="store_true", help="only tabulate finished runs")
    parser.add_argument("args", nargs="*", help="extra `rlhflab loop` options, after --")
    args = parser.parse_args()
    if not args.tabulate:
        for seed in args.seeds:
            for rounds in args.rounds:
                run_dir = args.root / f"rounds-{rounds}" / f"seed-{seed}"
                if (run_dir / "rounds.json").is_file():
                    continue
                where = (
                    ["--resume", str(run_dir)]
                    if (run_dir / "loop_config.yaml").is_file()
                    else ["--output_dir", str(run_dir)]
                )
                command = [sys.executable, "-m", "rlhflab.cli", "loop", "--rounds", str(rounds), "--seed", str(seed)]
                subprocess.run([*command, *where, *args.args], check=True)
    text = table(args.root)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# rlhflab loop: rounds at one label budget (`python benchmarks/loop_rounds.py`)\n\n{text}")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
