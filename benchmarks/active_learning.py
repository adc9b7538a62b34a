"""Labels where they teach the reward model most: how many labels an uncertainty-ordered (or
margin-ordered) queue needs to reach a held-out reward-model accuracy, against a random one.

    python benchmarks/active_learning.py --quick --seeds 0 1 2     # tiny models, a few minutes
    python benchmarks/active_learning.py --seeds 0 1 2             # SmolLM2-135M + MiniLM, sentiment R*

Per seed, the pool is built as the demo builds its own (src/rlhflab/commands/pool.py): π_0 sampled on
``--prompts`` train prompts × ``--samples_per_prompt``, every pair of a prompt's samples labelled by
the simulated annotator pool driven by R* (``rlhflab annotate``). A quarter of the prompts
(``--heldout``) are held out: their pairs measure accuracy against R*'s own order of each pair (no
label noise; pairs R* ties are left out). The rest is the unlabelled pool, whose labels a strategy
only sees once it asks for them:

- every strategy starts from the same random ``--batch`` labels;
- after each batch, a K = ``--ensemble`` shared-trunk ensemble (``rlhflab reward --ensemble K
  --ensemble_trunk shared``) is trained afresh on the labels so far (the same seed at the same step
  for every strategy: they differ only in which labels they hold) and its mean is measured;
- then the next batch is the pool's top ``--batch`` pairs by the strategy's score
  (rlhflab.feedback.acquisition): ``random`` a seeded permutation, ``uncertainty`` the members'
  disagreement on P(a ≻ b), ``margin`` the smallest gap of the ensemble mean.

The same learner for every strategy, so the curves compare the labels alone. Printed and written
to ``--output`` (Markdown, with the curves as PNG beside it): labels needed to reach each
``--targets`` accuracy per strategy (mean ± standard error over the seeds that reached it), the
accuracy at each label count, and the paired difference against random. Each seed's curves are
kept in ``--work`` and reused (delete it to start afresh).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlhflab.commands.collect import AnnotateConfig, SampleConfig, run_annotate, run_sample
from rlhflab.commands.presets import PRESETS
from rlhflab.data import load_prompts
from rlhflab.data.render import completion_text, prompt_text
from rlhflab.evaluation.plots import pyplot
from rlhflab.feedback.acquisition import acquisition_order, random_scores, score_pairs
from rlhflab.files import write_json, write_text
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source
from rlhflab.seeds import derive_seed
from rlhflab.train.reward_model import RewardConfig, train_shared_trunk_ensemble

STRATEGIES = ("random", "uncertainty", "margin")
DEMO = PRESETS["demo"]
# --quick: the demo's tiny models on a smaller pool with shorter samples (the tiny reward model reads
# characters, so sample length is what its training costs), to finish in minutes on two CPU cores.
QUICK = dict(prompts=64, heldout=0.4, max_new_tokens=16, max_labels=96, min_steps=16, targets=[0.65, 0.7, 0.75])
FULL = dict(heldout=0.25, max_labels=256, min_steps=32, targets=[0.6, 0.65, 0.7])


def build_pool(args, seed: int, work: Path, oracle) -> tuple[list, list]:
    """(train pairs, held-out pairs) of one seed: π_0's samples labelled by the simulated annotators,
    split by prompt; the held-out pairs R* ties are left out."""
    samples_path, labels_path = work / "samples.jsonl", work / "preferences.jsonl"
    prompts = load_prompts("train")[: args.prompts]
    policy, tokenizer = load_policy(args.policy)
    sample_cfg = SampleConfig(
        policy=args.policy,
        num_samples=args.samples_per_prompt,
        max_new_tokens=args.max_new_tokens,
        use_chat_template=not args.quick,  # as the demo: the tiny model has no chat training to follow
        seed=seed,
        output=str(samples_path),
    )
    samples = run_sample(sample_cfg, policy, tokenizer, prompts)
    annotate_cfg = AnnotateConfig(
        samples=str(samples_path), oracle=args.oracle, feedback="preference", seed=seed, output=str(labels_path)
    )
    labels = run_annotate(annotate_cfg, samples)
    contexts = sorted({prompt_text(r.prompt) for r in labels})
    held = set(
        np.random.default_rng(derive_seed(seed, "heldout")).permutation(contexts)[: round(args.heldout * len(contexts))]
    )
    heldout = [r for r in labels if prompt_text(r.prompt) in held]
    return [r for r in labels if prompt_text(r.prompt) not in held], untied(heldout, oracle)


def untied(pairs: list, oracle) -> list:
    """The pairs whose two completions R* scores differently: only they have an order to get right."""
    contexts, first, second = texts(pairs)
    keep = (oracle(contexts, first) != oracle(contexts, second)).tolist()
    return [p for p, k in zip(pairs, keep) if k]


def texts(pairs: list) -> tuple[list[str], list[str], list[str]]:
    return (
        [prompt_text(p.prompt) for p in pairs],
        [completion_text(p.chosen) for p in pairs],
        [completion_text(p.rejected) for p in pairs],
    )


def oracle_order_accuracy(reward, oracle, heldout: list) -> float:
    """How often R_phi orders a held-out pair (none of them an R* tie) as R* does; an R_phi tie counts 1/2."""
    contexts, first, second = texts(heldout)
    truth = (oracle(contexts, first) - oracle(contexts, second)).sign()
    guess = (reward(contexts, first) - reward(contexts, second)).sign()
    return float(((guess == truth).double() + 0.5 * (guess == 0).double()).mean())


def train_ensemble(args, labelled: list, seed: int, out: Path):
    """A fresh K-head shared-trunk ensemble on ``labelled``, at least ``--min_steps`` optimiser steps."""
    shutil.rmtree(out, ignore_errors=True)
    batch = min(RewardConfig.batch_size, len(labelled))
    epochs = max(args.reward_epochs, args.min_steps * batch / len(labelled))
    cfg = RewardConfig(
        model=args.reward_backbone,
        ensemble=args.ensemble,
        ensemble_trunk="shared",
        batch_size=batch,
        num_epochs=epochs,
        learning_rate=args.reward_learning_rate,
        seed=seed,
        output_dir=str(out),
        progress=False,
        mixed_precision="no",  # the reward model stays fp32 (models.scoring), as in the demo
    )
    cfg.validate()
    train_shared_trunk_ensemble(cfg, labelled)
    return load_reward_source(str(out / "reward_model"))


def run_strategy(args, strategy: str, seed: int, pool: list, heldout: list, oracle, work: Path) -> list[dict]:
    """One strategy's curve: [{"labels", "accuracy", "seconds"}] after each batch."""
    first_batch = acquisition_order(random_scores(len(pool), derive_seed(seed, "first batch")))[: args.batch]
    labelled, curve = list(first_batch), []
    budget = min(args.max_labels, len(pool))
    while True:
        t0 = time.perf_counter()
        step = len(curve)
        reward = train_ensemble(
            args, [pool[i] for i in labelled], derive_seed(seed, "reward", step) % 2**31, work / "reward"
        )
        accuracy = oracle_order_accuracy(reward, oracle, heldout)
        curve.append({"labels": len(labelled), "accuracy": accuracy, "seconds": time.perf_counter() - t0})
        print(f"[active] seed {seed} {strategy:<11} {len(labelled):>4} labels: accuracy {accuracy:.3f}", flush=True)
        if len(labelled) >= budget:
            return curve
        taken = set(labelled)
        rest = [i for i in range(len(pool)) if i not in taken]
        contexts, first, second = texts([pool[i] for i in rest])
        scores = score_pairs(strategy, reward, contexts, first, second, derive_seed(seed, "random order", step))
        labelled += [rest[j] for j in acquisition_order(scores)[: min(args.batch, budget - len(labelled))]]


