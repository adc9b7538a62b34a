"""Learning from language on the offline default models, measured (Sections 7.3.2, 7.9.2), over seeds:

- the model judge (``judge:smollm2-135m-instruct``): its agreement with R* (sentiment) on pairs of the
  default policy's own samples, both orders averaged, and its position bias (mean P(first) − ½);
- ``rlhflab ilf`` on simulated critiques that quote what lowers R*: J before and after, paired by prompt,
  and its control: the same SFT on the critiqued outputs themselves, unrefined;
- ``rlhflab revise`` with the shipped constitution: how often the revision is the output R* prefers,
  and J before and after SFT on the revisions.

    python benchmarks/language_feedback.py --seeds 0 1 2 --root runs/language-feedback
    python benchmarks/language_feedback.py --tabulate --root runs/language-feedback

Each (seed, part) writes ``ROOT/seed-S/PART.json``; a finished part is read, not rerun. The table (mean ±
sd over seeds, and the paired differences after − before) goes to stdout and to
benchmarks/results/language_feedback.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rlhflab.commands.language import run_ilf, run_revise
from rlhflab.data import Preference, load_prompts
from rlhflab.data.render import prompt_text
from rlhflab.feedback.agreement import oracle_agreement
from rlhflab.feedback.judge import load_judge
from rlhflab.feedback.oracles import sentiment_oracle
from rlhflab.models import load_policy
from rlhflab.rewards.registry import load_reward_source
from rlhflab.train.language import ILFConfig, ReviseConfig, before_after, measure_j, sample_completions, sft_on

RESULTS = Path(__file__).parent / "results" / "language_feedback.md"
POLICY = "smollm2-135m-instruct"
# Small enough for a few minutes per seed on 2 CPU cores.
SIZES = dict(max_new_tokens=24, eval_limit=16, eval_samples=1, prompts_per_round=12, limit=64, batch_size=6)
JUDGE_PAIRS = 24


def judge_part(seed: int) -> dict:
    """Two samples of the default policy per prompt, judged in both orders; agreement with R*."""
    policy, tokenizer = load_policy(POLICY)
    prompts = load_prompts("train")[64 : 64 + JUDGE_PAIRS]  # not the prompts ILF and revise train on
    cfg = ILFConfig(seed=seed, max_new_tokens=SIZES["max_new_tokens"])
    texts = sample_completions(policy, tokenizer, prompts, cfg, 2, cfg.max_new_tokens, seed)
    contexts, a, b = [], [], []
    for i, p in enumerate(prompts):
        if texts[2 * i].strip() and texts[2 * i + 1].strip() and texts[2 * i] != texts[2 * i + 1]:
            contexts.append(prompt_text(p.prompt))
            a.append(texts[2 * i])
            b.append(texts[2 * i + 1])
    judge = load_judge(f"judge:{POLICY}")
    t0 = time.perf_counter()
    verdicts = judge.compare(contexts, a, b)
    seconds = time.perf_counter() - t0
    prefs = [
        Preference(c, x, y) if p > 0.5 else Preference(c, y, x)
        for c, x, y, p in zip(contexts, a, b, verdicts.preference.tolist())
    ]
    gaps = [abs(sentiment_oracle(c, x) - sentiment_oracle(c, y)) for c, x, y in zip(contexts, a, b)]
    clear = [p for p, g in zip(prefs, gaps) if g >= 0.5]
    # one order only: what the judge would say without the swap
    single = [
        Preference(c, x, y) if p > 0.5 else Preference(c, y, x)
        for c, x, y, p in zip(contexts, a, b, verdicts.first_ab.tolist())
    ]
    return {
        "pairs": len(prefs),
        "agreement": oracle_agreement(prefs, sentiment_oracle),
        "agreement_one_order": oracle_agreement(single, sentiment_oracle),
        "clear_pairs": len(clear),
        "agreement_clear": oracle_agreement(clear, sentiment_oracle) if clear else None,
        "position_bias": verdicts.position_bias,
        "seconds_per_pair_both_orders": seconds / max(1, len(prefs)),
    }


def ilf_part(seed: int, run_dir: Path) -> dict:
    cfg = ILFConfig(seed=seed, output_dir=str(run_dir), progress=False, **SIZES)
    _, summary = run_ilf(cfg)
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return {"J": summary, "rounds": rounds}


def control_part(seed: int, run_dir: Path) -> dict:
    """The control for ILF: the same SFT on the critiqued outputs themselves, unrefined (does the
    critique-and-refine step matter, or would fine-tuning on one's own samples do the same?)."""
    rows = [
        json.loads(line) for line in (run_dir.parent / "ilf" / "round-0" / "refinements.jsonl").read_text().splitlines()
    ]
    cfg = ILFConfig(seed=seed, output_dir=str(run_dir), progress=False, **SIZES)
    policy, tokenizer = load_policy(POLICY)
    oracle = load_reward_source(cfg.oracle)
    before = measure_j(cfg, policy, tokenizer, oracle)
    kept = [r for r in rows if r["kept"] is not None]  # the records ILF fine-tuned on, with their originals
    sft_on(cfg, policy, tokenizer, [r["prompt"] for r in kept], [r["completion"] for r in kept], run_dir, "<control>")
    return {"J": before_after(before, measure_j(cfg, policy, tokenizer, oracle)), "examples": len(kept)}


def revise_part(seed: int, run_dir: Path) -> dict:
    sizes = {k: v for k, v in SIZES.items() if k not in ("prompts_per_round", "limit")}
    cfg = ReviseConfig(seed=seed, output_dir=str(run_dir), progress=False, limit=12, **sizes)
    _, summary = run_revise(cfg)
    return summary


PARTS = {"ilf": ilf_part, "control": control_part, "revise": revise_part}


def _cell(values: list, sign: str = "+") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) < 2:
        return f"{values[0]:{sign}.3f}"
    return f"{statistics.mean(values):{sign}.3f} ± {statistics.stdev(values):.3f}"


