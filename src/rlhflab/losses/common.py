"""Masked reductions shared by the losses (masks are bool or 0/1 float, right-padded), and running
moments for standardising a stream of values."""

import math

import torch
from torch import Tensor


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ValueError naming the arguments if the given tensors differ in shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name}={shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ_i mask_i x_i over `dim` (all elements when None). Masked-out entries may hold inf/NaN."""
    mask = mask.to(x.dtype)
    x = torch.where(mask != 0, x, torch.zeros_like(x)) * mask
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ_i mask_i x_i / Σ_i mask_i over `dim` (all elements when None); 0 where the mask is empty."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=torch.finfo(x.dtype).tiny)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over all masked entries; padding is set to 0.

    The variance is the population one (divide by n), so the result has exactly unit variance over
    the masked entries. With shift_mean=False the mean is added back (only the scale changes), as
    TRL does for rewards.
    """
    check_same_shape(x=x, mask=mask)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.to(torch.bool), whitened, torch.zeros_like(whitened))


class RunningMoments:
    """Mean and population std of every value seen so far, updated one batch at a time: Welford's
    update in the parallel form of Chan et al. (1979), merging a batch of n values with mean m_b and
    variance v_b into (count N, mean mu, sum of squared deviations M2) as

        delta = m_b - mu,  mu += delta * n / (N + n),  M2 += n * v_b + delta^2 * N * n / (N + n).

    ``std`` is sqrt(M2 / N), or 1 until two values are seen. Checkpointable (``state_dict``)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        n, mean, var = x.numel(), float(x.mean()), float(x.var(unbiased=False))
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += var * n + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def state_dict(self):
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, s):
        self.count, self.mean, self.m2 = s["count"], s["mean"], s["m2"]
