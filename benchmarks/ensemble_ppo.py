"""Over-optimisation of PPO at a small KL coefficient on the real default models, one reward model
against an ensemble combined by mean, WCO or UWO (Coste et al. 2023; Sections 6.2, 7.7): does the
ensemble delay the fall of the true reward J as the policy moves away from π_0?

    python benchmarks/ensemble_ppo.py --seeds 0 1 2              # trains, evaluates, tabulates
    python benchmarks/ensemble_ppo.py --seeds 0 1 2 --tabulate   # only tabulates finished runs

Per seed, the reward models are those of `benchmarks/ensemble_overopt.py` (same seed, same
``--pairs``; it trains them if missing). Each objective drives one PPO run from π_0
(SmolLM2-135M-Instruct) with the oracle R* scored beside the proxy on every rollout: the curve of
J (oracle) and Ĵ (the optimised reward) against the sequence KL to π_0, iteration by iteration, on
the training prompts. The final policy is then evaluated on held-out seen and unseen prompts
(`rlhflab eval`). Results: benchmarks/results/ensemble_ppo[-PAIRS].md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import ensemble_overopt as overopt

RESULTS = Path(__file__).parent / "results"
OBJECTIVES = overopt.OBJECTIVES


def reward_spec(ensemble_dir: Path, objective: str) -> str:
    spec = OBJECTIVES[objective]
    return str(ensemble_dir / "member-00" / "reward_model") if spec is None else f"{ensemble_dir}::{spec}"


def _ppo(args, seed: int, spec: str, out: Path) -> None:
    if (out / "policy").is_dir():
        return
    command = [sys.executable, "-m", "rlhflab.cli", "ppo", "--reward", spec, "--oracle", "sentiment"]
    command += ["--kl_coef", args.kl_coef, "--num_iterations", args.iterations, "--prompts_per_iteration", 16]
    command += ["--max_new_tokens", 24, "--learning_rate", args.learning_rate, "--epochs", 2, "--seed", seed]
    command += ["--save_steps", 4, "--no_progress"]
    command += ["--resume", out] if out.exists() else ["--output_dir", out]
    subprocess.run([str(c) for c in command], check=True)


def _eval(args, seed: int, spec: str, run: Path) -> dict:
    path = run / "eval.json"
    if not path.is_file():
        command = [sys.executable, "-m", "rlhflab.cli", "eval", "--policy", run / "policy"]
        command += ["--reference", "smollm2-135m-instruct", "--oracle", "sentiment", "--reward_model", spec]
        command += ["--limit", args.eval_prompts, "--num_samples", 2, "--max_new_tokens", 24, "--seed", seed]
        command += ["--output", path]
        subprocess.run([str(c) for c in command], check=True)
    return json.loads(path.read_text())


def curve(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"kl": r["kl"], "J": r["oracle_reward"], "J_hat": r["reward"]} for r in rows]


def summary(evaluation: dict) -> dict:
    """What the tables read of an `rlhflab eval` report: J, Ĵ and KL per context set."""
    return {k: {m: evaluation[k][m] for m in ("J", "J_hat", "kl")} for k in ("seen", "unseen")}


def table(per_seed: dict[int, dict], iterations: int) -> str:
    seeds = ", ".join(map(str, per_seed))
    lines = [
        f"Training rollouts (seen prompts), mean ± sd over seeds {seeds}: J (oracle) / KL to π_0 by iteration.",
        "",
    ]
    lines.append("| iteration | " + " | ".join(f"{o} J | {o} KL" for o in OBJECTIVES) + " |")
    lines.append("|---|" + "---|---|" * len(OBJECTIVES))
    for i in range(0, iterations, max(1, iterations // 8)) if iterations > 8 else range(iterations):
        cells = []
        for o in OBJECTIVES:
            cells.append(overopt.mean_sd([s[o]["curve"][i]["J"] for s in per_seed.values()]))
            cells.append(f"{statistics.mean(s[o]['curve'][i]['kl'] for s in per_seed.values()):.2f}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    last = iterations - 1
    lines += ["", f"Peak J of each run's training curve and where it fell to by iteration {iterations}:", ""]
    lines.append("| objective | peak J | KL at peak | final J | final KL | final Ĵ |")
    lines.append("|---|---|---|---|---|---|")
    for o in OBJECTIVES:
        peaks = [max(s[o]["curve"], key=lambda r: r["J"]) for s in per_seed.values()]
        finals = [s[o]["curve"][last] for s in per_seed.values()]
        lines.append(
            f"| {o} | {overopt.mean_sd([p['J'] for p in peaks])} | {statistics.mean(p['kl'] for p in peaks):.2f} | "
            f"{overopt.mean_sd([f['J'] for f in finals])} | {statistics.mean(f['kl'] for f in finals):.2f} | "
            f"{overopt.mean_sd([f['J_hat'] for f in finals])} |"
        )
    lines += ["", "Final policies on held-out prompts (`rlhflab eval`), mean ± sd over seeds:", ""]
    lines.append(
        "| objective | J seen | J unseen | KL seen | Ĵ seen | J seen − single, per seed | J unseen − single (paired) "
        "| per seed |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for o in OBJECTIVES:
        seen = [s[o]["eval"]["seen"] for s in per_seed.values()]
        unseen = [s[o]["eval"]["unseen"] for s in per_seed.values()]
        paired = {
            k: [s[o]["eval"][k]["J"] - s["single"]["eval"][k]["J"] for s in per_seed.values()]
            for k in ("seen", "unseen")
        }
        lines.append(
            f"| {o} | {overopt.mean_sd([r['J'] for r in seen])} | {overopt.mean_sd([r['J'] for r in unseen])} | "
            f"{statistics.mean(r['kl'] for r in seen):.2f} | {overopt.mean_sd([r['J_hat'] for r in seen])} | "
            f"{overopt.each_seed(paired['seen'])} | {overopt.mean_sd(paired['unseen'])} "
            f"| {overopt.each_seed(paired['unseen'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/ensemble-ppo"))
    parser.add_argument("--overopt_root", type=Path, default=Path("runs/ensemble-overopt"))
    parser.add_argument("--pairs", type=int, default=0, help="reward models on the first N pairs (0: all)")
    parser.add_argument("--epochs", type=int, default=2, help="reward-model epochs")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--preferences", default=None)
    parser.add_argument("--kl_coef", type=float, default=0.01)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--eval_prompts", type=int, default=32)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--tabulate", action="store_true", help="only tabulate finished (or stored) seeds")
    parser.add_argument("--output", type=Path, default=None, help="default: results/ensemble_ppo[-PAIRS].md")
    args = parser.parse_args()
    suffix = overopt.setting(args)
    per_seed = {}
    for seed in args.seeds:
        scores_run = args.overopt_root / f"seed-{seed}"
        ensemble_dir = scores_run / f"ensemble{suffix}"
        if not args.tabulate:
            scores_run.mkdir(parents=True, exist_ok=True)
            overopt._train_ensemble(args, seed, overopt._preferences(args, seed, scores_run), ensemble_dir)
        key = f"seed-{seed}{suffix}-beta{args.kl_coef:g}"
        runs = {}
        for objective in args.objectives:
            run = args.root / key / objective
            spec = reward_spec(ensemble_dir, objective)
            if not args.tabulate:
                run.parent.mkdir(parents=True, exist_ok=True)
                _ppo(args, seed, spec, run)
                _eval(args, seed, spec, run)
            if (run / "eval.json").is_file():
                runs[objective] = {"curve": curve(run), "eval": summary(json.loads((run / "eval.json").read_text()))}
        if len(runs) == len(OBJECTIVES):
            overopt.store_seed("ensemble_ppo", key, runs)
        else:
            runs = overopt.stored_seed("ensemble_ppo", key) or runs
        if len(runs) == len(OBJECTIVES):
            per_seed[seed] = runs
    if not per_seed:
        print("no seed has every objective finished")
        return 1
    text = (
        f"# PPO at β = {args.kl_coef:g}: one reward model against an ensemble of {args.members}\n\n"
        f"`python benchmarks/ensemble_ppo.py --seeds {' '.join(map(str, per_seed))}"
        f"{f' --pairs {args.pairs}' if args.pairs else ''} --kl_coef {args.kl_coef:g} "
        f"--iterations {args.iterations} --learning_rate {args.learning_rate:g}` (reward models on {args.pairs or 'all'} pairs, as in "
        "ensemble_overopt.py; single = member 0; uwo with λ = 1; 16 prompts × 1 sample per iteration; "
        f"eval on {args.eval_prompts} seen and {args.eval_prompts} unseen prompts × 2 samples).\n\n"
        + table(per_seed, args.iterations)
    )
    (args.output or RESULTS / f"ensemble_ppo{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
