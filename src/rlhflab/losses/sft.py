"""Supervised fine-tuning loss (Section 6.3, Eq. 3)."""

from torch import Tensor

from rlhflab.losses.common import check_same_shape, masked_mean


def sft_loss(logprobs: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood per completion token, Eq. 3: -mean_{t: mask} log π_θ(x_{t+1} | x_{≤t}).

    logprobs: (B, T) log-probs of the target tokens; mask: (B, T), 1 on completion tokens and 0 on
    prompt and padding (the prompt is given, not learned). Returns a scalar.
    """
    check_same_shape(logprobs=logprobs, mask=mask)
    return -masked_mean(logprobs, mask)
