"""Weighted least squares on log y for the smooth laws (power law, Kaplan, allocation, critical batch).

Residuals are taken in log space because losses, sizes and step counts are compared by ratio: a
1% miss at N=1e5 counts as much as at N=1e9. Each fit runs scipy L-BFGS-B from a few starts and keeps
the best (SLSQP when the law must lie on or below the data); the bootstrap refits every resample from
that optimum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastscale.fit._optimize import minimize_below, minimize_lbfgs

GRADIENT_TOL = 1e-7  # a line search that cannot improve a point this flat has converged


@dataclass(frozen=True)
class LogModel:
    names: tuple  # internal parameter names, for messages
    log_y: np.ndarray  # [n] observed log values
    log_prediction: Callable  # theta -> (log prediction [n], jacobian [n, P])
    bounds: tuple  # (low, high) per parameter, None for unbounded
    starts: tuple  # initial theta vectors
    below: bool = False  # constrain the law to lie on or below every data point (a lower envelope)


@dataclass(frozen=True)
class Solution:
    theta: np.ndarray
    objective: float
    converged: bool


def objective(model: LogModel, weights: np.ndarray):
    total = weights.sum()

    def value_and_gradient(theta):
        log_pred, jac = model.log_prediction(theta)
        r = model.log_y - log_pred
        return 0.5 * np.sum(weights * r * r) / total, -(weights * r) @ jac / total

    return value_and_gradient


def solve(model: LogModel, weights: np.ndarray, starts=None) -> Solution:
    """Best of L-BFGS-B from each start (results.fit_result flags non-convergence and bounds)."""
    fun = objective(model, weights)
    best = None
    for start in model.starts if starts is None else starts:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if model.below:
                result = minimize_below(fun, lambda t: _margin(model, t, weights > 0), start, bounds=model.bounds)
            else:
                result = minimize_lbfgs(fun, start, bounds=model.bounds)
        if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
            best = result
    if best is None:
        raise FloatingPointError(f"every start gave a non-finite objective for parameters {model.names}")
    # On a lower envelope the gradient need not vanish at the optimum (constraints are active); on a
    # bound only its component pointing into the box must.
    converged = bool(best.success) or (not model.below and _projected_gradient(model, best.x, best.jac) <= GRADIENT_TOL)
    return Solution(best.x, float(best.fun), converged)


def _projected_gradient(model: LogModel, theta, gradient) -> float:
    """Largest gradient entry after zeroing those that push a parameter out through its bound."""
    g = np.array(gradient, dtype=np.float64)
    for j, (low, high) in enumerate(model.bounds):
        at_low = low is not None and theta[j] <= low + 1e-10 * max(1.0, abs(low))
        at_high = high is not None and theta[j] >= high - 1e-10 * max(1.0, abs(high))
        if (at_low and g[j] > 0) or (at_high and g[j] < 0):
            g[j] = 0.0
    return float(np.max(np.abs(g)))


def _margin(model: LogModel, theta, rows):
    """log y - log prediction and its jacobian on the rows in use (weight > 0, so a bootstrap resample
    constrains only the points it drew): >= 0 where the law lies on or below the data."""
    log_pred, jac = model.log_prediction(theta)
    return (model.log_y - log_pred)[rows], -jac[rows]


def bootstrap(model: LogModel, theta: np.ndarray, counts: np.ndarray, weights: np.ndarray):
    """Refit every resample (counts: rows of per-point counts, an array or an iterator of rows) from
    theta; returns ([n_ok, P] draws, number of failed refits)."""
    draws, failed = [], 0
    for row in counts:
        solution = solve(model, weights * row, starts=(theta,))
        if solution.converged:
            draws.append(solution.theta)
        else:
            failed += 1
    return np.array(draws).reshape(-1, len(theta)), failed
