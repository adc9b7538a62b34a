"""Evaluating a policy while it trains: the training loop's after-iteration hook that, at chosen
iterations, measures J (R*, Eq. 12) and Ĵ (R_phi, Eq. 14) of the policy being trained on each
context set, so a method is seen along its path of KL(π‖π_0) and not at one point (``rlhflab
frontier``, and the matched-KL reading of ``rlhflab compare``)."""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch

from rlhflab.evaluation.metrics import PolicyEvaluation, evaluate_on_sets


class EvaluateAlongTraining:
    """``should_stop`` for :func:`rlhflab.train.loop.train`: after iteration ``i`` (0-based), when
    ``i + 1`` is in ``at``, the policy is evaluated on every set of ``prompt_sets`` with
    ``evaluate_on_sets(**eval_kw)`` and ``record(i + 1, {contexts: PolicyEvaluation})`` is called.
    The evaluation seeds its own sampling, so the training's random state is saved and restored
    around it: the run is the one it would have been without the evaluations (a test checks the
    weights are bit-identical). Never asks the loop to stop."""

    def __init__(
        self,
        policy,
        tokenizer,
        prompt_sets: dict,
        eval_kw: dict,
        at: Collection[int],
        record: Callable[[int, dict[str, PolicyEvaluation]], None],
    ):
        self.policy, self.tokenizer, self.prompt_sets, self.eval_kw = policy, tokenizer, prompt_sets, eval_kw
        self.at, self.record = set(at), record

    def __call__(self, iteration: int) -> bool:
        done = iteration + 1
        if done in self.at:
            with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
                evaluations = evaluate_on_sets(self.policy, self.tokenizer, self.prompt_sets, **self.eval_kw)
            self.record(done, evaluations)
        return False


def every(k: int, total: int) -> set[int]:
    """Iterations k, 2k, … and the last: where a path is evaluated every ``k`` of ``total``."""
    return set(range(k, total + 1, k)) | {total}
