"""Over-optimisation of best-of-n on the real default models, one reward model against an ensemble
(Coste et al. 2023; Sections 7.5, 7.7): does combining K members by mean, WCO or UWO delay the fall of
the true reward J as n (and KL) grows?

    python benchmarks/ensemble_overopt.py --seeds 0 1 2            # trains, samples, scores, tabulates
    python benchmarks/ensemble_overopt.py --seeds 0 1 2 --tabulate # only tabulates finished seeds

Per seed: an ensemble of K MiniLM reward models (`rlhflab reward --ensemble K`) on a preference file
(default: π_0's samples on 160 training prompts labelled by the simulated pool; `--pairs N` keeps the
first N pairs, a weaker reward model that best-of-n can over-optimise sooner),
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
import time
from pathlib import Path

import torch

from rlhflab.commands.collect import SampleConfig, run_sample
from rlhflab.data import load_prompts, prompt_text
from rlhflab.decoding.best_of_n_math import best_of_n_distribution, best_of_n_kl_bound
from rlhflab.models import load_policy
from rlhflab.rewards.ensemble import ensemble_reward, parse_objective
from rlhflab.rewards.registry import load_reward_source

RESULTS = Path(__file__).parent / "results"
OBJECTIVES = {"single": None, "mean": "mean", "wco": "wco", "uwo": "uwo:1"}


def _rlhflab(*args) -> None:
    subprocess.run([sys.executable, "-m", "rlhflab.cli", *map(str, args)], check=True)


def _preferences(args, seed: int, run: Path) -> Path:
    """The seed's preference file: π_0's samples on the first 160 training prompts labelled by the
    default simulated pool (``rlhflab sample`` then ``rlhflab annotate``), cut to ``--pairs``."""
    if args.preferences:
        return Path(args.preferences.format(seed=seed))
    full = run / "preferences.jsonl"
    if not full.is_file():
        samples = run / "feedback-samples.jsonl"
        if not samples.is_file():
            _rlhflab(
                "sample",
                "--limit",
                160,
                "--num_samples",
                4,
                "--max_new_tokens",
                24,
                "--seed",
                seed,
                "--output",
                samples,
            )
        _rlhflab("annotate", "--samples", samples, "--seed", seed, "--output", full)
    if not args.pairs:
        return full
    cut = run / f"preferences-{args.pairs}.jsonl"
    if not cut.is_file():
        lines = full.read_text().splitlines(keepends=True)[: args.pairs]
        cut.write_text("".join(lines))
    return cut


def store_seed(kind: str, key: str, summary: dict) -> None:
    """Keep one seed's summary in ``benchmarks/results/KIND/KEY.json``: ``runs/`` is not kept between
    checkouts, and a table over seeds run in different sessions needs each seed's numbers."""
    path = RESULTS / kind / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")


def stored_seed(kind: str, key: str) -> dict | None:
    """A seed's summary kept by :func:`store_seed`, or None."""
    path = RESULTS / kind / f"{key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def mean_sd(values: list[float]) -> str:
    """Mean ± sd over seeds, signed; one seed has no spread to show."""
    if len(values) == 1:
        return f"{values[0]:+.3f}"
    return f"{statistics.mean(values):+.3f} ± {statistics.stdev(values):.3f}"


def each_seed(values: list[float]) -> str:
    """The values of each seed, signed, in seed order."""
    return ", ".join(f"{v:+.3f}" for v in values)


def setting(args) -> str:
    """Folder-name suffix of the reward-model setting (all pairs, or the first ``--pairs``)."""
    return f"-{args.pairs}" if args.pairs else ""


