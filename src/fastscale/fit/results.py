"""Result objects shared by every law: parameters, bootstrap intervals, residuals and flags.

A fit never returns a bare number that might be wrong: `flags` say when the optimizer stopped early,
when bootstrap refits failed, and when the data do not determine a parameter, and every flag is also
logged as a warning. Each flag reads "KIND: detail", one KIND per kind of problem, so a script can
match it. `fit_result` assembles every law's result and is the one place the not-determined rules live:

- `<p>_at_bound`: the estimate, or an end of its bootstrap interval, sits on a bound of the search
  (the optimum is wherever the box stops it, not where the data put it);
- `<p>_not_determined`: a scale parameter's (x0, Nc, B_crit...) interval spans more than
  NOT_DETERMINED_DECADES powers of ten (its value is not known to within a factor of 1000);
- `<p>_overflow`: the estimate itself is nan or inf, or a positive scale parameter underflowed to 0;
- `<p>_draws_not_finite`: some bootstrap draws overflowed (nan or inf) and were left out of the interval;
- `<p>_zero_width_interval`: every bootstrap draw gave one value, as on identical rows or noiseless
  data, so the interval says nothing about the uncertainty;
- `not_converged` and `bootstrap_refits_failed` from the optimizer.

Laws add their own kinds (`alpha_not_positive`: loss does not fall with N). Without bootstrap draws
only the estimate is judged.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fastscale.fit._checks import probability

log = logging.getLogger(__name__)

NOT_DETERMINED_DECADES = 3.0
BOUND_RTOL = 1e-6  # a value this close (relative to max(1, |bound|)) to a bound is on it
ZERO_WIDTH_RTOL = 1e-12  # an interval narrower than this (relative to its centre) has zero width


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
    flags: tuple  # "KIND: detail" warnings (see the module docstring); empty when nothing is in doubt
    n_points: int

    scales: ClassVar[tuple] = ()  # positive, multiplicative parameters: judged by the decades their interval spans

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


def fit_result(cls, *, law: str, params: dict, samples: np.ndarray, level: float, converged: bool, failed_refits: int,
               bounds: dict | None = None, fixed: tuple = (), flags: list = (), **fields) -> FitResult:
    """Build a law's result: intervals from the bootstrap draws, then the flags of the module docstring
    ahead of the law's own `flags`, all logged.

    samples: [n_bootstrap, len(params)] draws of the refits that converged, columns in `params` order;
    failed_refits: how many refits did not. bounds: name -> (low, high) of the search box in parameter
    space (None for an open side). fixed: parameters held constant (no interval, e.g. L_inf of the
    pure power law).
    """
    level = probability("level", level)
    bounds = bounds or {}
    free = [name for name in params if name not in fixed]
    intervals = {}
    own, flags = list(flags), []
    if not converged:
        flags.append("not_converged: the optimizer did not converge: treat the parameters as unreliable")
    if failed_refits:
        total = failed_refits + len(samples)
        flags.append(f"bootstrap_refits_failed: {failed_refits} of {total} bootstrap refits did not converge and were left out of the intervals")
    for name in free:
        draws = samples[:, list(params).index(name)]
        finite = draws[np.isfinite(draws)]
        if len(draws) and len(finite) < len(draws):
            lost = len(draws) - len(finite)
            flags.append(f"{name}_draws_not_finite: {lost} of {len(draws)} bootstrap draws ({lost / len(draws):.0%}) are nan or inf, left out of its interval")
        if len(draws):
            intervals[name] = tuple(float(v) for v in _percentiles(finite, level)) if len(finite) else (float("nan"), float("nan"))
        flags += _determination_flags(name, float(params[name]), intervals.get(name), bounds.get(name), name in cls.scales, level)
    flags += own
    for flag in flags:
        log.warning("%s: %s", law, flag)
    return cls(law=law, params=params, intervals=intervals, samples=samples, level=level, converged=converged, flags=tuple(flags), **fields)


def _determination_flags(name: str, value: float, interval, bound, scale: bool, level: float) -> list:
    if not np.isfinite(value) or (scale and value <= 0):  # a positive scale parameter at 0 underflowed
        return [f"{name}_overflow: the estimate is {value:.6g} (outside double precision): the data do not determine it"]
    flags = []
    low, high = interval if interval is not None else (float("nan"), float("nan"))
    ends = {"the estimate": value, f"the {level:.0%} interval's low end": low, f"the {level:.0%} interval's high end": high}
    touching = [
        f"{what} is on its {side} bound {limit:.6g}"
        for side, limit in zip(("lower", "upper"), bound or (None, None))
        if limit is not None
        for what, v in ends.items()
        if abs(v - limit) <= BOUND_RTOL * max(1.0, abs(limit))
    ]
    if touching:
        flags.append(f"{name}_at_bound: {'; '.join(touching)}: the data do not determine it")
    if scale and np.isfinite(low):
        decades = np.log10(high / low) if low > 0 else np.inf  # a positive scale drawn as 0 underflowed
        if decades > NOT_DETERMINED_DECADES:
            span = f"{decades:.1f} decades" if np.isfinite(decades) else "down to 0 (an underflow)"
            flags.append(f"{name}_not_determined: interval [{low:.3g}, {high:.3g}] spans {span}, more than {NOT_DETERMINED_DECADES:g} decades")
    if interval is not None and np.isfinite(low) and high - low <= ZERO_WIDTH_RTOL * max(abs(value), 1e-300):
        flags.append(f"{name}_zero_width_interval: every bootstrap draw gave {value:.6g} (identical or noiseless rows?): the interval says nothing")
    return flags
