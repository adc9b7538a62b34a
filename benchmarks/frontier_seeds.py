"""The real-model frontier over several seeds, as one table: where does each method's J stand at its
largest KL, does J fall from its peak, and where do the Gao et al. fits put the over-optimisation point?

    python benchmarks/frontier_seeds.py --seeds 0 1 2 --root runs/frontier-seeds   # `rlhflab frontier` per seed
    python benchmarks/frontier_seeds.py --tabulate runs/frontier-seeds/seed-*       # only tabulates finished runs
    python benchmarks/frontier_seeds.py --seeds 0 1 2 -- --methods bon,ppo         # options after -- go to frontier
    python benchmarks/frontier_seeds.py --tabulate runs/frontier-seeds/seed-* --plot docs/frontier.png

A seed whose directory holds ``frontier.json`` is kept; one left unfinished is redone. Per seed, method
and context set: the KL and ΔJ (± se over prompts) at the method's last point, ΔĴ there, the measured
fall of J from its highest point to the last (in standard errors), and the fitted J peak's KL with its
interval and whether Ĵ still rises there; then ΔJ at the last point averaged over seeds (± se over
seeds). ``--plot`` draws the seed-averaged frontier: each method's points matched by name across seeds
("n=4", "iteration 6"), KL, J and Ĵ averaged (± se over seeds), and the Eq. 17 reference curves
averaged on a common KL grid up to the smallest seed's largest reference KL. Last, ΔJ at matched KL
(0.5, 1 and 2 nats; each curve interpolated linearly, per prompt, where its path first reaches the KL) and each curve's gap to
best-of-n there, paired by prompt within a seed and pooled over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from rlhflab.evaluation.comparison import value_at_kl
from rlhflab.evaluation.frontier import plot_frontier


def seed_rows(run_dir: Path) -> list[dict]:
    """One row per curve and context set of a finished frontier run."""
    data = json.loads((run_dir / "frontier.json").read_text())
    seed = data["config"]["seed"]
    curves: dict[tuple[str, str], list[dict]] = {}
    for p in data["points"]:
        # a DPO-family run over several β names each curve by its β ("dpo β=0.1"), fits keyed alike
        curves.setdefault((p["method"], p["contexts"]), []).append(p)
    rows = []
    for (curve, contexts), points in curves.items():
        last = max(points, key=lambda p: p["kl"] if p["method"] == "bon" else p["step"])
        fit = data["fits"].get(curve, {}).get(contexts, {})
        j_fit, fall = fit.get("J") or {}, fit.get("measured_fall") or {}
        rows.append(
            {
                "seed": seed,
                "curve": curve,
                "contexts": contexts,
                "kl": last["kl"],
                "dJ": last["delta_J"],
                "dJ_se": last["delta_J_se"],
                "dJ_hat": last["delta_J_hat"],
                "fall_z": fall.get("z"),
                "peak_kl": j_fit.get("peak_kl"),
                "peak_kl_ci": j_fit.get("peak_kl_ci"),
                "J_hat_rising": fit.get("J_hat_rising_at_J_peak"),
                "seconds": data["seconds"].get(points[0]["method"]),
            }
        )
    return rows


def _peak(r: dict) -> str:
    if r["peak_kl"] is None or r["peak_kl"] == float("inf"):
        return "no peak"
    low, high = r["peak_kl_ci"] or (None, None)
    ci = f" [{low:.3g}, {'unbounded' if high == float('inf') else format(high, '.3g')}]"
    rising = "; Ĵ rising" if r["J_hat_rising"] else ""
    return f"{r['peak_kl']:.3g}{ci if low is not None else ''}{rising}"


def table(rows: list[dict]) -> str:
    head = "| curve | contexts | seed | KL at last point | ΔJ (z) | ΔĴ | J's fall from its peak | fitted J peak (KL) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ordered = sorted(rows, key=lambda r: (r["curve"], r["contexts"], r["seed"]))
    for r in ordered:
        z = r["dJ"] / r["dJ_se"] if r["dJ_se"] else float("nan")
        fall = "none" if not r["fall_z"] else f"{r['fall_z']:.1f} se"
        lines.append(
            f"| {r['curve']} | {r['contexts']} | {r['seed']} | {r['kl']:.2f} | {r['dJ']:+.3f} ± {r['dJ_se']:.3f} "
            f"({z:+.1f}) | {r['dJ_hat']:+.3f} | {fall} | {_peak(r)} |"
        )
    lines += ["", "| curve | contexts | seeds | mean KL | mean ΔJ ± se over seeds | seeds with ΔJ > 2 se |"]
    lines += ["|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in ordered:
        groups.setdefault((r["curve"], r["contexts"]), []).append(r)
    for (curve, contexts), group in groups.items():
        gains = [r["dJ"] for r in group]
        se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
        beyond = sum(r["dJ"] > 2 * r["dJ_se"] for r in group)
        lines.append(
            f"| {curve} | {contexts} | {len(group)} | {statistics.mean(r['kl'] for r in group):.2f} "
            f"| {statistics.mean(gains):+.3f} ± {se:.3f} | {beyond} of {len(group)} |"
        )
    return "\n".join(lines)


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None)


def seed_mean_frontier(dirs: list[Path]) -> tuple[list[dict], dict[str, list[dict]]]:
    """Points and reference curves averaged over the seeds' runs (see the module docstring); a point
    missing from some seed is averaged over the seeds that have it."""
    runs = [json.loads((d / "frontier.json").read_text()) for d in dirs]
    matched: dict[tuple[str, str, str], list[dict]] = {}
    for data in runs:
        for p in data["points"]:
            matched.setdefault((p["method"], p["contexts"], p["point"]), []).append(p)
    points = []
    for (method, contexts, name), group in matched.items():
        point = {"method": method, "contexts": contexts, "point": name, "seeds": len(group)}
        for key in ("kl", "J", "J_hat"):
            point[key], point[f"{key}_se"] = _mean_se([p[key] for p in group])
        points.append(point)
    reference = {}
    for contexts in dict.fromkeys(c for data in runs for c in data["reference"]):
        curves = [sorted(data["reference"][contexts], key=lambda p: p["kl"]) for data in runs]
        grid = np.linspace(0.0, min(c[-1]["kl"] for c in curves), 40)
        J = np.mean([np.interp(grid, [p["kl"] for p in c], [p["J"] for p in c]) for c in curves], axis=0)
        reference[contexts] = [{"kl": float(k), "J": float(j)} for k, j in zip(grid, J)]
    return points, reference


MATCHED_KL = (0.5, 1.0, 2.0)


def _per_prompt_at(points: list[dict], kl: float) -> np.ndarray | None:
    """Each prompt's ΔJ on one curve where its path, in the order it was reached, first gets to
    ``kl`` (:func:`rlhflab.evaluation.comparison.value_at_kl`); None where it never does."""
    ordered = sorted(points, key=lambda p: p["step"])
    per_prompt = np.array([p["per_prompt_J"] for p in ordered])  # (points, prompts)
    values, _, reached = value_at_kl([p["kl"] for p in ordered], per_prompt, kl)
    return values - per_prompt[0] if reached else None


def matched_kl_table(dirs: list[Path], levels=MATCHED_KL) -> str:
    """ΔJ of every curve at the same KL, and each curve's gap to best-of-n there, paired by prompt
    within each seed (the methods are evaluated on the same prompts) and pooled over seeds: the
    comparison at equal KL that a table at equal steps cannot make."""
    runs = [json.loads((d / "frontier.json").read_text()) for d in dirs]
    lines = [
        "| contexts | KL | curve | seeds reaching it | ΔJ (mean over seeds) | best-of-n − curve, paired (± se over seed × prompt) | z | seeds where best-of-n is ahead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    curves = list(dict.fromkeys(p["method"] for data in runs for p in data["points"]))
    for contexts in ("seen", "unseen"):
        for kl in levels:
            reference = []
            for data in runs:
                ref = sorted(data["reference"].get(contexts, []), key=lambda p: p["kl"])
                if ref and ref[-1]["kl"] >= kl:
                    reference.append(float(np.interp(kl, [p["kl"] for p in ref], [p["J"] for p in ref])) - ref[0]["J"])
            if reference:
                lines.append(
                    f"| {contexts} | {kl:g} | reference (Eq. 17, R*) | {len(reference)} of {len(runs)} "
                    f"| {statistics.mean(reference):+.3f} | – | – | – |"
                )
            for curve in curves:
                gains, gaps, ahead = [], [], 0
                for data in runs:
                    mine = [p for p in data["points"] if p["method"] == curve and p["contexts"] == contexts]
                    bon = [p for p in data["points"] if p["method"] == "bon" and p["contexts"] == contexts]
                    at = _per_prompt_at(mine, kl) if mine else None
                    if at is None:
                        continue
                    gains.append(float(at.mean()))
                    bon_at = _per_prompt_at(bon, kl) if bon and curve != "bon" else None
                    if bon_at is not None:
                        gaps.append(bon_at - at)
                        ahead += float((bon_at - at).mean()) > 0
                if not gains:
                    continue
                gap = "–"
                z = "–"
                if gaps:
                    pooled = np.concatenate(gaps)
                    mean, se = float(pooled.mean()), float(pooled.std(ddof=1) / len(pooled) ** 0.5)
                    gap, z = f"{mean:+.3f} ± {se:.3f}", f"{mean / se:+.1f}" if se else "–"
                ahead_cell = f"{ahead} of {len(gaps)}" if gaps else "–"
                lines.append(
                    f"| {contexts} | {kl:g} | {curve} | {len(gains)} of {len(runs)} | {statistics.mean(gains):+.3f} "
                    f"| {gap} | {z} | {ahead_cell} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/frontier-seeds", help="Run directories go to ROOT/seed-N.")
    parser.add_argument("--tabulate", nargs="*", help="Only tabulate these finished run directories.")
    parser.add_argument("--plot", help="Write the seed-averaged frontier plot here (default ROOT/frontier_seeds.png).")
    parser.add_argument("frontier_args", nargs=argparse.REMAINDER, help="Further `rlhflab frontier` options after --.")
    args = parser.parse_args()
    if args.tabulate:
        dirs = [Path(d) for d in args.tabulate]
    else:
        dirs = []
        for seed in args.seeds:
            run_dir = Path(args.root) / f"seed-{seed}"
            if (run_dir / "frontier.json").is_file():
                print(f"[frontier_seeds] seed {seed}: finished before ({run_dir}), kept", flush=True)
            else:
                if run_dir.exists():
                    print(f"[frontier_seeds] seed {seed}: {run_dir} was left unfinished, redoing it", flush=True)
                    shutil.rmtree(run_dir)
                extra = [a for a in args.frontier_args if a != "--"]
                command = [sys.executable, "-m", "rlhflab.cli", "frontier", "--seed", str(seed)]
                subprocess.run([*command, "--output_dir", str(run_dir), *extra], check=True)
            dirs.append(run_dir)
    print(table([row for d in dirs for row in seed_rows(d)]))
    print()
    print(matched_kl_table(dirs))
    plot = Path(args.plot) if args.plot else (None if args.tabulate else Path(args.root) / "frontier_seeds.png")
    if plot:
        points, reference = seed_mean_frontier(dirs)
        plot_frontier(points, reference, {}, plot)
        print(f"[frontier_seeds] plot of the mean over {len(dirs)} seeds: {plot}")


if __name__ == "__main__":
    main()
