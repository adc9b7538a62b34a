"""Where one training step of a benchmark case spends its time: ``python benchmarks/profile_step.py CASE``.

Runs rlhflab's runner for CASE (sft, reward, dpo, rloo, grpo) for three optimiser steps, profiles the
third with ``torch.profiler`` and prints the operators by self CPU time, grouped by input shapes (so
decode-step products, batch ×1 rows, are told apart from training ones), plus the step's stage times.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["sft", "reward", "dpo", "rloo", "grpo"])
    parser.add_argument("--rows", type=int, default=25, help="Operator rows to print.")
    args = parser.parse_args(argv)

    import cases
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rlhflab.train import loop

    torch.set_num_threads(2)
    original, ends, state = loop.RunLogger.advance, [0], {}

    def advance(logger):
        ends[0] += 1
        if ends[0] == 2:  # steps 1 and 2 are warm-up; profile step 3
            state["prof"] = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
            state["prof"].__enter__()
        elif ends[0] == 3:
            state["prof"].__exit__(None, None, None)
        return original(logger)

    loop.RunLogger.advance = advance
    try:
        out = cases.RUNNERS[args.case]["rlhflab"](3)
    finally:
        loop.RunLogger.advance = original
    table = (
        state["prof"].key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows)
    )
    print(table)
    print("step seconds:", [round(x, 2) for x in out["step_times"]])
    last = out["metrics"][-1]
    print("last step stages:", {k: round(v, 3) for k, v in last.items() if k.startswith("time_") or k == "seconds"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
