"""Over-optimisation of best-of-n on the real default models, one reward model against an ensemble
(Coste et al. 2023; Sections 7.5, 7.7): does combining K members by mean, WCO or UWO delay the fall of
the true reward J as n (and KL) grows?

    python benchmarks/ensemble_overopt.py --seeds 0 1 2            # trains, samples, scores, tabulates
    python benchmarks/ensemble_overopt.py --seeds 0 1 2 --tabulate # only tabulates finished seeds

Per seed: an ensemble of K MiniLM reward models (`rlhflab reward --ensemble K`) on a preference file
(default: the pairs of the 1-round `rlhflab loop` run of that seed, `benchmarks/loop_rounds.py`),
N samples of π_0 (SmolLM2-135M-Instruct) per prompt on seen and unseen prompts, each scored by every
member and by the oracle R*. Best-of-n for n = 1 … N is then exact *on that sample*: each prompt's N
samples are an empirical π_ref, and the best of n i.i.d. draws from it has the distribution of
`best_of_n_math.best_of_n_distribution` (ties exact). The single model is member 0 (the same training
as every member). KL is the usual log n − (n−1)/n. Results: benchmarks/results/ensemble_overopt.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from rlhflab import workflow
from rlhflab.best_of_n_math import best_of_n_distribution, best_of_n_kl_bound
from rlhflab.data import prompt_text
from rlhflab.ensemble import ensemble_reward, parse_objective
from rlhflab.models import load_policy
from rlhflab.rewards import load_reward_source

RESULTS = Path(__file__).parent / "results" / "ensemble_overopt.md"
OBJECTIVES = {"single": None, "mean": "mean", "wco": "wco", "uwo": "uwo:1"}


def _train_ensemble(args, seed: int, out: Path) -> None:
    if (out / "ensemble.json").is_file():
        return
    prefs = args.preferences or f"runs/loop-rounds/rounds-1/seed-{seed}/round-01/preferences.jsonl"
    command = [sys.executable, "-m", "rlhflab.cli", "reward", "--model", "minilm-l6", "--data", prefs]
    command += ["--ensemble", str(args.members), "--learning_rate", "5e-5", "--num_epochs", "2", "--seed", str(seed)]
    where = ["--resume", str(out)] if out.exists() else ["--output_dir", str(out)]
    subprocess.run([*command, *where], check=True)


def _scores(args, seed: int, run: Path) -> dict:
    """Every sample's member rewards and oracle reward, per context set (cached in scores.json)."""
    path = run / "scores.json"
    if path.is_file():
        return json.loads(path.read_text())
    policy, tokenizer = load_policy("smollm2-135m-instruct")
    ensemble = load_reward_source(str(run / "ensemble")).ensemble
    oracle = load_reward_source("sentiment")
    sets = {
        "seen": workflow.load_prompts("train")[: args.prompts],
        "unseen": workflow.load_prompts("unseen", args.prompts),
    }
    out = {}
    for name, prompts in sets.items():
        sample_cfg = workflow.SampleConfig(
            policy="smollm2-135m-instruct",
            num_samples=args.n,
            max_new_tokens=24,
            generation_batch_size=1,  # one prompt per generate call: its n rows are the batch
            seed=seed + 7,
            output="",
        )
        samples = workflow.sample(sample_cfg, policy, tokenizer, prompts)
        contexts = [prompt_text(s.prompt) for s in samples for _ in s.completions]
        texts = [c for s in samples for c in s.completions]
        out[name] = {
            "members": ensemble.member_rewards(contexts, texts).view(len(ensemble), len(prompts), args.n).tolist(),
            "oracle": oracle(contexts, texts).view(len(prompts), args.n).tolist(),
        }
    path.write_text(json.dumps(out))
    return out


def curves(scores: dict, ns: list[int]) -> dict:
    """J (oracle) and Ĵ (the selecting reward) of best-of-n per objective and context set."""
    result = {}
    for contexts, s in scores.items():
        members, oracle = (
            torch.tensor(s["members"], dtype=torch.float64),
            torch.tensor(s["oracle"], dtype=torch.float64),
        )
        uniform = torch.full_like(oracle, 1.0 / oracle.shape[1])
        for name, spec in OBJECTIVES.items():
            proxy = members[0] if spec is None else ensemble_reward(members, parse_objective(spec))
            rows = []
            for n in ns:
                chosen = best_of_n_distribution(uniform, proxy, n)
                rows.append(
                    {
                        "n": n,
                        "kl": best_of_n_kl_bound(n),
                        "J": float((chosen * oracle).sum(-1).mean()),
                        "J_hat": float((chosen * proxy).sum(-1).mean()),
                    }
                )
            result[f"{contexts}/{name}"] = rows
    return result


def table(per_seed: dict[int, dict], ns: list[int]) -> str:
    lines = []
    for contexts in ("seen", "unseen"):
        lines += [
            f"J (oracle) of best-of-n on {contexts} prompts, mean ± sd over seeds {', '.join(map(str, per_seed))}:",
            "",
        ]
        lines.append("| n | KL | " + " | ".join(OBJECTIVES) + " | best |")
        lines.append("|---|---|" + "---|" * (len(OBJECTIVES) + 1))
        for i, n in enumerate(ns):
            means = {}
            cells = []
            for name in OBJECTIVES:
                values = [c[f"{contexts}/{name}"][i]["J"] for c in per_seed.values()]
                means[name] = statistics.mean(values)
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{means[name]:+.3f} ± {sd:.3f}")
            lines.append(
                f"| {n} | {best_of_n_kl_bound(n):.2f} | " + " | ".join(cells) + f" | {max(means, key=means.get)} |"
            )
        peak = {}
        for name in OBJECTIVES:
            mean_curve = [
                statistics.mean(c[f"{contexts}/{name}"][i]["J"] for c in per_seed.values()) for i in range(len(ns))
            ]
            best = max(range(len(ns)), key=lambda i: mean_curve[i])
            peak[name] = f"{mean_curve[best]:+.3f} at n = {ns[best]}"
        lines += ["", "Peak of the mean curve: " + "; ".join(f"{k} {v}" for k, v in peak.items()) + ".", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/ensemble-overopt"))
    parser.add_argument("--preferences", default=None, help="preference file (default: the seed's 1-round loop pairs)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per context set")
    parser.add_argument("--n", type=int, default=256, help="samples per prompt: the largest n")
    parser.add_argument("--tabulate", action="store_true")
    args = parser.parse_args()
    ns = [2**k for k in range(int(math.log2(args.n)) + 1)]
    per_seed = {}
    for seed in args.seeds:
        run = args.root / f"seed-{seed}"
        if not args.tabulate:
            run.mkdir(parents=True, exist_ok=True)
            _train_ensemble(args, seed, run / "ensemble")
            _scores(args, seed, run)
        if (run / "scores.json").is_file():
            per_seed[seed] = curves(json.loads((run / "scores.json").read_text()), ns)
    text = (
        f"# Best-of-n over-optimisation: one reward model against an ensemble of {args.members}\n\n"
        f"`python benchmarks/ensemble_overopt.py --seeds {' '.join(map(str, per_seed))}` "
        f"({args.prompts} seen and {args.prompts} unseen prompts × {args.n} samples of π_0 per seed; "
        "single = member 0; uwo with λ = 1).\n\n" + table(per_seed, ns)
    )
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
