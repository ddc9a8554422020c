"""Compute-optimal allocation N_opt(C) = (C/C0)^a, from optimal pairs or from IsoFLOP profiles.

`fit_allocation` is the straight line in log-log space through (C, N_opt) points, optionally weighted
(Porian et al. 2024 weight each budget by 1/std^2 of log N_opt). `fit_isoflop` is Chinchilla's
approach 2: a parabola of loss against log N per compute budget, its minimum N_opt(C), then the line.
Henighan et al. write the same law N_opt = (C/C0)^beta; here the exponent is `a` throughout, as in
Hoffmann et al. and Porian et al., and D_opt follows from C = 6 N D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastscale.fit import _lsq
from fastscale.fit._checks import FitInputError, as_values, enough_data, positive_int, same_length
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING
from fastscale.fit.results import Estimate, FitResult, fit_result, misspecification_flags

MIN_POINTS_PER_BUDGET = 3
MIN_BUDGETS = 3  # a line through the vertices needs a residual to be checked


@dataclass(frozen=True)
class AllocationFit(FitResult):
    """params: a (exponent) and C0 (in the units of C), N_opt(C) = (C/C0)^a."""

    scales = ("C0",)

    @staticmethod
    def _law(p, compute):
        return (compute / p["C0"]) ** p["a"]

    def compute_for(self, n_opt: float) -> Estimate:
        """The compute at which n_opt is the compute-optimal size, C = C0 n_opt^(1/a), with its
        interval over the bootstrap draws of (a, C0) at this n_opt."""
        if not n_opt > 0:
            raise FitInputError(f"n_opt={n_opt!r}: expected a model size > 0")
        return self.estimate(lambda p: p["C0"] * n_opt ** (1.0 / p["a"]))

    def tokens(self, compute) -> np.ndarray:
        """D_opt(C) = C / (6 N_opt(C)), for C in FLOPs."""
        compute = np.asarray(compute, dtype=np.float64)
        return compute / (6.0 * self.predict(compute))


def fit_allocation(
    compute, n_opt, *, weights=None, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> AllocationFit:
    """Fit N_opt = (C/C0)^a by (weighted) least squares on log N_opt; the residuals ordered by C, times
    sqrt(weight), are tested for misspecification. resampling: the bootstrap scheme
    (`bootstrap.bootstrap_blocks`; with weights, a point's parametric noise has variance s^2 / weight)."""
    c, n = as_values("compute", compute, positive=True), as_values("n_opt", n_opt, positive=True)
    size = same_length(compute=c, n_opt=n)
    _lsq.check_bootstrap(resampling, n_bootstrap)
    enough_data("allocation", 2, 3, compute=c)
    w = np.ones(size) if weights is None else as_values("weights", weights, positive=True)
    same_length(compute=c, weights=w)
    center = np.log(c).mean()
    u = np.log(c) - center
    jac = np.stack([np.ones(size), u], axis=-1)
    start = np.polyfit(u, np.log(n), 1, w=np.sqrt(w))[::-1]

    def log_prediction(theta):
        return theta[:, :1] + theta[:, 1:] * u, np.broadcast_to(jac, (len(theta), *jac.shape))

    model = _lsq.LogModel(("k", "a"), np.log(n), log_prediction, ((None, None), (None, None)), (start,))
    solution = _lsq.solve(model, w)
    draws, failed = _lsq.bootstrap(model, solution.theta, w, resampling=resampling, n_bootstrap=n_bootstrap, seed=seed)
    params = {name: float(v) for name, v in zip(("a", "C0"), _to_params(solution.theta[None], center)[0])}
    residuals = np.log(n) - (solution.theta[0] + solution.theta[1] * u)
    flags = [f"a_not_positive: a={params['a']:.4g} <= 0: N_opt does not grow with compute"] if params["a"] <= 0 else []
    return fit_result(
        AllocationFit,
        law="allocation",
        params=params,
        samples=_to_params(draws, center),
        level=level,
        converged=solution.converged,
        failed_refits=failed,
        # standardized residuals: a point of low weight (a noisy vertex) may stray further without a bend
        flags=flags + misspecification_flags(np.sqrt(w) * residuals, c),
        residuals=residuals,
        objective=solution.objective,
        n_points=size,
    )


def _to_params(theta, center) -> np.ndarray:
    """[R, 2] rows (a, C0) from [R, 2] rows (k, a)."""
    k, a = theta.T
    # log N = k + a (log C - center) = a (log C - log C0)  =>  log C0 = center - k / a
    with np.errstate(divide="ignore", over="ignore"):
        return np.column_stack([a, np.exp(center - k / a)])


@dataclass(frozen=True)
class IsoFlopMinima:
    """Per-budget parabola minima (Chinchilla approach 2) and the allocation fitted through them."""

    compute: np.ndarray  # budgets with an interior minimum
    n_opt: np.ndarray
    loss_opt: np.ndarray
    skipped: dict  # budget -> why no minimum was taken from it
    allocation: AllocationFit


def fit_isoflop(
    n_params,
    compute,
    loss,
    *,
    window: int = 2,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> IsoFlopMinima:
    """Approach 2: for each compute budget (rows sharing a value of `compute`), fit a parabola of loss in
    u = log N through the lowest-loss size and its `window` neighbours on each side, and take its vertex as
    N_opt(C); then fit N_opt = (C/C0)^a through the vertices. A local parabola, because a profile that
    spans decades of N is not quadratic far from its minimum (on Porian et al.'s profiles a parabola
    through all sizes biases a by up to 0.07). Budgets whose lowest loss is at the smallest or largest size,
    or whose parabola is not convex, are skipped and listed: an extrapolated minimum is not a measurement.

    The bootstrap (`resampling`) draws the second stage only: new vertices around the fitted line, or
    the budgets' vertices resampled. That is enough because each vertex comes from its own budget's runs,
    so the vertices' errors are independent of one another, and their scatter about the line, which both
    schemes draw from, already holds the error of the parabola (plus any misfit of the line, which the
    misspecification test sees). Redrawing the runs inside each budget as well would count the vertex
    error twice. The parametric scheme is the default for the reason it is everywhere: on the handful of
    budgets a study has, resampling budgets covers worse (`bootstrap` module docstring)."""
    n = as_values("n_params", n_params, positive=True)
    c = as_values("compute", compute, positive=True)
    y = as_values("loss", loss, positive=True)
    same_length(n_params=n, compute=c, loss=y)
    window = positive_int("window", window)
    budgets, minima, losses, skipped = [], [], [], {}
    for budget in np.unique(c):
        rows = np.flatnonzero(c == budget)
        rows = rows[np.argsort(n[rows])]
        reason, n_min, l_min = _parabola_minimum(np.log(n[rows]), y[rows], window)
        if reason:
            skipped[float(budget)] = reason
        else:
            budgets.append(budget), minima.append(n_min), losses.append(l_min)
    if len(budgets) < MIN_BUDGETS:
        raise FitInputError(
            f"compute: got {len(budgets)} budgets with an interior loss minimum, expected at least {MIN_BUDGETS} (skipped: {skipped})"
        )
    allocation = fit_allocation(budgets, minima, n_bootstrap=n_bootstrap, level=level, seed=seed, resampling=resampling)
    return IsoFlopMinima(np.array(budgets), np.array(minima), np.array(losses), skipped, allocation)


def _parabola_minimum(u, y, window):
    """u sorted ascending. Returns (reason to skip or "", N at the vertex, loss at the vertex)."""
    sizes = len(np.unique(u))  # a parabola needs distinct sizes: repeated runs of one size add no curvature
    if sizes < MIN_POINTS_PER_BUDGET:
        return f"{sizes} distinct model sizes ({len(u)} rows), expected at least {MIN_POINTS_PER_BUDGET}", None, None
    lowest = int(np.argmin(y))
    if lowest in (0, len(y) - 1):
        return "the lowest loss is at the edge of the sizes tried", None, None
    near = slice(max(0, lowest - window), lowest + window + 1)
    c2, c1, c0 = np.polyfit(u[near], y[near], 2)
    if c2 <= 0:
        return "loss is not convex in log N near its minimum", None, None
    return "", float(np.exp(-c1 / (2 * c2))), float(c0 - c1 * c1 / (4 * c2))
