"""The critical batch size (McCandlish et al. 2018; Kaplan et al. 2020 sec. 5.1).

Runs at several batch sizes B reach one target loss after S steps and E = B S examples (or tokens).
They trade off as (S/S_min - 1)(E/E_min - 1) = 1, i.e. S = S_min (1 + B_crit/B) with B_crit = E_min/S_min.
`fit_critical_batch` fits S_min and B_crit to such pairs; `fit_critical_batch_vs_loss` fits
B_crit(L) = B* / L^(1/alpha_B) to critical batches (or logged gradient noise scales) measured at several
losses. B and B_crit come out in the units of E/S (examples, or tokens when E counts tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastscale.fit import _lsq
from fastscale.fit._checks import as_values, enough_data, positive_int, same_length
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, resample_counts
from fastscale.fit.results import FitResult, fit_result


@dataclass(frozen=True)
class CriticalBatchFit(FitResult):
    """params: S_min (steps), E_min (examples), B_crit = E_min/S_min. predict(B) gives the steps S(B)."""

    scales = ("S_min", "E_min", "B_crit")

    @staticmethod
    def _law(p, batch_size):
        return p["S_min"] * (1.0 + p["B_crit"] / batch_size)

    def examples(self, batch_size) -> np.ndarray:
        """E(B) = E_min (1 + B/B_crit): the examples needed at batch size B."""
        return self.params["E_min"] * (1.0 + np.asarray(batch_size, dtype=np.float64) / self.params["B_crit"])


@dataclass(frozen=True)
class CriticalBatchLossFit(FitResult):
    """params: B_star, alpha_B in B_crit(L) = B_star / L^(1/alpha_B). predict(L) gives B_crit."""

    scales = ("B_star",)

    @staticmethod
    def _law(p, loss):
        return p["B_star"] / loss ** (1.0 / p["alpha_B"])


def fit_critical_batch(
    steps, examples, *, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0
) -> CriticalBatchFit:
    """From (S, E) pairs that reach the same loss, fit S = S_min (1 + B_crit/B), B = E/S, on log S.

    Given B_crit the best log S_min is the mean residual, so only log B_crit is searched; one start at
    the geometric mean batch size suffices (the profile is unimodal in log B_crit). Needs 3 distinct
    batch sizes: one batch size cannot tell S_min from B_crit.
    """
    s = as_values("steps", steps, positive=True)
    e = as_values("examples", examples, positive=True)
    size = same_length(steps=s, examples=e)
    enough_data("critical batch", 2, 3, **{"batch size (examples/steps)": e / s})
    log_b = np.log(e / s)

    def log_prediction(theta):
        log_s_min, log_b_crit = theta
        ratio = np.exp(log_b_crit - log_b)
        return log_s_min + np.log1p(ratio), np.stack([np.ones(size), ratio / (1.0 + ratio)], axis=1)

    log_b_crit = log_b.mean()
    start = np.array([np.mean(np.log(s) - np.log1p(np.exp(log_b_crit - log_b))), log_b_crit])
    bounds = ((None, None), (log_b.min() - 10.0, log_b.max() + 10.0))
    model = _lsq.LogModel(("log S_min", "log B_crit"), np.log(s), log_prediction, bounds, (start,))
    weights = np.ones(size)
    solution = _lsq.solve(model, weights)
    counts = resample_counts(size, positive_int("n_bootstrap", n_bootstrap, minimum=0), seed)
    draws, failed = _lsq.bootstrap(model, solution.theta, counts, weights)

    def to_params(theta):
        s_min, b_crit = np.exp(theta)
        return s_min, s_min * b_crit, b_crit

    params = dict(zip(("S_min", "E_min", "B_crit"), to_params(solution.theta)))
    return fit_result(
        CriticalBatchFit,
        law="critical-batch",
        params=params,
        samples=np.array([to_params(t) for t in draws]).reshape(-1, 3),
        level=level,
        converged=solution.converged,
        failed_refits=failed,
        bounds={"B_crit": tuple(np.exp(bounds[1]))},  # more than e^10 outside the batch sizes tried
        residuals=np.log(s) - np.log(CriticalBatchFit._law(params, e / s)),
        objective=solution.objective,
        n_points=size,
    )


def fit_critical_batch_vs_loss(
    loss, critical_batch, *, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0
) -> CriticalBatchLossFit:
    """Fit B_crit(L) = B_star / L^(1/alpha_B) (a line in log-log) to critical batches or gradient noise scales."""
    y = as_values("loss", loss, positive=True)
    b = as_values("critical_batch", critical_batch, positive=True)
    size = same_length(loss=y, critical_batch=b)
    enough_data("critical batch vs loss", 2, 3, loss=y)
    center = np.log(y).mean()
    u = np.log(y) - center
    jac = np.stack([np.ones(size), -u], axis=1)
    slope, intercept = np.polyfit(u, np.log(b), 1)
    inverse_alpha_bound = 1e-6  # B_crit does not grow as the loss falls
    bounds = ((None, None), (inverse_alpha_bound, None))
    model = _lsq.LogModel(("k", "1/alpha_B"), np.log(b), lambda t: (t[0] - t[1] * u, jac), bounds, (np.array([intercept, max(-slope, 1e-3)]),))
    weights = np.ones(size)
    solution = _lsq.solve(model, weights)
    counts = resample_counts(size, positive_int("n_bootstrap", n_bootstrap, minimum=0), seed)
    draws, failed = _lsq.bootstrap(model, solution.theta, counts, weights)

    def to_params(theta):
        k, inverse_alpha = theta  # log B = k - (1/alpha_B)(log L - center)
        return np.exp(k + inverse_alpha * center), 1.0 / inverse_alpha

    params = dict(zip(("B_star", "alpha_B"), to_params(solution.theta)))
    return fit_result(
        CriticalBatchLossFit,
        law="critical-batch-vs-loss",
        params=params,
        samples=np.array([to_params(t) for t in draws]).reshape(-1, 2),
        level=level,
        converged=solution.converged,
        failed_refits=failed,
        bounds={"alpha_B": (None, 1.0 / inverse_alpha_bound)},
        residuals=np.log(b) - np.log(CriticalBatchLossFit._law(params, y)),
        objective=solution.objective,
        n_points=size,
    )