def run_seed(args, seed: int, oracle) -> dict:
    work = Path(args.work) / f"seed-{seed}"
    done = work / "curves.json"
    if done.is_file():
        return json.loads(done.read_text())
    work.mkdir(parents=True, exist_ok=True)
    pool, heldout = build_pool(args, seed, work, oracle)
    result = {"pool": len(pool), "heldout": len(heldout), "curves": {}}
    for strategy in args.strategies:
        result["curves"][strategy] = run_strategy(args, strategy, seed, pool, heldout, oracle, work)
    shutil.rmtree(work / "reward", ignore_errors=True)
    write_json(done, result)
    return result


def labels_to_reach(curve: list[dict], target: float) -> int | None:
    return next((point["labels"] for point in curve if point["accuracy"] >= target), None)


def mean_se(values: list[float]) -> str:
    if not values:
        return "–"
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return (
        f"{statistics.mean(values):.1f} ± {se:.1f}"
        if abs(statistics.mean(values)) >= 2
        else f"{statistics.mean(values):.3f} ± {se:.3f}"
    )


def target_table(args, per_seed: dict[int, dict]) -> list[str]:
    n = len(per_seed)
    lines = [
        "| strategy | " + " | ".join(f"labels to {t:.2f}" for t in args.targets) + " |",
        "|---|" + "---|" * len(args.targets),
    ]
    for strategy in args.strategies:
        cells = []
        for target in args.targets:
            reached = [labels_to_reach(s["curves"][strategy], target) for s in per_seed.values()]
            hits = [r for r in reached if r is not None]
            cells.append(
                f"{mean_se(hits)} ({len(hits)}/{n} seeds; per seed {', '.join(str(r) if r else '>' + str(args.max_labels) for r in reached)})"
            )
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def curve_table(args, per_seed: dict[int, dict]) -> list[str]:
    counts = [p["labels"] for p in next(iter(per_seed.values()))["curves"][args.strategies[0]]]
    others = [s for s in args.strategies if s != "random"]
    header = (
        "| labels | "
        + " | ".join(args.strategies)
        + "".join(f" | {s} − random (paired)" for s in others if "random" in args.strategies)
        + " |"
    )
    lines = [header, "|---" * (1 + len(args.strategies) + (len(others) if "random" in args.strategies else 0)) + "|"]
    for k, count in enumerate(counts):
        acc = {s: [seed["curves"][s][k]["accuracy"] for seed in per_seed.values()] for s in args.strategies}
        row = [mean_se(acc[s]) for s in args.strategies]
        if "random" in args.strategies:
            row += [mean_se([a - b for a, b in zip(acc[s], acc["random"])]) for s in others]
        lines.append(f"| {count} | " + " | ".join(row) + " |")
    return lines


