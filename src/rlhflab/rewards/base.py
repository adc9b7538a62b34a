"""The reward-source interface every kind implements (verl's ``reward_manager/base`` shape): a
callable ``(contexts, outputs) -> Tensor (B,)`` of plain text, with a name for logs and reports.

The optional capabilities are declared here, with their empty defaults, so that callers read them
instead of probing for attributes:

- ``ensemble``: the :class:`rlhflab.rewards.ensemble.RewardEnsemble` behind the source (its members'
  rewards and their disagreement on the last batch), or None;
- ``heads``: the :class:`rlhflab.rewards.heads.RewardHeads` behind it (per-head scores, the sigma of
  mean-variance heads on the last batch), or None;
- ``components_last``: each component's raw values on the last batch (a composite's objectives,
  logged beside the optimised sum), empty for a single source;
- ``state_dict`` / ``load_state_dict``: running state a training run checkpoints (a composite's
  normalising moments), None for a stateless source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rlhflab.errors import TrainingError


class RewardSource:
    """Callable ``(contexts, outputs) -> Tensor (B,)``; a non-finite reward is a TrainingError naming
    the source and the output."""

    def __init__(
        self,
        name: str,
        fn: Callable[[list[str], list[str]], object] | None = None,
        is_model: bool = False,
        *,
        ensemble=None,
        heads=None,
    ):
        self.name, self._fn, self.is_model = name, fn, is_model
        self.ensemble, self.heads = ensemble, heads

    def rewards(self, contexts: list[str], outputs: list[str]) -> object:
        """The raw rewards of a batch; a subclass overrides this, or passes ``fn``."""
        return self._fn(contexts, outputs)

    def __call__(self, contexts: Sequence[str], outputs: Sequence[str]) -> torch.Tensor:
        values = torch.as_tensor(self.rewards(list(contexts), list(outputs)), dtype=torch.float32).flatten()
        bad = ~torch.isfinite(values)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise TrainingError(f"reward source '{self.name}' returned {values[i].item()} for output {outputs[i]!r}")
        return values

    @property
    def components_last(self) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 (stateless by default)
        pass