def _train_ensemble(args, seed: int, prefs: Path, out: Path, extra: tuple = ()) -> None:
    """``rlhflab reward --ensemble K`` on ``prefs`` into ``out`` (unless done); ``extra``: more options."""
    if (out / "ensemble.json").is_file():
        return
    command = ["reward", "--model", "minilm-l6", "--data", prefs, "--ensemble", args.members]
    command += ["--learning_rate", "5e-5", "--num_epochs", args.epochs, "--seed", seed]
    where = ["--resume", out] if out.exists() else ["--output_dir", out]
    start = time.perf_counter()
    _rlhflab(*command, *where, *extra)
    # Wall time of the whole training (a resumed run counts only its last part), for shared_trunk.py.
    (out / "wall_seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))


def _samples(args, seed: int, run: Path) -> dict:
    """N samples of π_0 per prompt with their oracle rewards, per context set (cached)."""
    path = run / "bon-samples.json"
    if path.is_file():
        return json.loads(path.read_text())
    policy, tokenizer = load_policy("smollm2-135m-instruct")
    oracle = load_reward_source("sentiment")
    sets = {
        "seen": load_prompts("train")[: args.prompts],
        "unseen": load_prompts("unseen", args.prompts),
    }
    out = {}
    for name, prompts in sets.items():
        sample_cfg = SampleConfig(
            policy="smollm2-135m-instruct",
            num_samples=args.n,
            max_new_tokens=24,
            generation_batch_size=1,  # one prompt per generate call: its n rows are the batch
            seed=seed + 7,
            output="",
        )
        samples = run_sample(sample_cfg, policy, tokenizer, prompts)
        contexts = [prompt_text(s.prompt) for s in samples for _ in s.completions]
        texts = [c for s in samples for c in s.completions]
        out[name] = {
            "contexts": contexts,
            "texts": texts,
            "oracle": oracle(contexts, texts).view(len(prompts), args.n).tolist(),
        }
    path.write_text(json.dumps(out))
    return out


def _scores(args, seed: int, run: Path, ensemble_dir: Path) -> dict:
    """Every sample's member rewards and oracle reward, per context set (cached per setting)."""
    path = run / f"scores{setting(args)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ensemble = load_reward_source(str(ensemble_dir)).ensemble
    out = {}
    for name, s in _samples(args, seed, run).items():
        rows = len(s["oracle"])
        members = ensemble.member_rewards(s["contexts"], s["texts"]).view(len(ensemble), rows, args.n)
        out[name] = {"members": members.tolist(), "oracle": s["oracle"]}
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
        lines += [
            f"Per seed ({', '.join(map(str, per_seed))}): J at n = {ns[-1]} minus the single model's, paired; "
            f"and how far J at n = {ns[-1]} is below the seed's own peak over n (0: still rising or flat):",
            "",
            "| objective | − single at n = " + str(ns[-1]) + " | mean ± sd | fall from peak |",
            "|---|---|---|---|",
        ]
        for name in OBJECTIVES:
            diff = [c[f"{contexts}/{name}"][-1]["J"] - c[f"{contexts}/single"][-1]["J"] for c in per_seed.values()]
            fall = [
                max(r["J"] for r in c[f"{contexts}/{name}"]) - c[f"{contexts}/{name}"][-1]["J"]
                for c in per_seed.values()
            ]
            lines.append(f"| {name} | {each_seed(diff)} | {mean_sd(diff)} | {', '.join(f'{f:.3f}' for f in fall)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/ensemble-overopt"))
    parser.add_argument(
        "--preferences",
        default=None,
        help="preference file, {seed} replaced (default: made per seed, see _preferences)",
    )
    parser.add_argument("--pairs", type=int, default=0, help="train on the first N pairs only (0: all), a weaker R_phi")
    parser.add_argument("--epochs", type=int, default=2, help="reward-model epochs")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per context set")
    parser.add_argument("--n", type=int, default=256, help="samples per prompt: the largest n")
    parser.add_argument("--tabulate", action="store_true", help="only tabulate finished (or stored) seeds")
    parser.add_argument("--output", type=Path, default=None, help="default: results/ensemble_overopt[-PAIRS].md")
    args = parser.parse_args()
    ns = [2**k for k in range(int(math.log2(args.n)) + 1)]
    per_seed = {}
    for seed in args.seeds:
        run = args.root / f"seed-{seed}"
        if not args.tabulate:
            run.mkdir(parents=True, exist_ok=True)
            ensemble_dir = run / f"ensemble{setting(args)}"
            _train_ensemble(args, seed, _preferences(args, seed, run), ensemble_dir)
            _scores(args, seed, run, ensemble_dir)
        scores = run / f"scores{setting(args)}.json"
        key = f"seed-{seed}{setting(args)}-{args.prompts}x{args.n}"
        if scores.is_file():
            per_seed[seed] = curves(json.loads(scores.read_text()), ns)
            store_seed("ensemble_overopt", key, per_seed[seed])
        elif stored_seed("ensemble_overopt", key):
            per_seed[seed] = stored_seed("ensemble_overopt", key)
    text = (
        f"# Best-of-n over-optimisation: one reward model against an ensemble of {args.members}\n\n"
        f"`python benchmarks/ensemble_overopt.py --seeds {' '.join(map(str, per_seed))}"
        f"{f' --pairs {args.pairs}' if args.pairs else ''} --epochs {args.epochs} --prompts {args.prompts} --n {args.n}` "
        f"({args.prompts} seen and {args.prompts} unseen prompts × {args.n} samples of π_0 per seed; "
        f"reward models on {args.pairs or 'all'} pairs; "
        "single = member 0; uwo with λ = 1).\n\n" + table(per_seed, ns)
    )
    (args.output or RESULTS / f"ensemble_overopt{setting(args)}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
