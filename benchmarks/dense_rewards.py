"""Dense rewards on the real default models (Section 7.5, "beyond scalar rewards"): PPO with the
reward model's score at the end of the sequence only, against PPO with `--dense_rewards` (every
prefix scored, potential-based shaping, Ng et al. 1999), at equal iterations and samples.

    python benchmarks/dense_rewards.py --seeds 0 1 2              # trains, tabulates
    python benchmarks/dense_rewards.py --seeds 0 1 2 --tabulate   # only tabulates finished runs

Per seed, the reward model is member 0 of `benchmarks/ensemble_overopt.py`'s ensemble for that
seed (trained if missing). Both runs start from π_0 (SmolLM2-135M-Instruct) with the same seed; the
oracle R* is scored beside the proxy on every rollout, so J by iteration is the sample-efficiency
curve. Shaping leaves the optimum unchanged (shown exactly by `rlhflab toy dense`); what it can
change is how fast PPO gets there. Results: benchmarks/results/dense_rewards.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import ensemble_overopt as overopt

RESULTS = Path(__file__).parent / "results" / "dense_rewards.md"
VARIANTS = {"sparse": [], "dense": ["--dense_rewards"]}


def _ppo(args, seed: int, reward: str, variant: str, out: Path) -> None:
    if (out / "policy").is_dir():
        return
    command = [sys.executable, "-m", "rlhflab.cli", "ppo", "--reward", reward, "--oracle", "sentiment"]
    command += ["--kl_coef", args.kl_coef, "--num_iterations", args.iterations, "--prompts_per_iteration", 16]
    command += ["--max_new_tokens", 24, "--learning_rate", args.learning_rate, "--epochs", 2, "--seed", seed]
    command += ["--save_steps", 4, "--no_progress", *VARIANTS[variant]]
    command += ["--resume", out] if out.exists() else ["--output_dir", out]
    subprocess.run([str(c) for c in command], check=True)


def curve(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"J": r["oracle_reward"], "J_hat": r["reward"], "kl": r["kl"]} for r in rows]


def window(c: list[dict], start: int, stop: int, key: str = "J") -> float:
    """Mean over iterations [start, stop): one iteration's 16 rollouts are too few to read alone."""
    return statistics.mean(r[key] for r in c[start:stop])


def table(per_seed: dict[int, dict], iterations: int, width: int) -> str:
    seeds = ", ".join(map(str, per_seed))
    lines = [
        f"J (oracle) of the training rollouts, mean over windows of {width} iterations, mean ± sd over seeds {seeds}:",
        "",
        "| iterations | sparse J | dense J | dense − sparse (paired) | per seed | sparse KL | dense KL | KL per seed "
        "(sparse/dense) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for start in range(0, iterations, width):
        stop = min(iterations, start + width)
        sparse = [window(s["sparse"], start, stop) for s in per_seed.values()]
        dense = [window(s["dense"], start, stop) for s in per_seed.values()]
        kl = {v: statistics.mean(window(s[v], start, stop, "kl") for s in per_seed.values()) for v in VARIANTS}
        kl_per_seed = [
            f"{window(s['sparse'], start, stop, 'kl'):.2f}/{window(s['dense'], start, stop, 'kl'):.2f}"
            for s in per_seed.values()
        ]
        diff = [d - s for d, s in zip(dense, sparse)]
        lines.append(
            f"| {start + 1}–{stop} | {overopt.mean_sd(sparse)} | {overopt.mean_sd(dense)} | {overopt.mean_sd(diff)} "
            f"| {overopt.each_seed(diff)} | {kl['sparse']:.2f} | {kl['dense']:.2f} "
            f"| {', '.join(kl_per_seed)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/dense-rewards"))
    parser.add_argument("--overopt_root", type=Path, default=Path("runs/ensemble-overopt"))
    parser.add_argument("--kl_coef", type=float, default=0.05)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--tabulate", action="store_true", help="only tabulate finished (or stored) seeds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    # ensemble_overopt's defaults: all pairs, 2 epochs, 4 members
    args.pairs, args.epochs, args.members, args.preferences = 0, 2, 4, None
    per_seed = {}
    for seed in args.seeds:
        scores_run = args.overopt_root / f"seed-{seed}"
        ensemble_dir = scores_run / "ensemble"
        if not args.tabulate:
            scores_run.mkdir(parents=True, exist_ok=True)
            overopt._train_ensemble(args, seed, overopt._preferences(args, seed, scores_run), ensemble_dir)
        runs = {}
        for variant in VARIANTS:
            run = args.root / f"seed-{seed}" / variant
            if not args.tabulate:
                run.parent.mkdir(parents=True, exist_ok=True)
                _ppo(args, seed, str(ensemble_dir / "member-00" / "reward_model"), variant, run)
            if (run / "policy").is_dir():
                runs[variant] = curve(run)
        key = f"seed-{seed}-beta{args.kl_coef:g}-lr{args.learning_rate:g}"
        if len(runs) == len(VARIANTS):
            overopt.store_seed("dense_rewards", key, runs)
        else:
            runs = overopt.stored_seed("dense_rewards", key) or runs
        if len(runs) == len(VARIANTS):
            per_seed[seed] = runs
    if not per_seed:
        print("no seed has both runs finished")
        return 1
    text = (
        "# Dense against sparse rewards: PPO on the real default models\n\n"
        f"`python benchmarks/dense_rewards.py --seeds {' '.join(map(str, per_seed))} --kl_coef {args.kl_coef:g} "
        f"--iterations {args.iterations}` (reward: member 0 of ensemble_overopt.py's ensemble; 16 prompts × 1 "
        f"sample per iteration, max_new_tokens 24, learning rate {args.learning_rate:g}).\n\n"
        + table(per_seed, args.iterations, args.window)
    )
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
