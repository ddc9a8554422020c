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
- `<p>_interval_widened`: the estimate lay outside its percentile interval (an estimate on a bound,
  or draws skewed away from it) and the interval was widened to reach it: an interval always contains
  its estimate, and the flag says this one is wider on one side than the draws alone made it;
- `misspecified`: the residuals, ordered by the law's input, show structure the law cannot capture
  (too few runs of equal sign, or a significant trend or curvature against log x; see
  `misspecification_flags`); only laws that pass `residual_order` are tested;
- `not_converged` and `bootstrap_refits_failed` from the optimizer.

Derived quantities (`estimate`, `predict_interval`) are widened the same way; an `Estimate` says so
in `widened`.

Laws add their own kinds (`alpha_not_positive`: loss does not fall with N). Without bootstrap draws
only the estimate is judged.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import stats

from fastscale.fit._checks import probability
from fastscale.fit.bootstrap import bootstrap_blocks, refit_draws

log = logging.getLogger(__name__)

NOT_DETERMINED_DECADES = 3.0
BOUND_RTOL = 1e-6  # a value this close (relative to max(1, |bound|)) to a bound is on it
ZERO_WIDTH_RTOL = 1e-12  # an interval narrower than this (relative to its centre) has zero width
# Residual-structure tests: each at p < MISSPECIFICATION_P; measured false-alarm rate of the pair on
# correctly specified power laws in tests/fit/test_bias_and_intervals.py. Below MIN_RESIDUAL_TEST_POINTS
# points a runs test cannot reach that p, so fewer points are not tested.
MISSPECIFICATION_P = 0.01
MIN_RESIDUAL_TEST_POINTS = 10
NOISELESS_RMS = 1e-9  # residuals this small are the optimizer's rounding: their signs carry no information


@dataclass(frozen=True)
class Estimate:
    """A forecast or derived quantity with its bootstrap interval (nan bounds without a bootstrap)."""

    value: float
    low: float
    high: float
    widened: bool = False  # the percentile interval excluded the value and was widened to reach it
    draws_not_finite: int = 0  # bootstrap draws where the quantity is nan or inf (e.g. a target loss below
    # that draw's L_inf), left out of the interval


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
        low, high = _percentiles(draws, self.level)
        return _including(self.predict(*inputs), low, high)

    def sample_values(self, quantity) -> np.ndarray:
        """quantity(params) evaluated on every bootstrap draw; params hold [n_bootstrap, 1] columns."""
        if len(self.samples) == 0:
            raise ValueError(f"{self.law}: no bootstrap draws (fitted with n_bootstrap=0), so no interval")
        columns = {name: self.samples[:, j, None] for j, name in enumerate(self.params)}
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # a draw at a bound (C0 = 0, ...) gives inf or nan:
            return np.asarray(quantity(columns))  # counted (Estimate.draws_not_finite) and left out of the percentiles

    def estimate(self, quantity) -> Estimate:
        """A scalar function of the parameters with its bootstrap interval (nan bounds without draws)."""
        value = float(np.squeeze(quantity({k: np.float64(v) for k, v in self.params.items()})))
        if len(self.samples) == 0:
            return Estimate(value, float("nan"), float("nan"))
        draws = self.sample_values(quantity).reshape(len(self.samples), -1)[:, 0]
        low, high = _percentiles(draws, self.level)
        wide_low, wide_high = _including(value, low, high)
        return Estimate(value, float(wide_low), float(wide_high), widened=bool(wide_low != low or wide_high != high),
                        draws_not_finite=int(np.count_nonzero(~np.isfinite(draws))))

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


def _including(value, low, high):
    """Widen [low, high] to reach a finite value (nan bounds, no interval, stay nan)."""
    known = np.isfinite(value) & np.isfinite(low) & np.isfinite(high)
    return np.where(known, np.minimum(low, value), low), np.where(known, np.maximum(high, value), high)


