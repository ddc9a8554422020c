"""Minimizers: scipy's L-BFGS-B for one start, and a batched L-BFGS that runs thousands of independent
starts at once in numpy (one vectorized objective call per iteration instead of one Python call per
start and iteration), for multi-start grids such as Chinchilla's 4,500 starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import OptimizeResult, minimize

log = logging.getLogger(__name__)

# f(x) -> (value, gradient) for one parameter vector; batched: f(X, rows) -> (values [S], gradients [S, P])
# where rows are the indices of the starts in X (so per-start data such as bootstrap weights can be used).
Objective = Callable[..., tuple]

# scipy's ftol is relative to max(|f|, 1), so for objectives far below 1 (Huber sums ~1e-3, log-space
# mean squares ~1e-5) it acts as an absolute tolerance: its default 2.2e-9 stops bootstrap refits
# early enough to shrink intervals several-fold. These tolerances follow the valleys to their floor.
POLISH_OPTIONS = {"maxiter": 15000, "ftol": 1e-15, "gtol": 1e-11, "maxcor": 20}
REFIT_MAX_ITER = 2000  # batched L-BFGS iterations of a bootstrap refit, which starts at the estimate


def minimize_lbfgs(objective: Objective, x0: np.ndarray, bounds=None) -> OptimizeResult:
    """scipy L-BFGS-B from one start with the analytic gradient and tight tolerances."""
    return minimize(objective, np.asarray(x0, dtype=np.float64), jac=True, method="L-BFGS-B", bounds=bounds, options=POLISH_OPTIONS)


def minimize_below(objective: Objective, margin, x0: np.ndarray, bounds=None) -> OptimizeResult:
    """Minimize subject to margin(x) >= 0 elementwise (margin returns values and their jacobian).

    SLSQP, not L-BFGS: a lower-envelope fit is a constrained problem whose optimum sits on the
    constraints, where a penalty term would make L-BFGS's line search fail.
    """
    constraint = {"type": "ineq", "fun": lambda x: margin(x)[0], "jac": lambda x: margin(x)[1]}
    return minimize(
        objective, np.asarray(x0, dtype=np.float64), jac=True, method="SLSQP", bounds=bounds,
        constraints=[constraint], options={"maxiter": 1000, "ftol": 1e-14},
    )


@dataclass(frozen=True)
class BatchResult:
    x: np.ndarray  # [S, P] final points
    f: np.ndarray  # [S] final objective values (inf where the objective stopped being finite)
    converged: np.ndarray  # [S] bool: stopped by a tolerance, not by max_iter or a failed line search
    iterations: int


def batched_lbfgs(
    objective: Objective,
    x0: np.ndarray,
    *,
    memory: int = 10,
    max_iter: int = 500,
    ftol: float = 1e-10,
    gtol: float = 1e-9,
    max_backtracks: int = 30,
) -> BatchResult:
    """Independent L-BFGS runs (two-loop recursion, Armijo backtracking) on every row of x0 at once.

    Each start has its own curvature history and step length, so the runs are exactly independent;
    finished starts leave the active set, so late iterations cost only the stragglers. A start stops
    when its relative decrease falls below ftol or its largest gradient entry below gtol.
    """
    x = np.array(x0, dtype=np.float64, copy=True)
    n_starts, n_params = x.shape
    f, g = objective(x, np.arange(n_starts))
    f, g = np.array(f, dtype=np.float64), np.array(g, dtype=np.float64)
    s_hist = np.zeros((memory, n_starts, n_params))
    y_hist = np.zeros((memory, n_starts, n_params))
    rho = np.zeros((memory, n_starts))  # rho = 0 marks an empty or rejected slot: it then has no effect
    gamma = np.ones(n_starts)
    active = np.isfinite(f)
    converged = np.zeros(n_starts, dtype=bool)
    iteration = 0
    for iteration in range(1, max_iter + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        slot = iteration % memory
        direction = _two_loop(g[idx], s_hist[:, idx], y_hist[:, idx], rho[:, idx], gamma[idx], slot, memory)
        slope = np.einsum("ij,ij->i", direction, g[idx])
        uphill = ~(slope < 0)
        direction[uphill] = -g[idx][uphill] * gamma[idx][uphill, None]
        slope[uphill] = np.einsum("ij,ij->i", direction[uphill], g[idx][uphill])
        x_new, f_new, g_new, ok = _backtrack(objective, idx, x[idx], f[idx], direction, slope, max_backtracks)
        step, change = x_new - x[idx], g_new - g[idx]
        curvature = np.einsum("ij,ij->i", step, change)
        good = ok & (curvature > 1e-12 * np.einsum("ij,ij->i", change, change))
        s_hist[slot, idx] = np.where(good[:, None], step, 0.0)
        y_hist[slot, idx] = np.where(good[:, None], change, 0.0)
        rho[slot, idx] = np.where(good, 1.0 / np.where(good, curvature, 1.0), 0.0)
        gamma[idx] = np.where(good, curvature / np.maximum(np.einsum("ij,ij->i", change, change), 1e-300), gamma[idx])
        decrease = f[idx] - f_new
        x[idx], f[idx], g[idx] = np.where(ok[:, None], x_new, x[idx]), np.where(ok, f_new, f[idx]), np.where(ok[:, None], g_new, g[idx])
        done = (decrease <= ftol * np.maximum(np.abs(f[idx]), 1e-300)) | (np.abs(g[idx]).max(axis=1) <= gtol)
        converged[idx] = ok & done
        active[idx] = ok & ~done
    log.debug("batched L-BFGS: %d starts, %d iterations, %d converged", n_starts, iteration, converged.sum())
    return BatchResult(x=x, f=f, converged=converged, iterations=iteration)


def lbfgs_refit(objective_of: Callable, theta: np.ndarray) -> Callable:
    """A bootstrap refit for `bootstrap.refit_draws`: every draw by `batched_lbfgs` from the estimate
    theta, on the objective objective_of(weights [r, n], log_y [r, n]) of the draws."""

    def refit(weights, log_y):
        with np.errstate(over="ignore", invalid="ignore"):
            batch = batched_lbfgs(objective_of(weights, log_y), np.repeat(theta[None], len(weights), axis=0), max_iter=REFIT_MAX_ITER)
        return batch.x, batch.converged

    return refit


def _two_loop(g, s_hist, y_hist, rho, gamma, newest, memory):
    """H g by the L-BFGS two-loop recursion, per row, newest pair first; returns the direction -H g."""
    q = g.copy()
    alphas = np.zeros((memory, g.shape[0]))
    order = [(newest - k) % memory for k in range(1, memory + 1)]  # slot `newest` is about to be written
    for k in order:
        alphas[k] = rho[k] * np.einsum("ij,ij->i", s_hist[k], q)
        q -= alphas[k][:, None] * y_hist[k]
    r = q * gamma[:, None]
    for k in reversed(order):
        beta = rho[k] * np.einsum("ij,ij->i", y_hist[k], r)
        r += (alphas[k] - beta)[:, None] * s_hist[k]
    return -r


def _backtrack(objective, rows, x, f, direction, slope, max_backtracks, c1=1e-4):
    """Armijo backtracking from a unit step, halving only the starts whose step was rejected."""
    t = np.ones(x.shape[0])
    x_new = x + direction
    f_new, g_new = objective(x_new, rows)
    f_new, g_new = np.array(f_new, dtype=np.float64), np.array(g_new, dtype=np.float64)
    ok = np.isfinite(f_new) & (f_new <= f + c1 * t * slope)
    for _ in range(max_backtracks):
        retry = np.flatnonzero(~ok)
        if retry.size == 0:
            break
        t[retry] *= 0.5
        x_new[retry] = x[retry] + t[retry, None] * direction[retry]
        f_new[retry], g_new[retry] = objective(x_new[retry], rows[retry])
        ok[retry] = np.isfinite(f_new[retry]) & (f_new[retry] <= f[retry] + c1 * t[retry] * slope[retry])
    return x_new, f_new, g_new, ok