def plot(args, per_seed: dict[int, dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy in args.strategies:
        curves = [s["curves"][strategy] for s in per_seed.values()]
        x = np.array([p["labels"] for p in curves[0]])
        y = np.array([[p["accuracy"] for p in c] for c in curves])
        mean = y.mean(0)
        se = y.std(0, ddof=1) / math.sqrt(len(curves)) if len(curves) > 1 else np.zeros_like(mean)
        ax.plot(x, mean, marker="o", markersize=3, label=strategy)
        ax.fill_between(x, mean - se, mean + se, alpha=0.2)
    for target in args.targets:
        ax.axhline(target, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("labels acquired")
    ax.set_ylabel("held-out accuracy against R*'s order")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny in-process models and the keyword:e oracle.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--policy", default=None, help="π_0 (default: the demo preset's).")
    parser.add_argument("--reward_backbone", default=None, help="Reward-model backbone (default: the demo preset's).")
    parser.add_argument("--oracle", default=None, help="R* of the simulated annotators (default: the demo preset's).")
    parser.add_argument("--prompts", type=int, default=None, help="Train prompts sampled (default: the demo preset's).")
    parser.add_argument("--samples_per_prompt", type=int, default=4, help="Every pair of them is labelled.")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="Default: the demo preset's.")
    parser.add_argument(
        "--heldout",
        type=float,
        default=None,
        help="Share of the prompts whose pairs are held out (default 0.25; quick 0.4).",
    )
    parser.add_argument("--batch", type=int, default=16, help="Labels acquired per batch (the first batch is random).")
    parser.add_argument("--max_labels", type=int, default=None, help="Stop acquiring here (default 256; quick 96).")
    parser.add_argument("--ensemble", type=int, default=3, help="K heads of the shared-trunk ensemble.")
    parser.add_argument("--reward_learning_rate", type=float, default=None, help="Default: the demo preset's.")
    parser.add_argument("--reward_epochs", type=float, default=None, help="Default: the demo preset's.")
    parser.add_argument(
        "--min_steps",
        type=int,
        default=None,
        help="Optimiser steps at least, however few the labels (default 32; quick 16).",
    )
    parser.add_argument("--targets", type=float, nargs="+", default=None, help="Held-out accuracies to reach.")
    parser.add_argument("--work", default=None, help="Where each seed's pool and curves are kept.")
    parser.add_argument("--output", default=None, help="Markdown results; the PNG goes beside it.")
    args = parser.parse_args(argv)
    preset = {**DEMO["quick"], **QUICK} if args.quick else {**DEMO["full"], **FULL}
    for name, key in (("policy", "policy"), ("reward_backbone", "reward_backbone"), ("oracle", "oracle"),
                      ("prompts", "feedback_prompts"), ("max_new_tokens", "max_new_tokens"),
                      ("reward_learning_rate", "reward_learning_rate"), ("reward_epochs", "reward_epochs")):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name, preset[key]))
    for name in ("heldout", "max_labels", "min_steps", "targets"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    suffix = "_quick" if args.quick else ""
    args.work = args.work or f"runs/active-learning{suffix}"
    args.output = args.output or f"benchmarks/results/active_learning{suffix}.md"
    if args.ensemble < 2:
        parser.error("--ensemble must be at least 2 (uncertainty is the members' disagreement)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/active_learning.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    oracle = load_reward_source(args.oracle)
    per_seed = {seed: run_seed(args, seed, oracle) for seed in args.seeds}
    first = next(iter(per_seed.values()))
    output = Path(args.output)
    png = output.with_suffix(".png")
    title = f"{args.policy} samples, {args.reward_backbone} K={args.ensemble} ensemble, R* {args.oracle}"
    plot(args, per_seed, png, title)
    seconds = sum(p["seconds"] for s in per_seed.values() for c in s["curves"].values() for p in c)
    lines = [
        "# Active preference learning: labels to reach a held-out reward-model accuracy",
        "",
        f"Command: `{command}`",
        "",
        f"π_0 `{args.policy}` sampled on {args.prompts} train prompts × {args.samples_per_prompt} "
        f"(max_new_tokens {args.max_new_tokens}), every pair labelled by the simulated annotator pool "
        f"driven by R* `{args.oracle}`; {args.heldout:.0%} of the prompts held out "
        f"({first['heldout']} pairs that R* does not tie, seed {next(iter(per_seed))}; accuracy against R*'s order of each), "
        f"the other {first['pool']} pairs the unlabelled pool. Batches of {args.batch} (the first random, the "
        f"same for every strategy) up to {args.max_labels} labels; after each, a K={args.ensemble} shared-trunk "
        f"ensemble on `{args.reward_backbone}` retrained from scratch (lr {args.reward_learning_rate:g}, "
        f"{args.reward_epochs:g} epochs, at least {args.min_steps} steps), its mean measured. "
        f"Mean ± standard error over seeds {', '.join(map(str, per_seed))}.",
        "",
        "## Labels needed to reach a held-out accuracy",
        "",
        "Mean ± se over the seeds that reached it within the budget.",
        "",
        *target_table(args, per_seed),
        "",
        "## Accuracy by labels acquired",
        "",
        f"![curves]({png.name})",
        "",
        *curve_table(args, per_seed),
        "",
        f"Training and scoring time {seconds:.0f} s; wall time of this command {time.perf_counter() - t0:.0f} s "
        "(seeds kept in the work folder are reused).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
