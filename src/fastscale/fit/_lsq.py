"""Weighted least squares on log y for the smooth laws (power law, Kaplan, allocation, critical batch).

Residuals are taken in log space because losses, sizes and step counts are compared by ratio: a
1% miss at N=1e5 counts as much as at N=1e9. The estimate runs scipy L-BFGS-B from a few starts and
polishes the best by Levenberg-Marquardt (`solve`; SLSQP alone when the law must lie on or below the
data). The bootstrap (`bootstrap`) refits every draw of a block at once from the estimate by a
projected Levenberg-Marquardt (`refit`): from the estimate a refit is a small-residual least-squares
problem where Gauss-Newton steps converge in a few iterations, and one vectorized step for a thousand
draws costs about what one scipy call costs for one (a scipy call per draw made a Kaplan L(N, D)
bootstrap take minutes). The few draws it does not finish go to scipy one by one, as do all the draws
of a lower envelope: its constraints decide the refit, and a frontier has ~100 points.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastscale.fit._checks import positive_int
from fastscale.fit._optimize import minimize_below, minimize_lbfgs
from fastscale.fit import results
from fastscale.fit.bootstrap import bootstrap_blocks, check_resampling, refit_draws

log = logging.getLogger(__name__)

GRADIENT_TOL = 1e-7  # a line search that cannot improve a point this flat has converged
# Levenberg-Marquardt refits: a row stops when an accepted step lowers its cost by less than LM_FTOL
# (relative: the parameters are then within ~sqrt(LM_FTOL) of their sampling spread from the optimum)
# or its projected gradient of the mean weighted square falls below LM_GTOL; its damping starts at
# LM_START_DAMPING (times the normal matrix' diagonal), and a row whose damping passes LM_MAX_DAMPING
# found no step that lowers its cost and did not converge.
# A flat valley of an undetermined parameter (a loss that does not depend on x: alpha runs to 0 along
# L_inf + exp(k) = const) takes Gauss-Newton thousands of steps; they are cheap, as only the draws
# still moving take them (an order of magnitude faster than scipy per draw: benchmarks/results/notes.md).
LM_MAX_ITER = 5000
LM_POLISH_ITER = 100  # the estimate's polish on every row (1e6 rows: a few steps)
LM_FTOL = 1e-12
LM_GTOL = 1e-11
LM_START_DAMPING = 1e-3
LM_MAX_DAMPING = 1e12
SCREEN_ROWS = 10_000  # above this many rows the starts race on a subsample (`screened_solve`)
REFIT_CELLS = 1_000_000  # draws x rows refitted at once: jacobians of 8 MB per parameter


@dataclass(frozen=True)
class LogModel:
    names: tuple  # internal parameter names, for messages
    log_y: np.ndarray  # [n] observed log values
    log_prediction: Callable  # theta [R, P] -> (log prediction [R, n], jacobian [R, n, P])
    bounds: tuple  # (low, high) per parameter, None for unbounded
    starts: tuple  # initial theta vectors
    below: bool = False  # constrain the law to lie on or below every data point (a lower envelope)


@dataclass(frozen=True)
class Solution:
    theta: np.ndarray
    objective: float
    converged: bool


def objective(model: LogModel, weights: np.ndarray):
    """theta [P] -> (half the weighted mean squared log residual, its gradient), for scipy."""
    total = weights.sum()

    def value_and_gradient(theta):
        log_pred, jac = model.log_prediction(theta[None])
        r = model.log_y - log_pred[0]
        return 0.5 * np.sum(weights * r * r) / total, -(weights * r) @ jac[0] / total

    return value_and_gradient


def solve(model: LogModel, weights: np.ndarray, starts=None) -> Solution:
    """Best of L-BFGS-B from each start, then Levenberg-Marquardt from there (`refit` on the one data
    set) unless the law is a lower envelope. L-BFGS-B finds the basin; on large data it also stops
    short of the floor (on 1e6 Kaplan L(N, D) rows alpha_N came out 2e-4 (relative) off, with an objective
    above the true parameters' own), where Gauss-Newton steps reach the floor in a few passes.
    results.fit_result flags non-convergence and bounds."""
    best = _minimize(model, weights, starts)
    if model.below:
        return best
    polished, done = refit(model, best.theta, weights[None], model.log_y[None], max_iter=LM_POLISH_ITER)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        value = float(objective(model, weights)(polished[0])[0])
    if not value <= best.objective:
        return best
    return Solution(polished[0], value, bool(done[0]) or best.converged)


def _minimize(model: LogModel, weights: np.ndarray, starts=None) -> Solution:
    """Best of scipy's L-BFGS-B (SLSQP for a lower envelope) from each start."""
    if model.below:
        model = _remembering(model)
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


def screened_solve(build: Callable, weights: np.ndarray, order: np.ndarray) -> tuple[LogModel, Solution]:
    """(build(all rows), its optimum). On more than SCREEN_ROWS rows the starts race on the
    `spread_rows` of `order` (the law's input), all at once by Levenberg-Marquardt (`refit`), and only
    the winner goes on to all the rows: a subsample spanning the input already tells the basins apart,
    and each start would cost dozens of passes over all the data (times before and after:
    benchmarks/results/notes.md). scipy takes over
    where the polish on all rows does not converge. build(rows) -> the LogModel of those rows (an index
    array, or slice(None))."""
    model = build(slice(None))
    if len(weights) <= SCREEN_ROWS or model.below:
        return model, solve(model, weights)
    rows = spread_rows(order)
    screen = build(rows)
    starts = np.array(screen.starts, dtype=np.float64)
    shape = (len(starts), len(rows))
    every_start = (np.broadcast_to(weights[rows], shape), np.broadcast_to(screen.log_y, shape))
    found, _ = refit(screen, starts, *every_start, max_iter=LM_POLISH_ITER)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        values = np.array([objective(screen, weights[rows])(theta)[0] for theta in found])
    winner = found[int(np.argmin(np.where(np.isfinite(values), values, np.inf)))]
    polished, done = refit(model, winner, weights[None], model.log_y[None], max_iter=LM_POLISH_ITER)
    if done[0]:
        return model, Solution(polished[0], float(objective(model, weights)(polished[0])[0]), True)
    return model, solve(model, weights, starts=(winner,))


def spread_rows(order: np.ndarray) -> np.ndarray:
    """At most SCREEN_ROWS row indices, evenly spaced in the sorted order of `order` (all rows when fewer)."""
    if len(order) <= SCREEN_ROWS:
        return np.arange(len(order))
    picks = np.unique(np.linspace(0, len(order) - 1, SCREEN_ROWS).astype(np.int64))
    return np.argsort(order, kind="stable")[picks]


def _projected_gradient(model: LogModel, theta, gradient) -> float:
    """Largest gradient entry after zeroing those that push a parameter out through its bound."""
    g = np.array(gradient, dtype=np.float64)
    for j, (low, high) in enumerate(model.bounds):
        at_low = low is not None and theta[j] <= low + 1e-10 * max(1.0, abs(low))
        at_high = high is not None and theta[j] >= high - 1e-10 * max(1.0, abs(high))
        if (at_low and g[j] > 0) or (at_high and g[j] < 0):
            g[j] = 0.0
    return float(np.max(np.abs(g)))


def _remembering(model: LogModel) -> LogModel:
    """The model with its last prediction remembered: SLSQP asks for the objective and the constraints
    at each point in turn (a third of a frontier bootstrap's time went to computing it twice)."""
    last = {}

    def log_prediction(theta):
        if "theta" not in last or not np.array_equal(last["theta"], theta):
            last["theta"], last["value"] = np.array(theta), model.log_prediction(theta)
        return last["value"]

    return dataclasses.replace(model, log_prediction=log_prediction)


def _margin(model: LogModel, theta, rows):
    """log y - log prediction and its jacobian on the rows in use (weight > 0, so a bootstrap resample
    constrains only the points it drew): >= 0 where the law lies on or below the data."""
    log_pred, jac = model.log_prediction(theta[None])
    return (model.log_y - log_pred[0])[rows], -jac[0][rows]


def check_bootstrap(resampling: str, n_bootstrap, groups=None) -> None:
    """The bootstrap options, checked before any fitting."""
    check_resampling(resampling, groups)
    positive_int("n_bootstrap", n_bootstrap, minimum=0)


def bootstrap(model: LogModel, theta: np.ndarray, weights: np.ndarray, *, resampling: str, n_bootstrap: int, seed: int,
              groups=None):
    """Draw `n_bootstrap` data sets (`bootstrap.bootstrap_blocks`: the parametric scheme centres them on
    the law at theta with the fit's weights) and refit each from theta. Options as `check_bootstrap` passed.

    Returns ([n_ok, P] refits that converged, number that did not)."""
    blocks = bootstrap_blocks(
        resampling, log_y=model.log_y, log_pred=_log_prediction(model, theta), weights=weights,
        n_params=len(theta), n_bootstrap=n_bootstrap, seed=seed, groups=groups,
    )
    return refit_draws(blocks, functools.partial(_refit_part, model, theta), len(theta), REFIT_CELLS)


def bootstrapped_result(cls, law: str, model: LogModel, solution: Solution, weights: np.ndarray, to_params, names: tuple, *,
                        level: float, resampling: str, n_bootstrap: int, seed: int, groups=None, **fields):
    """A least-squares law's result (`results.bootstrapped_result`): parameters `names` from the solution
    by to_params ([R, P] thetas -> [R, len(names)]), the bootstrap draws refitted from it as `bootstrap`
    does; fields: the rest of `results.fit_result`'s arguments (bounds, flags, residual_order, ...)."""
    theta = solution.theta
    return results.bootstrapped_result(
        cls, log_y=model.log_y, log_pred=_log_prediction(model, theta), refit=functools.partial(_refit_part, model, theta),
        n_params=len(theta), to_samples=to_params, resampling=resampling, n_bootstrap=n_bootstrap, seed=seed, weights=weights,
        groups=groups, cells=REFIT_CELLS, law=law, params={name: float(v) for name, v in zip(names, to_params(theta[None])[0])},
        level=level, converged=solution.converged, objective=solution.objective, **fields,
    )


def _log_prediction(model: LogModel, theta) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return model.log_prediction(np.asarray(theta, dtype=np.float64)[None])[0][0]


def _refit_part(model: LogModel, theta, weights, log_y):
    """All draws at once (`refit`), then scipy for the few it did not finish; lower envelopes all by scipy."""
    if model.below:
        return _refit_one_by_one(model, theta, weights, log_y)
    refits, converged = refit(model, theta, weights, log_y)
    rest = np.flatnonzero(~converged)
    if rest.size:
        log.debug("%s: %d of %d bootstrap refits left to scipy", model.names, rest.size, len(weights))
        refits[rest], converged[rest] = _refit_one_by_one(model, theta, weights[rest], log_y[rest])
    return refits, converged


def _refit_one_by_one(model: LogModel, theta, weights, log_y):
    """scipy refits, one per draw: lower envelopes (SLSQP, constrained on the rows the draw holds) and
    the draws Levenberg-Marquardt did not finish in LM_MAX_ITER steps or whose damping ran away."""
    solutions = [_minimize(dataclasses.replace(model, log_y=log_y[i]), weights[i], starts=(theta,)) for i in range(len(weights))]
    return np.array([s.theta for s in solutions]).reshape(-1, len(theta)), np.array([s.converged for s in solutions], dtype=bool)


def refit(model: LogModel, theta, weights, log_y, max_iter: int = LM_MAX_ITER):
    """Weighted least squares of every draw (rows of weights [R, n] and log_y [R, n]) at once, from theta
    ([P], or [R, P]: one start per draw), by `levenberg_marquardt` projected on the model's bounds.
    Returns (theta [R, P], converged [R])."""
    return levenberg_marquardt(model.log_prediction, theta, weights, log_y, bounds=model.bounds, max_iter=max_iter)


def levenberg_marquardt(log_prediction: Callable, theta, weights, log_y, *, bounds=None, max_iter: int = LM_MAX_ITER,
                        ftol: float = LM_FTOL, gtol: float = LM_GTOL, curvature: Callable | None = None):
    """Weighted least squares on log y of every draw (rows of weights [R, n] and log_y [R, n]) at once,
    from theta ([P], or [R, P]: one start per draw), by Levenberg-Marquardt: log_prediction(theta
    [S, P]) -> (log prediction [S, n], jacobian [S, n, P]). Returns (theta [R, P], converged [R]).

    Each draw keeps its own damping (divided by 3 after an accepted step, times 4 after a rejected one,
    Marquardt's diagonal scaling). A draw stops when an accepted step lowers its cost by less than ftol
    (relative) or its projected gradient falls below gtol times its total weight; a draw whose damping
    passes LM_MAX_DAMPING found no step that lowers its cost and did not converge.

    bounds: (low, high) per parameter, None for an open side. A parameter on a bound whose descent
    direction points out of the box is held there for the step (its row and column leave the normal
    equations, as in projected Newton methods), the others take the damped Gauss-Newton step and the
    trial point is clipped into the box. So a draw can end on a bound, as scipy's L-BFGS-B would, and
    `fit_result` sees it (`<p>_at_bound`). curvature(theta [S, P], descent [S, P]) -> [S, P]: what a
    law adds to the normal matrix's diagonal, the second-order term a Gauss-Newton step leaves out
    (a change of variables' curvature: broken.py)."""
    n_params = np.shape(theta)[-1]
    low = np.array([-np.inf if b is None else b for b, _ in bounds or [(None, None)] * n_params], dtype=np.float64)
    high = np.array([np.inf if b is None else b for _, b in bounds or [(None, None)] * n_params], dtype=np.float64)
    weights, log_y = np.asarray(weights, dtype=np.float64), np.asarray(log_y, dtype=np.float64)
    x = np.array(np.broadcast_to(np.clip(np.asarray(theta, dtype=np.float64), low, high), (len(weights), len(low))))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_pred, jacobian = log_prediction(x)
        jacobian = np.array(np.broadcast_to(jacobian, (*log_y.shape, x.shape[1])))
        r = log_y - log_pred
        cost = np.einsum("rn,rn->r", weights * r, r)
        total = weights.sum(axis=1)
        damping = np.full(len(x), LM_START_DAMPING)
        converged = np.zeros(len(x), dtype=bool)
        active = np.isfinite(cost)
        for _ in range(max_iter):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            step, flat = _step(jacobian[idx], weights[idx], r[idx], x[idx], low, high, damping[idx], gtol * total[idx], curvature)
            trial = np.clip(x[idx] + step, low, high)
            trial_log_pred, trial_jacobian = log_prediction(trial)
            trial_r = log_y[idx] - trial_log_pred
            trial_cost = np.einsum("rn,rn->r", weights[idx] * trial_r, trial_r)
            better = np.isfinite(trial_cost) & (trial_cost <= cost[idx])
            small = better & (cost[idx] - trial_cost <= ftol * cost[idx])
            accept = idx[better]
            x[accept], r[accept], cost[accept] = trial[better], trial_r[better], trial_cost[better]
            jacobian[accept] = np.broadcast_to(trial_jacobian, (len(idx), *jacobian.shape[1:]))[better]
            damping[idx] = np.where(better, damping[idx] / 3, damping[idx] * 4)
            converged[idx] = flat | small
            active[idx] = ~(flat | small) & (damping[idx] < LM_MAX_DAMPING)
    return x, converged


def _step(jacobian, weights, r, x, low, high, damping, flat_below, curvature):
    """The damped Gauss-Newton step of each draw with parameters pushed against a bound held fixed,
    and whether its projected gradient already vanishes (falls below flat_below)."""
    weighted = jacobian * weights[:, :, None]
    normal = np.matmul(weighted.transpose(0, 2, 1), jacobian)
    descent = np.einsum("rnp,rn->rp", weighted, r)  # minus half the gradient of the cost
    held = ((x <= low) & (descent < 0)) | ((x >= high) & (descent > 0))
    free = ~held
    flat = np.abs(descent * free).max(axis=1) <= flat_below
    diagonal = np.einsum("rpp->rp", normal)  # a writeable view: a law's curvature is added in place
    if curvature is not None:
        diagonal += curvature(x, descent)
    floor = 1e-12 * diagonal.max(axis=1, keepdims=True) + 1e-300
    system = normal * (free[:, :, None] & free[:, None, :])
    system += np.eye(x.shape[1]) * (damping[:, None] * (diagonal + floor) + held)[:, :, None]
    return np.linalg.solve(system, (descent * free)[:, :, None])[:, :, 0], flat
