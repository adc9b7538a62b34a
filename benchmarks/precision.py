"""fp32 against ``--mixed_precision auto`` on this machine, side by side in one run:
``python benchmarks/precision.py [--steps N] [--repeats R]``.

Times one SmolLM2-135M SFT step (8 rows × 128 tokens, forward + backward + AdamW, through
rlhflab's ``train`` loop) and one rollout ``generate`` call of the lean engine (16 prompts × 4
samples × 32 new tokens), each in fp32 and in the precision ``auto`` chooses here, interleaved
(fp32, auto, fp32, auto, ...) so that drifting machine load hits both alike. Prints the
medians, the ratios fp32 / auto (above 1: auto is faster), what ``auto`` measured and chose, and
the first-step SFT loss of each (close, not identical, under bf16).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def sft_steps(precision: str, steps: int) -> dict:
    """Per-step seconds (the first, a warm-up, dropped) and the first loss of ``steps`` SFT steps."""
    import cases
    from workloads import SETTINGS, demonstration_records

    from rlhflab.train.offline import SFTAlgorithm, SFTConfig, tokenize_demonstrations

    s = SETTINGS["sft"]
    model, tokenizer = cases._policy()
    records = demonstration_records(tokenizer, 64, s["prompt_tokens"], s["completion_tokens"])
    with tempfile.TemporaryDirectory() as tmp:
        config = cases._config(
            SFTConfig,
            tmp,
            steps,
            batch_size=s["batch"],
            learning_rate=s["lr"],
            use_chat_template=False,
            mixed_precision=precision,
        )
        examples = tokenize_demonstrations(
            [r["prompt"] for r in records], [r["completion"] for r in records], tokenizer, config, False
        )
        out = cases._run_rlhflab(config, SFTAlgorithm(config, model, tokenizer, examples))
    return {"seconds": out["step_times"][1:], "first_loss": out["metrics"][0]["loss"]}


def generate_call(model, prompt_ids, pad_id, precision: str) -> float:
    import torch

    from rlhflab.hardware import autocast
    from rlhflab.sampling import generation

    torch.manual_seed(0)
    t0 = time.perf_counter()
    with autocast(precision, "cpu"):
        generation.generate(model, prompt_ids, 4, 32, [], pad_id)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="SFT steps per run (the first is a warm-up).")
    parser.add_argument("--repeats", type=int, default=2, help="Interleaved runs of each precision.")
    args = parser.parse_args(argv)

    import cases
    import torch
    from workloads import CHAT_PROMPTS

    from rlhflab.hardware import bf16_matmul_speedup, resolve_mixed_precision

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    auto = resolve_mixed_precision("auto", "cpu")
    ratio = bf16_matmul_speedup("cpu")
    precisions = ("no", auto)
    sft = {p: {"seconds": [], "first_loss": None} for p in precisions}
    gen = {p: [] for p in precisions}
    model, tokenizer = cases._policy()
    model.eval()
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        for t in CHAT_PROMPTS
    ]
    prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts][:16]
    for _ in range(args.repeats):
        for p in precisions:
            run = sft_steps(p, args.steps)
            sft[p]["seconds"] += run["seconds"]
            sft[p]["first_loss"] = run["first_loss"]
            generate_call(model, prompt_ids, tokenizer.pad_token_id, p)  # warm-up
            gen[p].append(generate_call(model, prompt_ids, tokenizer.pad_token_id, p))
    med = {p: statistics.median(sft[p]["seconds"]) for p in precisions}
    gmed = {p: statistics.median(gen[p]) for p in precisions}
    print(f"auto chose {auto!r} (bf16 matmul {ratio:.2f}x fp32); threads {torch.get_num_threads()}")
    print("| case | fp32 s | auto s | fp32 / auto |")
    print("|---|---|---|---|")
    print(f"| SFT step (8 x 128 tokens) | {med['no']:.2f} | {med[auto]:.2f} | {med['no'] / med[auto]:.2f}x |")
    print(
        f"| generate (16 prompts x 4 samples x 32 tokens) | {gmed['no']:.2f} | {gmed[auto]:.2f} | "
        f"{gmed['no'] / gmed[auto]:.2f}x |"
    )
    print(f"first SFT loss: fp32 {sft['no']['first_loss']:.6f}, auto {sft[auto]['first_loss']:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
