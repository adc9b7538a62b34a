"""One pooled reward model against one head per annotator, on the real LM (Section 5.1: a scalar
reward fitted to a pool marginalises its annotators away).

    python benchmarks/annotator_heads.py --seeds 0 1 2                          # samples the default policy
    python benchmarks/annotator_heads.py --seeds 0 1 2 --samples 'S-{seed}.jsonl'  # reuses `rlhflab sample` output

Samples ``--prompts`` train prompts × ``--num_samples`` from the default policy (SmolLM2-135M-Instruct),
has a pool of three simulated annotators label every pair of each prompt's samples, two of them by
the ``sentiment`` oracle and one, the minority, by ``brevity`` (``--annotator_oracles``), holds out
20% of each annotator's labels, and trains on the rest (a) one pooled scalar reward model and (b) a
per-annotator reward model (``--per_annotator``), both on MiniLM with the defaults of
``rlhflab reward``. Samples and trained reward models already in ``--work`` are reused (delete it to start afresh).
Prints, and writes to ``--output``, each annotator's held-out accuracy under the
pooled model and under their own head, beside the accuracy of the annotator's own R* on those
labels (the ceiling that their label noise leaves).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

from rlhflab.commands.collect import AnnotateConfig, SampleConfig, run_annotate, run_sample
from rlhflab.commands.train import run_reward
from rlhflab.data import read_records, write_records
from rlhflab.data.render import prompt_text, render_completion
from rlhflab.feedback.agreement import oracle_agreement
from rlhflab.feedback.oracles import load_oracle
from rlhflab.files import write_text
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.reward_model import RewardConfig, split_heldout

# The minority first: member 0 is the pool's least noisy annotator (temperatures double per member),
# so the minority's labels carry enough signal for a head to learn from.
DEFAULT_ORACLES = "brevity,sentiment,sentiment"


def accuracy(source, pairs) -> float:
    """Fraction of pairs whose chosen output the source scores higher (a tie counts one half)."""
    contexts = [prompt_text(p.prompt) for p in pairs]
    chosen = source(contexts, [render_completion(p.chosen) for p in pairs])
    rejected = source(contexts, [render_completion(p.rejected) for p in pairs])
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())


def run_seed(args, seed: int, samples_path: str | None) -> dict:
    """One seed: label, split, train pooled and per-annotator models; held-out accuracies by annotator."""
    work = Path(args.work) / f"seed-{seed}"
    if not samples_path and (work / "samples.jsonl").is_file():  # sampled by an earlier run of this script
        samples_path = str(work / "samples.jsonl")
    if samples_path:
        samples = read_records(samples_path, "samples")
    else:
        samples_path = str(work / "samples.jsonl")
        samples = run_sample(
            SampleConfig(
                prompts="train",
                limit=args.prompts,
                num_samples=args.num_samples,
                max_new_tokens=args.max_new_tokens,
                seed=seed,
                output=samples_path,
            )
        )
    oracles = [s.strip() for s in args.annotator_oracles.split(",")]
    feedback = run_annotate(
        AnnotateConfig(
            samples=samples_path,
            annotators=len(oracles),
            annotator_oracles=args.annotator_oracles,
            temperature=args.temperature,
            bias=args.bias,
            pairs_per_prompt=args.pairs_per_prompt,
            seed=seed,
            output=str(work / "feedback.jsonl"),
        ),
        samples,
    )
    names = sorted({r.annotator for r in feedback})
    train_records, heldout = [], {}
    for name in names:
        mine, held = split_heldout([r for r in feedback if r.annotator == name], args.heldout, seed)
        train_records += mine
        heldout[name] = held
    write_records(train_records, work / "train.jsonl")
    write_records([r for name in names for r in heldout[name]], work / "heldout.jsonl")

    runs = {}
    for kind, per_annotator in (("pooled", False), ("heads", True)):
        config = RewardConfig(
            model=args.model,
            data=str(work / "train.jsonl"),
            eval_data=str(work / "heldout.jsonl"),
            per_annotator=per_annotator,
            num_epochs=args.epochs,
            seed=seed,
            output_dir=str(work / kind),
            progress=False,
        )
        done = work / kind / "reward_model"
        runs[kind] = work / kind if done.is_dir() else run_reward(config)[0]  # trained by an earlier run
    pooled = load_reward_source(str(runs["pooled"] / "reward_model"))
    mean_of_heads = load_reward_source(str(runs["heads"] / "reward_model"))
    oracle_of = {f"annotator-{i}": spec for i, spec in enumerate(oracles)}  # make_pool's member names
    rows = {}
    for name in names:
        held = heldout[name]
        own = load_reward_source(f"{runs['heads'] / 'reward_model'}::annotator={name}")
        rows[name] = {
            "oracle": oracle_of[name],
            "train": sum(r.annotator == name for r in train_records),
            "heldout": len(held),
            "ceiling": oracle_agreement(held, load_oracle(oracle_of[name])),
            "pooled": accuracy(pooled, held),
            "own": accuracy(own, held),
            "mean_of_heads": accuracy(mean_of_heads, held),
        }
    return {"prompts": len(samples), "rows": rows}


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--samples", default=None, help="Reuse samples JSONL instead of sampling the policy; {seed} is replaced."
    )
    parser.add_argument("--prompts", type=int, default=96, help="Train prompts to sample.")
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument(
        "--pairs_per_prompt", type=int, default=6, help="Labelled pairs per prompt (at most num_samples choose 2)."
    )
    parser.add_argument("--annotator_oracles", default=DEFAULT_ORACLES)
    parser.add_argument("--temperature", type=float, default=0.05, help="The least noisy member's BT temperature.")
    parser.add_argument("--bias", type=float, default=0.0, help="Largest position bias in the pool.")
    parser.add_argument("--heldout", type=float, default=0.2, help="Fraction of each annotator's labels held out.")
    parser.add_argument("--model", default="minilm-l6", help="Reward-model backbone.")
    parser.add_argument("--epochs", type=float, default=2.0, help="Reward-model epochs.")
    parser.add_argument("--work", default="runs/annotator-heads")
    parser.add_argument("--output", default="benchmarks/results/annotator_heads.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/annotator_heads.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    t0 = time.perf_counter()
    per_seed = {
        seed: run_seed(args, seed, args.samples.format(seed=seed) if args.samples else None) for seed in args.seeds
    }
    first = next(iter(per_seed.values()))
    seeds = ", ".join(map(str, per_seed))
    lines = [
        "# One pooled reward model against one head per annotator",
        "",
        f"Command: `{command}`",
        "",
        f"Policy samples per seed: {first['prompts']} prompts x {args.num_samples} "
        f"({'from ' + args.samples if args.samples else 'smollm2-135m-instruct, max_new_tokens ' + str(args.max_new_tokens)}); "
        f"{args.pairs_per_prompt} pairs per prompt; pool of {len(first['rows'])} ({args.annotator_oracles}; member i's temperature {args.temperature:g}·2^i, "
        f"position bias up to {args.bias:g}); {args.heldout:.0%} of each annotator's labels held out; "
        f"reward models on {args.model}, {args.epochs:g} epochs, other defaults of `rlhflab reward`. "
        f"Held-out accuracy, mean ± sd over seeds {seeds}.",
        "",
        "| annotator | R* | train labels | held-out labels | R* agrees with the labels | pooled model "
        "| own head | mean of heads | own head − pooled (paired) | own head − pooled, per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in first["rows"].items():
        runs = [s["rows"][name] for s in per_seed.values()]
        lines.append(
            f"| {name} | {row['oracle']} | {statistics.mean(r['train'] for r in runs):.0f} "
            f"| {statistics.mean(r['heldout'] for r in runs):.0f} | {_mean_sd([r['ceiling'] for r in runs])} "
            f"| {_mean_sd([r['pooled'] for r in runs])} | {_mean_sd([r['own'] for r in runs])} "
            f"| {_mean_sd([r['mean_of_heads'] for r in runs])} | {_mean_sd([r['own'] - r['pooled'] for r in runs])} "
            f"| {', '.join(format(r['own'] - r['pooled'], '+.3f') for r in runs)} |"
        )
    lines += ["", f"Wall time {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