def fit_result(cls, *, law: str, params: dict, samples: np.ndarray, level: float, converged: bool, failed_refits: int,
               bounds: dict | None = None, fixed: tuple = (), flags: list = (), residual_order=None, residual_weights=None,
               **fields) -> FitResult:
    """Build a law's result: intervals from the bootstrap draws, then the flags of the module docstring
    ahead of the law's own `flags`, all logged.

    samples: [n_bootstrap, len(params)] draws of the refits that converged, columns in `params` order;
    failed_refits: how many refits did not. bounds: name -> (low, high) of the search box in parameter
    space (None for an open side). fixed: parameters held constant (no interval, e.g. L_inf of the
    pure power law). residual_order: one positive value per residual (the law's x) to test the
    residuals for misspecification; None skips the test (laws of several inputs, lower envelopes).
    residual_weights: the fit's per-point weights, so the test sees standardized residuals
    sqrt(w) * r (a point of low weight may stray further without the law being wrong).
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
            intervals[name] = _interval_with_estimate(name, float(params[name]), finite, level, flags)
        flags += _determination_flags(name, float(params[name]), intervals.get(name), bounds.get(name), name in cls.scales, level)
    if residual_order is not None:
        scale = 1.0 if residual_weights is None else np.sqrt(residual_weights)
        flags += misspecification_flags(scale * fields["residuals"], residual_order)
    flags += own
    for flag in flags:
        log.warning("%s: %s", law, flag)
    return cls(law=law, params=params, intervals=intervals, samples=samples, level=level, converged=converged, flags=tuple(flags), **fields)


def bootstrapped_result(cls, *, log_y, log_pred, refit, n_params: int, to_samples, resampling: str, n_bootstrap: int, seed: int,
                        weights=None, groups=None, cells: int | None = None, flags=(), sample_flags=None, **fields) -> FitResult:
    """A law's result from its estimate, the one way every fit assembles one: `n_bootstrap` data sets
    drawn around the estimate (`bootstrap.bootstrap_blocks`: log_y [n] observed, log_pred [n] the law
    at the estimate, weights [n] the fit's, default 1; groups for the "rows" scheme), each refitted
    (`bootstrap.refit_draws` with refit and cells; n_params: the length of the law's internal theta),
    then `fit_result` with the samples to_samples([n_ok, n_params] thetas) -> [n_ok, len(params)], the
    residuals log_y - log_pred and n_points; flags: the law's own, then sample_flags(samples)'s (a law
    that judges its draws); fields: the rest of fit_result's arguments."""
    weights = np.ones(len(log_y)) if weights is None else weights
    blocks = bootstrap_blocks(resampling, log_y=log_y, log_pred=log_pred, weights=weights, n_params=n_params, n_bootstrap=n_bootstrap,
                              seed=seed, groups=groups)
    draws, failed = refit_draws(blocks, refit, n_params, cells)
    samples = to_samples(draws)
    flags = [*flags, *(sample_flags(samples) if sample_flags else ())]
    return fit_result(cls, samples=samples, failed_refits=failed, flags=flags, residuals=log_y - log_pred, n_points=len(log_y), **fields)


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


def _interval_with_estimate(name: str, value: float, finite: np.ndarray, level: float, flags: list) -> tuple:
    """The percentile interval of the finite draws, widened to include the estimate (flagged when it was).

    A percentile interval excludes its estimate when the estimate sits on a bound the draws cannot
    cross, or when the draws' distribution is skewed away from it; reporting such an interval would
    claim the estimate itself is implausible. Widening keeps the draws' side and says so."""
    if not len(finite):
        return float("nan"), float("nan")
    low, high = (float(v) for v in _percentiles(finite, level))
    wide_low, wide_high = (float(v) for v in _including(value, low, high))
    if (wide_low, wide_high) != (low, high):
        flags.append(f"{name}_interval_widened: the estimate {value:.6g} lay outside the {level:.0%} percentile interval "
                     f"[{low:.6g}, {high:.6g}]; the interval is widened to include it")
    return wide_low, wide_high


def misspecification_flags(residuals, order) -> list:
    """`misspecified` when the residuals ordered by x show structure a correctly specified law leaves out.

    Two tests, each at p < MISSPECIFICATION_P: a Wald-Wolfowitz runs test on the signs (a curve that
    misses systematically leaves long runs of one sign), and an F test of a quadratic in log x against
    a constant (a trend or a bend the law cannot follow). The fit has already absorbed what its own
    parameters can, so both are conservative on a correct law; the false-alarm rate is measured in
    tests/fit/test_bias_and_intervals.py."""
    r = np.asarray(residuals, dtype=np.float64)
    v = np.log(np.asarray(order, dtype=np.float64))
    if len(r) < MIN_RESIDUAL_TEST_POINTS or np.ptp(v) == 0 or np.sqrt(np.mean(r * r)) < NOISELESS_RMS:
        return []
    reasons = []
    p_runs = _runs_test(r[np.argsort(v, kind="stable")])
    if p_runs < MISSPECIFICATION_P:
        reasons.append(f"the residual signs ordered by x form too few runs (runs test p = {p_runs:.2g})")
    p_shape, share = _curvature_test(r, v)
    if p_shape < MISSPECIFICATION_P:
        reasons.append(f"a quadratic in log x explains {share:.0%} of the residual variance (F test p = {p_shape:.2g})")
    if not reasons:
        return []
    return [f"misspecified: {'; '.join(reasons)}: the law does not capture the shape of the data, so its intervals and forecasts do not hold"]


def _runs_test(ordered: np.ndarray) -> float:
    """One-sided p-value of a Wald-Wolfowitz runs test for too few runs of residual sign (normal approximation)."""
    signs = np.sign(ordered[ordered != 0])
    n_pos, n_neg = int(np.sum(signs > 0)), int(np.sum(signs < 0))
    n = n_pos + n_neg
    if n_pos == 0 or n_neg == 0:
        return 0.0 if n >= MIN_RESIDUAL_TEST_POINTS else 1.0  # every residual on one side of the curve
    runs = 1 + int(np.count_nonzero(signs[1:] != signs[:-1]))
    mean = 2.0 * n_pos * n_neg / n + 1.0
    variance = 2.0 * n_pos * n_neg * (2.0 * n_pos * n_neg - n) / (n * n * (n - 1.0))
    if variance <= 0:
        return 1.0
    return float(stats.norm.cdf((runs - mean) / np.sqrt(variance)))


def _curvature_test(r: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """p-value of an F test of r ~ 1 + v + v^2 against r ~ 1, and the share of variance the quadratic explains."""
    z = (v - v.mean()) / v.std()
    design = np.stack([np.ones_like(z), z, z * z], axis=1)
    coef, *_ = np.linalg.lstsq(design, r, rcond=None)
    total = float(np.sum((r - r.mean()) ** 2))
    left = float(np.sum((r - design @ coef) ** 2))
    dof = len(r) - 3
    if total <= 0 or dof <= 0:
        return 1.0, 0.0
    if left <= 0:
        return 0.0, 1.0
    f_stat = ((total - left) / 2.0) / (left / dof)
    return float(stats.f.sf(f_stat, 2, dof)), (total - left) / total