def table(root: Path) -> str:
    seeds = sorted(int(d.name.split("-")[1]) for d in root.glob("seed-*"))
    parts = {
        s: {p: _load(root / f"seed-{s}" / f"{p}.json") for p in ("judge", "ilf", "control", "revise")} for s in seeds
    }
    lines = [f"Seeds {', '.join(map(str, seeds))}; mean ± sd over seeds (sd of the per-seed values).", ""]
    judge = [p["judge"] for p in parts.values() if p["judge"]]
    if judge:
        lines += [
            "| judge:smollm2-135m-instruct vs R* (sentiment) | value |",
            "|---|---|",
            f"| pairs per seed | {', '.join(str(j['pairs']) for j in judge)} |",
            f"| agreement with R*, both orders averaged | {_cell([j['agreement'] for j in judge], sign='')} |",
            f"| agreement with R*, one order only | {_cell([j['agreement_one_order'] for j in judge], sign='')} |",
            f"| agreement on clear pairs (abs(ΔR*) ≥ 0.5) | {_cell([j['agreement_clear'] for j in judge], sign='')} "
            f"(n = {', '.join(str(j['clear_pairs']) for j in judge)}) |",
            f"| position bias, mean P(first) − 0.5 | {_cell([j['position_bias'] for j in judge])} |",
            f"| seconds per pair (both orders) | {_cell([j['seconds_per_pair_both_orders'] for j in judge], sign='')} |",
            "",
        ]
    rows = []
    for name in ("ilf", "control", "revise"):
        done = {s: p[name]["J"] for s, p in parts.items() if p[name]}
        for contexts in ("seen", "unseen"):
            values = [v[contexts] for v in done.values() if contexts in v]
            if values:
                label = "SFT on the unrefined outputs (ILF's control)" if name == "control" else name
                rows.append(
                    f"| {label} | {contexts} | {_cell([v['J_before'] for v in values])} | "
                    f"{_cell([v['J_after'] for v in values])} | {_cell([v['delta_J'] for v in values])} | "
                    + ", ".join(f"{v['delta_J']:+.3f} ± {v['delta_J_se']:.3f}" for v in values)
                    + " |"
                )
    if rows:
        lines += [
            "| method | contexts | J before | J after | ΔJ (paired by prompt) | ΔJ ± se per seed |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    both = [p for p in parts.values() if p["ilf"] and p["control"]]
    if both:  # same seed, same evaluation prompts and sampling seed: after-minus-after is paired
        diffs = {
            c: [p["ilf"]["J"][c]["J_after"] - p["control"]["J"][c]["J_after"] for p in both if c in p["ilf"]["J"]]
            for c in ("seen", "unseen")
        }
        lines.append(
            "ILF minus its control (J after, paired by seed): "
            + "; ".join(f"{c} {_cell(v)} ({', '.join(f'{x:+.3f}' for x in v)})" for c, v in diffs.items() if v)
        )
    revise_parts = [p["revise"] for p in parts.values() if p["revise"]]
    if revise_parts:
        lines.append(
            "revise: (revised, original) pairs per seed "
            + ", ".join(str(r["pairs"]) for r in revise_parts)
            + "; the fraction whose revision R* prefers "
            + _cell([r["pairs_agreement_with_oracle"] for r in revise_parts], sign="")
        )
    ilf_parts = [p["ilf"] for p in parts.values() if p["ilf"]]
    if ilf_parts:
        lines.append(
            "ilf: R* of the critiqued outputs "
            + _cell([p["rounds"][0]["oracle_original"] for p in ilf_parts])
            + ", of the kept refinements "
            + _cell([p["rounds"][0]["oracle_kept"] for p in ilf_parts])
            + " (logged, never used to select)"
        )
    return "\n".join(lines) + "\n"


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("runs/language-feedback"))
    parser.add_argument("--tabulate", action="store_true", help="only tabulate finished parts")
    args = parser.parse_args()
    if not args.tabulate:
        for seed in args.seeds:
            seed_dir = args.root / f"seed-{seed}"
            for part in ("judge", "ilf", "control", "revise"):
                out = seed_dir / f"{part}.json"
                if out.is_file():
                    continue
                t0 = time.perf_counter()
                result = judge_part(seed) if part == "judge" else PARTS[part](seed, seed_dir / part)
                result["seconds"] = time.perf_counter() - t0
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=2))
                print(f"seed {seed} {part}: {result['seconds']:.0f} s", file=sys.stderr)
    text = table(args.root)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# Learning from language on the default models (`python benchmarks/language_feedback.py`)\n\n" + text
    )
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
