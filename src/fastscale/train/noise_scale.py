"""The gradient noise scale of McCandlish et al. (2018), appendix A.1.

Given squared gradient norms measured at two batch sizes B_small < B_big on the same parameters,

    |G|^2    ~= (B_big * |G_big|^2 - B_small * |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~= (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

are unbiased estimates of the true gradient's squared norm and of the trace of the per-example
gradient covariance. Each is smoothed by an exponential moving average (bias-corrected like Adam)
before taking the ratio B_simple = tr(Sigma) / |G|^2, since the ratio of noisy estimates is biased
and very noisy. B is in whatever unit the batch sizes are given in (the trainer uses tokens).

The squared norms come from per-parameter dot products (`gradient_dot`), accumulated in float64 on the
device: never a concatenated copy of the gradient, which at billions of parameters is gigabytes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def gradient_dot(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """sum over parameters of <a_p, b_p> as a float64 scalar on the gradients' device (None: a zero
    gradient). Each product is taken in float32 at least; only a low-precision parameter is upcast,
    one at a time."""
    if len(a) != len(b):
        raise ValueError(f"gradient_dot: {len(a)} gradients against {len(b)}; expected one per parameter in both")
    dots = [torch.dot(x.reshape(-1).float(), y.reshape(-1).float()).double() for x, y in zip(a, b) if x is not None and y is not None]
    if not dots:
        raise ValueError("gradient_dot: no parameter has a gradient in both lists")
    return torch.stack(dots).sum()


def two_batch_norms(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """[|G_small|^2, |G_big|^2] (float64, on the device) from the gradients of two equal halves of a batch:
    the mean of |a|^2 and |b|^2, and |(a + b) / 2|^2 = (|a|^2 + |b|^2 + 2 <a, b>) / 4."""
    aa, bb, ab = gradient_dot(a, a), gradient_dot(b, b), gradient_dot(a, b)
    return torch.stack([(aa + bb) / 2, (aa + bb + 2 * ab) / 4])


def two_batch_estimates(small_sq_norm: float, big_sq_norm: float, b_small: float, b_big: float) -> tuple[float, float]:
    """-> (|G|^2 estimate, tr(Sigma) estimate) from one measurement."""
    if not 0 < b_small < b_big:
        raise ValueError(f"two_batch_estimates: b_small={b_small}, b_big={b_big}; expected 0 < b_small < b_big")
    g2 = (b_big * big_sq_norm - b_small * small_sq_norm) / (b_big - b_small)
    trace = (small_sq_norm - big_sq_norm) / (1 / b_small - 1 / b_big)
    return g2, trace


class GradientNoiseScale:
    """EMA-smoothed B_simple. update() takes one measurement and returns the current estimate."""

    def __init__(self, ema: float = 0.95) -> None:
        if not 0 <= ema < 1:
            raise ValueError(f"GradientNoiseScale: ema={ema}; expected a decay in [0, 1)")
        self.ema = ema
        self.g2 = 0.0
        self.trace = 0.0
        self.count = 0

    def update(self, small_sq_norm: float, big_sq_norm: float, b_small: float, b_big: float) -> float | None:
        g2, trace = two_batch_estimates(small_sq_norm, big_sq_norm, b_small, b_big)
        self.g2 = self.ema * self.g2 + (1 - self.ema) * g2
        self.trace = self.ema * self.trace + (1 - self.ema) * trace
        self.count += 1
        return self.b_simple

    @property
    def b_simple(self) -> float | None:
        """tr(Sigma) / |G|^2 from the smoothed estimates (None before the first update or while the
        smoothed |G|^2 is not positive)."""
        if not self.count:
            return None
        correction = 1 - self.ema**self.count
        g2, trace = self.g2 / correction, self.trace / correction
        return trace / g2 if g2 > 0 and math.isfinite(trace / g2) else None

    def state_dict(self) -> dict:
        return {"ema": self.ema, "g2": self.g2, "trace": self.trace, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.g2, self.trace, self.count = state["ema"], state["g2"], state["trace"], state["count"]
