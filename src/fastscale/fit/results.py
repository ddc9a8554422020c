"""Result objects shared by every law: parameters, bootstrap intervals, residuals and flags.

A fit never returns a bare number that might be wrong: `converged` and `flags` say when the optimizer
stopped early or a parameter sits on its bound, and every such flag is also logged as a warning.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Estimate:
    """A forecast or derived quantity with its bootstrap interval (nan bounds without a bootstrap)."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class FitResult:
    """What every fit returns. Subclasses define `_law(params, *inputs)`, the law on numpy arrays."""

    law: str
    params: dict  # name -> value, names as in the papers
    intervals: dict  # name -> (low, high): percentile bootstrap interval at `level`; empty without bootstrap
    samples: np.ndarray  # [n_bootstrap, len(params)] parameter draws, columns in `params` order
    level: float
    residuals: np.ndarray  # log(observed) - log(predicted), one per fitted point
    objective: float  # the minimized loss at the optimum
    converged: bool
    flags: tuple  # human-readable warnings: non-convergence, parameters at a bound, failed bootstrap refits
    n_points: int

    @staticmethod
    def _law(params: dict, *inputs):
        raise NotImplementedError

    def predict(self, *inputs) -> np.ndarray:
        return self._law(self.params, *(np.asarray(x, dtype=np.float64) for x in inputs))

    def predict_interval(self, *inputs) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of the prediction over the bootstrap draws (propagates parameter correlations)."""
        draws = self.sample_values(lambda p: self._law(p, *(np.asarray(x, dtype=np.float64) for x in inputs)))
        return _percentiles(draws, self.level)

    def sample_values(self, quantity) -> np.ndarray:
        """quantity(params) evaluated on every bootstrap draw; params hold [n_bootstrap, 1] columns."""
        if len(self.samples) == 0:
            raise ValueError(f"{self.law}: no bootstrap draws (fitted with n_bootstrap=0), so no interval")
        columns = {name: self.samples[:, j, None] for j, name in enumerate(self.params)}
        return np.asarray(quantity(columns))

    def estimate(self, quantity) -> Estimate:
        """A scalar function of the parameters with its bootstrap interval (nan bounds without draws)."""
        value = float(np.squeeze(quantity({k: np.float64(v) for k, v in self.params.items()})))
        if len(self.samples) == 0:
            return Estimate(value, float("nan"), float("nan"))
        low, high = _percentiles(self.sample_values(quantity).reshape(len(self.samples), -1)[:, 0], self.level)
        return Estimate(value, float(low), float(high))

    def summary(self) -> dict:
        """JSON-ready: params, ci, and the diagnostics."""
        return {
            "law": self.law,
            "params": {k: float(v) for k, v in self.params.items()},
            "ci": {k: [float(lo), float(hi)] for k, (lo, hi) in self.intervals.items()},
            "level": self.level,
            "n_points": self.n_points,
            "n_bootstrap": len(self.samples),
            "objective": self.objective,
            "rms_log_residual": float(np.sqrt(np.mean(self.residuals**2))),
            "converged": self.converged,
            "flags": list(self.flags),
        }


def _percentiles(draws: np.ndarray, level: float):
    """nan-aware: a draw can be nan (a target loss below that draw's L_inf); all-nan gives nan bounds."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
    return low, high


def intervals_from(names, samples: np.ndarray, level: float) -> dict:
    if len(samples) == 0:
        return {}
    low, high = _percentiles(samples, level)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(names, low, high)}


def report_flags(law: str, flags: list) -> tuple:
    for flag in flags:
        log.warning("%s: %s", law, flag)
    return tuple(flags)
