"""How much precomputing the frozen reference's log-probs saves in DPO.

    python benchmarks/dpo_reference_cache.py [--model smollm2-135m-instruct] [--pairs 32] [--epochs 2]

Trains the same DPO run twice — reference log-probs cached once before training
(``precompute_reference=True``, the default) and recomputed at every step (False) — and prints the
wall time of each. The cached run pays one no-grad pass over the dataset up front and drops the
reference model; the uncached one pays a no-grad reference forward of 2B rows at every step, i.e.
once per epoch per pair, and keeps the reference in memory. Both runs give the same losses.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pairs(n: int):
    from rlhflab.data import Preference, load_prompt_set

    prompts = load_prompt_set("train")
    return [
        Preference(
            prompt=p.prompt,
            chosen="That sounds wonderful, I am really happy for you and glad it went well!",
            rejected="That is awful. It went badly and I feel bad about it.",
        )
        for p in prompts[:n]
    ]


def run(model_name: str, records, epochs: float, batch_size: int, cached: bool, out: Path) -> dict:
    from rlhflab.models import load_policy
    from rlhflab.train.loop import train
    from rlhflab.train.preference import PreferenceAlgorithm, PreferenceConfig, tokenize_pairs

    model, tokenizer = load_policy(model_name)
    cfg = PreferenceConfig(
        loss="dpo",
        output_dir=str(out),
        batch_size=batch_size,
        num_epochs=epochs,
        precompute_reference=cached,
        progress=False,
        learning_rate=1e-6,
    )
    algorithm = PreferenceAlgorithm(cfg, model, tokenizer, tokenize_pairs(records, tokenizer, cfg))
    t0 = time.perf_counter()
    run_dir = train(cfg, algorithm)
    total = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "cached": cached,
        "seconds_total": total,
        "steps": len(rows),
        "seconds_steps": sum(r["seconds"] for r in rows),
        "reference_precompute_seconds": algorithm.reference_seconds,
        "losses": [r["loss"] for r in rows],
    }


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        # A one-step warm-up run first: the process's first forward passes pay one-off start-up costs.
        run(args.model, records[: args.batch_size], 1, args.batch_size, False, Path(tmp) / "warmup")
        results = [
            run(args.model, records, args.epochs, args.batch_size, cached, Path(tmp) / str(cached))
            for cached in (True, False)
        ]
    cached, fresh = results
    drift = max(abs(a - b) for a, b in zip(cached["losses"], fresh["losses"]))
    print(
        f"model {args.model}, {args.pairs} pairs, {args.epochs:g} epochs, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    for r in results:
        label = "cached reference " if r["cached"] else "per-step reference"
        print(
            f"  {label}: {r['seconds_total']:.1f} s total ({r['steps']} steps, {r['seconds_steps']:.1f} s in steps, "
            f"{r['reference_precompute_seconds']:.1f} s precomputing)"
        )
    saved = fresh["seconds_total"] - cached["seconds_total"]
    print(
        f"  saving: {saved:.1f} s = {100 * saved / fresh['seconds_total']:.0f}% of the uncached run; "
        f"max |loss difference| {drift:.2e}"
    )


if __name__ == "__main__":
    main()
