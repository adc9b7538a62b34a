"""A shared-trunk ensemble (one backbone, K heads, one run) against K separately trained reward
models, on the real default models: what does the cheaper variant cost in accuracy and in the
members' disagreement as an uncertainty signal (Section 8; Coste et al. 2023)?

    python benchmarks/shared_trunk.py --seeds 0 1 2             # trains, evaluates, tabulates
    python benchmarks/shared_trunk.py --seeds 0 1 2 --tabulate  # only tabulates stored seeds

Per seed, the separate ensemble is `benchmarks/ensemble_overopt.py`'s (K MiniLM members on the
seed's 960 simulated pairs; trained if missing). The shared one is `rlhflab reward --ensemble K
--ensemble_trunk shared` on the same pairs with the same options. Both are then read by
`rlhflab eval` on the same samples of π_0 (SmolLM2-135M-Instruct) on seen and unseen prompts:
Spearman of the ensemble mean with R*, the members' mean disagreement, and the Spearman of that
disagreement with the mean's error (the `uncertainty` report). Results:
benchmarks/results/shared_trunk.md; each seed's numbers are kept in results/shared_trunk/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import ensemble_overopt as overopt
from scipy.stats import spearmanr

VARIANTS = ("separate", "shared")


def _eval(args, seed: int, ensemble: Path) -> dict:
    path = ensemble / "eval-pi0.json"
    if not path.is_file():
        command = [sys.executable, "-m", "rlhflab.cli", "eval", "--policy", "smollm2-135m-instruct"]
        command += ["--oracle", "sentiment", "--reward_model", ensemble, "--limit", args.eval_prompts]
        command += ["--num_samples", args.eval_samples, "--max_new_tokens", 24, "--seed", seed, "--output", path]
        subprocess.run([str(c) for c in command], check=True)
    return json.loads(path.read_text())


def summary(evaluation: dict, ensemble: Path) -> dict:
    """Per context set: Spearman(R̄, R*), mean disagreement, Spearman(disagreement, error); wall time."""
    out = {"seconds": json.loads((ensemble / "wall_seconds.json").read_text())["seconds"]}
    for name in ("seen", "unseen"):
        e = evaluation[name]
        out[name] = {
            "spearman": float(spearmanr(e["proxy_rewards"], e["oracle_rewards"]).statistic),
            "disagreement": e["uncertainty"]["mean_disagreement"],
            "uncertainty_spearman": e["uncertainty"]["spearman"],
        }
    return out


def table(per_seed: dict[int, dict]) -> str:
    lines = [
        "| trunk | set | Spearman(R̄, R*) | member disagreement | Spearman(disagreement, error) | disagreement unseen / seen |",
        "|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        for name in ("seen", "unseen"):
            rows = [s[variant][name] for s in per_seed.values()]
            ratio = [
                s[variant]["unseen"]["disagreement"] / s[variant]["seen"]["disagreement"] for s in per_seed.values()
            ]
            lines.append(
                f"| {variant} | {name} | {overopt.mean_sd([r['spearman'] for r in rows])} "
                f"| {overopt.mean_sd([r['disagreement'] for r in rows])} "
                f"| {overopt.mean_sd([r['uncertainty_spearman'] for r in rows])} "
                f"| {', '.join(f'{r:.2f}' for r in ratio) if name == 'unseen' else ''} |"
            )
    seeds = ", ".join(map(str, per_seed))
    lines += ["", f"Shared minus separate, paired by seed (mean ± sd; then seeds {seeds}):", ""]
    lines.append("| set | Spearman(R̄, R*) | per seed | Spearman(disagreement, error) | per seed |")
    lines.append("|---|---|---|---|---|")
    for name in ("seen", "unseen"):
        cells = []
        for k in ("spearman", "uncertainty_spearman"):
            diff = [s["shared"][name][k] - s["separate"][name][k] for s in per_seed.values()]
            cells += [overopt.mean_sd(diff), overopt.each_seed(diff)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Training wall time per seed ({seeds}), s:", ""]
    for variant in VARIANTS:
        lines.append(f"- {variant}: " + ", ".join(f"{s[variant]['seconds']:.0f}" for s in per_seed.values()))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--overopt_root", type=Path, default=Path("runs/ensemble-overopt"))
    parser.add_argument("--eval_prompts", type=int, default=32, help="prompts per context set")
    parser.add_argument("--eval_samples", type=int, default=4, help="samples of π_0 per prompt")
    parser.add_argument("--tabulate", action="store_true", help="only tabulate stored seeds")
    args = parser.parse_args()
    # ensemble_overopt's defaults: all pairs, 2 epochs, 4 members
    args.pairs, args.epochs, args.members, args.preferences = 0, 2, 4, None
    per_seed = {}
    for seed in args.seeds:
        key = f"seed-{seed}-k{args.members}-{args.eval_prompts}x{args.eval_samples}"
        if not args.tabulate:
            run = args.overopt_root / f"seed-{seed}"
            run.mkdir(parents=True, exist_ok=True)
            prefs = overopt._preferences(args, seed, run)
            result = {}
            for variant in VARIANTS:
                ensemble = run / ("ensemble" if variant == "separate" else "ensemble-shared")
                extra = ("--ensemble_trunk", "shared") if variant == "shared" else ()
                overopt._train_ensemble(args, seed, prefs, ensemble, extra)
                result[variant] = summary(_eval(args, seed, ensemble), ensemble)
            overopt.store_seed("shared_trunk", key, result)
        stored = overopt.stored_seed("shared_trunk", key)
        if stored:
            per_seed[seed] = stored
    if not per_seed:
        print("no seed stored")
        return 1
    text = (
        f"# A shared-trunk ensemble against separate members ({args.members} each)\n\n"
        f"`python benchmarks/shared_trunk.py --seeds {' '.join(map(str, per_seed))}` (MiniLM reward models on "
        f"each seed's 960 simulated pairs, 2 epochs; `rlhflab eval` of π_0 on {args.eval_prompts} seen and "
        f"{args.eval_prompts} unseen prompts × {args.eval_samples}; mean ± sd over seeds).\n\n" + table(per_seed)
    )
    (overopt.RESULTS / "shared_trunk.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
