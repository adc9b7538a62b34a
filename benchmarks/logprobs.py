"""Token log-probs from the logits, forward and backward, at the size of one SmolLM2-135M SFT step
(8 sequences × 65 completion positions × 49,152 vocabulary): rlhflab's ``logprobs_from_logits``
(a hand-written backward) beside the plain autograd expression it replaced, x_t − logsumexp(x), in
one run, fp32 logits upcast from bf16 as under ``--mixed_precision bf16``.

    python benchmarks/logprobs.py                 # median of 7 after 2 warm-ups, both threads
    python benchmarks/logprobs.py --rows 8 --positions 65 --vocab 49152 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlhflab.sampling.rollout import logprobs_from_logits


def plain(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def seconds(fn, logits: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward and backward through ``fn``."""
    times = []
    for i in range(repeats + 2):
        x = logits.detach().requires_grad_(True)
        t0 = time.perf_counter()
        (fn(x, tokens) * weights).sum().backward()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--positions", type=int, default=65)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = (args.rows, args.positions)
    logits = (torch.randn(*shape, args.vocab) * 3).to(torch.bfloat16)
    tokens = torch.randint(0, args.vocab, shape)
    weights = torch.randn(shape)
    ours = seconds(logprobs_from_logits, logits, tokens, weights, args.repeats)
    baseline = seconds(plain, logits, tokens, weights, args.repeats)
    print(
        f"token log-probs, forward + backward, {args.rows}×{args.positions}×{args.vocab} bf16 logits, "
        f"{torch.get_num_threads()} threads: plain autograd {1000 * baseline:.1f} ms, rlhflab {1000 * ours:.1f} ms "
        f"({baseline / ours:.2f}×)"
    )


if __name__ == "__main__":
    main()
