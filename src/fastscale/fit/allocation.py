"""Compute-optimal allocation N_opt(C) = (C/C0)^a, from optimal pairs or from IsoFLOP profiles.

`fit_allocation` is the straight line in log-log space through (C, N_opt) points, optionally weighted
(Porian et al. 2024 weight each budget by 1/std^2 of log N_opt). `fit_isoflop` is Chinchilla's
approach 2: a parabola of loss against log N per compute budget, its minimum N_opt(C), then the line,
with a bootstrap of both stages at once (per-budget intervals and the line's).
Henighan et al. write the same law N_opt = (C/C0)^beta; here the exponent is `a` throughout, as in
Hoffmann et al. and Porian et al., and D_opt follows from C = 6 N D.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fastscale.fit import _lsq
from fastscale.fit._checks import FitInputError, as_values, enough_data, positive_int, same_length
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING, bootstrap_blocks
from fastscale.fit.results import Estimate, FitResult, fit_result

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
    line = _fit_line(c, n, w)
    draws, failed = _lsq.bootstrap(line.model, line.solution.theta, w, resampling=resampling, n_bootstrap=n_bootstrap, seed=seed)
    return _allocation_result("allocation", line, c, w, _to_params(draws, line.center), failed, level)


@dataclass(frozen=True)
class _Line:
    """log N_opt = k + a (log C - center), fitted by weighted least squares (`_lsq`)."""

    model: _lsq.LogModel
    solution: _lsq.Solution
    center: float


def _fit_line(c, n, w) -> _Line:
    center = np.log(c).mean()
    u = np.log(c) - center
    jac = np.stack([np.ones(len(c)), u], axis=-1)
    start = np.polyfit(u, np.log(n), 1, w=np.sqrt(w))[::-1]

    def log_prediction(theta):
        return theta[:, :1] + theta[:, 1:] * u, np.broadcast_to(jac, (len(theta), *jac.shape))

    model = _lsq.LogModel(("k", "a"), np.log(n), log_prediction, ((None, None), (None, None)), (start,))
    return _Line(model, _lsq.solve(model, w), center)


def _allocation_result(law: str, line: _Line, c, w, samples, failed_refits: int, level: float, flags=()) -> AllocationFit:
    """The fitted line as (a, C0) with its draws [R, 2] (a, C0); flags: the caller's own."""
    theta = line.solution.theta
    params = {name: float(v) for name, v in zip(("a", "C0"), _to_params(theta[None], line.center)[0])}
    residuals = line.model.log_y - (theta[0] + theta[1] * (np.log(c) - line.center))
    flags = [*flags, f"a_not_positive: a={params['a']:.4g} <= 0: N_opt does not grow with compute"] if params["a"] <= 0 else list(flags)
    return fit_result(
        AllocationFit,
        law=law,
        params=params,
        samples=samples,
        level=level,
        converged=line.solution.converged,
        failed_refits=failed_refits,
        flags=flags,
        residual_order=c,
        residual_weights=w,
        residuals=residuals,
        objective=line.solution.objective,
        n_points=len(c),
    )


def _to_params(theta, center) -> np.ndarray:
    """[R, 2] rows (a, C0) from [R, 2] rows (k, a)."""
    k, a = theta.T
    # log N = k + a (log C - center) = a (log C - log C0)  =>  log C0 = center - k / a
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return np.column_stack([a, np.exp(center - k / a)])


@dataclass(frozen=True)
class ParabolaFit(FitResult):
    """One IsoFLOP profile: L(N) = L_opt + k (ln N - ln N_opt)^2 around its minimum, in loss units
    (nats/token), k the curvature in nats per (ln N)^2. Fitted by least squares on the loss itself (not
    its log); residuals are log(observed / fitted) as for every law. compute: the budget; window: the
    sizes N of the rows it was fitted to."""

    compute: float
    window: np.ndarray

    scales = ("N_opt",)

    @staticmethod
    def _law(p, n):
        return p["L_opt"] + p["k"] * (np.log(n) - np.log(p["N_opt"])) ** 2


@dataclass(frozen=True)
class IsoFlopMinima:
    """Approach 2: the budgets' parabolas (budgets ascending, those with an interior minimum), the
    allocation N_opt = (C/C0)^a through their vertices, and the budgets skipped with the reason."""

    parabolas: tuple  # ParabolaFit per budget
    allocation: AllocationFit
    skipped: dict  # budget -> why no minimum was taken from it

    @property
    def compute(self) -> np.ndarray:
        return np.array([p.compute for p in self.parabolas])

    @property
    def n_opt(self) -> np.ndarray:
        return np.array([p.params["N_opt"] for p in self.parabolas])

    @property
    def loss_opt(self) -> np.ndarray:
        return np.array([p.params["L_opt"] for p in self.parabolas])


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
    """Approach 2 (Hoffmann et al. 2022, section 3.2): for each compute budget (rows sharing a value of
    `compute`), a parabola of loss in u = ln N through the lowest-loss size and its `window` neighbours
    on each side (rows by ascending N), its vertex N_opt(C); then N_opt = (C/C0)^a through the vertices
    by least squares on ln N_opt. A local parabola, because a profile that spans decades of N is not
    quadratic far from its minimum (on Porian et al.'s profiles a parabola through all sizes biases a by
    up to 0.07). Budgets whose lowest loss is at the smallest or largest size, whose parabola is not
    convex, or whose parabola's minimum lies beyond the sizes tried are skipped and listed: an
    extrapolated minimum is not a measurement.

    The bootstrap draws both stages at once, so the interval of a carries how well each vertex is
    measured and each budget's N_opt, L_opt and k get intervals too. Each parabola keeps the window
    of rows the estimate chose; a draw refits every budget's parabola, takes its vertices, and fits
    that draw's line through them. A draw whose parabola at some budget is not convex has no vertex
    there, nor does one whose vertex lies beyond the budget's sizes (the estimate's rule). Such a vertex is left out of that budget's interval
    (flagged `no_vertex`) and the draw fits its line through the other vertices (flagged
    `vertices_missing`): with dozens of budgets nearly every draw has one flat profile, and dropping
    the whole draw would keep only the draws where every profile is sharp.

    - "parametric" (default): new losses around the fitted parabolas, Gaussian on the loss with one
      noise scale pooled over the budgets (the same held-out set and trainer at every budget; a
      window of 4 sizes leaves its parabola 1 degree of freedom, too few to estimate its own), drawn
      per draw from its chi-square distribution with (rows - 3 x budgets) degrees of freedom
      (`bootstrap.bootstrap_blocks`). Resampling only the vertices about the line instead gives a
      line through 3 vertices 1 degree of freedom (a in [-0.59, 1.43] on benchmarks/results/isoflop's
      runs, where this gives [0.18, 0.96]) and says nothing about how well each vertex is measured.
      It assumes the losses of one budget scatter independently about a parabola.
    - "rows": whole budgets resampled (each budget's runs together, `bootstrap_blocks` groups): a
      drawn budget keeps its own vertex, counted as often as it was drawn in the draw's line. It
      assumes nothing about the noise, but it sees a vertex's error only through the scatter of the
      vertices about the line: on a handful of budgets its intervals are too narrow (a in [0.39, 0.63]
      on the same runs), a draw holding one budget has no line (nan), and a budget's own vertex gets
      no interval (no draws, flagged `no_interval`): resampling a budget's 4 or 5 runs would leave
      fewer than 3 sizes in a quarter to a half of the draws.

    The point estimates do not depend on the scheme. Measured coverage of nominal 95% intervals (1,000
    seeds x 1,000 draws, binomial se ~0.7%): on exact parabolas with Gaussian noise (3 budgets of 4 or 5
    sizes, tests/sweep/test_isoflop.py's design) parametric a 94.8-95.4%, N_opt 95.2-95.6%; rows a 63-69%.
    On Chinchilla's law (5 budgets x 9 sizes, 0.3% noise; bench fit's 10 x 10 at 2%) parametric a
    98.8% and 97.9%, rows 86.5% and 90.1%; N_opt 90-91%, because a local parabola's vertex on that profile sits
    0.8-2.6% above the true minimum even without noise (approach 2's own bias, not the bootstrap's)."""
    n = as_values("n_params", n_params, positive=True)
    c = as_values("compute", compute, positive=True)
    y = as_values("loss", loss, positive=True)
    same_length(n_params=n, compute=c, loss=y)
    window = positive_int("window", window)
    _lsq.check_bootstrap(resampling, n_bootstrap)
    profiles, skipped = [], {}
    order = np.lexsort((n, c))  # by budget, then by N: each budget's rows in one slice
    levels, starts = np.unique(c[order], return_index=True)
    for budget, rows in zip(levels, np.split(order, starts[1:])):
        profile = _profile(float(budget), n, y, rows, window)
        if isinstance(profile, str):
            skipped[float(budget)] = profile
        else:
            profiles.append(profile)
    if len(profiles) < MIN_BUDGETS:
        raise FitInputError(
            f"compute: got {len(profiles)} budgets with an interior loss minimum, expected at least {MIN_BUDGETS} (skipped: {skipped})"
        )
    vertices, budget_weights = _vertex_draws(profiles, n, y, resampling, n_bootstrap, seed)
    parabolas = tuple(
        _parabola_result(profile, n, y, vertices[:, b], level, resampling, n_bootstrap) for b, profile in enumerate(profiles)
    )
    budgets, n_opt = np.array([p.compute for p in parabolas]), np.array([p.params["N_opt"] for p in parabolas])
    line = _fit_line(budgets, n_opt, np.ones(len(budgets)))
    with np.errstate(divide="ignore", invalid="ignore"):
        theta, lacking = _line_draws(np.log(budgets) - line.center, np.log(vertices[:, :, 0]), budget_weights)
    flags = [f"vertices_missing: {lacking} of {len(theta)} bootstrap draws lacked some budget's vertex (the budgets' no_vertex "
             "flags say which) and fitted their line through the other vertices"] if lacking else []
    allocation = _allocation_result(
        "allocation (IsoFLOP vertices)", line, budgets, np.ones(len(budgets)), _to_params(theta, line.center), 0, level, flags
    )
    return IsoFlopMinima(parabolas, allocation, skipped)


class _Profile(NamedTuple):
    budget: float
    rows: np.ndarray  # the parabola's rows, by ascending N
    coefficients: np.ndarray  # (c2, c1, c0) of the loss in u = ln N
    span: np.ndarray  # ln N of the budget's smallest and largest size


def _profile(budget: float, n, y, rows, window: int) -> _Profile | str:
    """One budget's parabola (rows: the budget's, by ascending N), or the reason it has none."""
    sizes = len(np.unique(n[rows]))  # a parabola needs distinct sizes: repeated runs of one size add no curvature
    if sizes < MIN_POINTS_PER_BUDGET:
        return f"{sizes} distinct model sizes ({len(rows)} rows), expected at least {MIN_POINTS_PER_BUDGET}"
    lowest = int(np.argmin(y[rows]))
    if lowest in (0, len(rows) - 1):
        return "the lowest loss is at the edge of the sizes tried"
    near = rows[max(0, lowest - window) : lowest + window + 1]
    coefficients = np.polyfit(np.log(n[near]), y[near], 2)
    if coefficients[0] <= 0:
        return "loss is not convex in log N near its minimum"
    n_opt, _ = _vertex(*coefficients)
    if not n[rows[0]] <= n_opt <= n[rows[-1]]:
        return f"the parabola's minimum N = {n_opt:.3g} lies beyond the sizes tried ({n[rows[0]]:.3g} to {n[rows[-1]]:.3g})"
    return _Profile(budget, near, coefficients, np.log(n[rows[[0, -1]]]))


def _vertex(c2, c1, c0, shift=0.0):
    """(N_opt, L_opt) of L = c2 v^2 + c1 v + c0 with v = ln N - shift (c2 > 0). A nearly flat parabola's
    vertex overflows to inf, which the callers treat as beyond the sizes tried."""
    with np.errstate(over="ignore"):
        return np.exp(shift - c1 / (2 * c2)), c0 - c1 * c1 / (4 * c2)


def _vertex_draws(profiles, n, y, resampling: str, n_bootstrap: int, seed: int):
    """[R, B, 3] draws of each budget's (N_opt, L_opt, k), nan where the draw's parabola has no minimum
    inside the budget's sizes, and [R, B] each budget's weight in each draw (0: not drawn), from `bootstrap_blocks` over the
    parabolas' rows (the block's log_y column carries the loss itself: the parabolas are fitted to it)."""
    rows = np.concatenate([p.rows for p in profiles])
    budget = np.repeat(np.arange(len(profiles)), [len(p.rows) for p in profiles])
    fitted = np.concatenate([np.polyval(p.coefficients, np.log(n[p.rows])) for p in profiles])
    blocks = bootstrap_blocks(
        resampling, log_y=y[rows], log_pred=fitted, weights=np.ones(len(rows)), n_params=3 * len(profiles),
        n_bootstrap=n_bootstrap, seed=seed, groups=budget if resampling == "rows" else None,
    )
    vertices, weights = [np.zeros((0, len(profiles), 3))], [np.zeros((0, len(profiles)))]
    for block in blocks:
        columns = [budget == b for b in range(len(profiles))]
        vertices.append(np.stack([
            _weighted_vertices(np.log(n[rows[j]]), block.weights[:, j], block.log_y[:, j], p.span) for j, p in zip(columns, profiles)
        ], axis=1))
        weights.append(np.stack([block.weights[:, j].mean(axis=1) for j in columns], axis=1))
    return np.concatenate(vertices), np.concatenate(weights)


def _weighted_vertices(u, weights, y, span) -> np.ndarray:
    """[R, 3] (N_opt, L_opt, k) of the weighted least-squares parabola in u through each row of y [R, m]
    (weights [R, m]); nan where fewer than MIN_POINTS_PER_BUDGET distinct u have weight, and (N_opt,
    L_opt) nan where it has no minimum inside span (ln N of the budget's smallest and largest size: not
    convex, or its vertex beyond the sizes tried, which the estimate would not take either).
    u is centred so the normal equations stay well conditioned."""
    shift = u.mean()
    design = np.stack([(u - shift) ** 2, u - shift, np.ones_like(u)], axis=-1)
    sizes = u[:, None] == np.unique(u)[None, :]
    solvable = np.count_nonzero((weights > 0).astype(np.int64) @ sizes, axis=1) >= MIN_POINTS_PER_BUDGET
    coefficients = np.full((len(y), 3), np.nan)
    w, values = weights[solvable], y[solvable]
    normal = np.einsum("rm,mi,mj->rij", w, design, design)
    coefficients[solvable] = np.linalg.solve(normal, np.einsum("rm,mi,rm->ri", w, design, values)[..., None])[..., 0]
    c2, c1, c0 = coefficients.T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n_opt, l_opt = _vertex(c2, c1, c0, shift)
        inside = (c2 > 0) & (np.log(n_opt) >= span[0]) & (np.log(n_opt) <= span[1])
    return np.column_stack([np.where(inside, n_opt, np.nan), np.where(inside, l_opt, np.nan), c2])


def _parabola_result(profile: _Profile, n, y, draws, level: float, resampling: str, n_bootstrap: int) -> ParabolaFit:
    budget, rows, coefficients, _ = profile
    n_opt, l_opt = _vertex(*coefficients)
    fitted = np.polyval(coefficients, np.log(n[rows]))
    per_budget = resampling == "parametric"
    flags = [] if per_budget or n_bootstrap == 0 else [
        "no_interval: resampling='rows' draws whole budgets, which leaves a budget's own vertex as it is: "
        "resampling='parametric' puts intervals on it"
    ]
    lost = int(np.count_nonzero(np.isnan(draws[:, 0]))) if per_budget else 0
    if lost:
        flags.append(f"no_vertex: {lost} of {len(draws)} bootstrap draws had no minimum inside the sizes tried (parabola not convex, "
                     "or its vertex beyond them), left out of N_opt's and L_opt's intervals")
    with np.errstate(invalid="ignore", divide="ignore"):
        residuals = np.log(y[rows] / fitted)
    return fit_result(
        ParabolaFit, law=f"IsoFLOP parabola at C = {budget:.3g}", params={"N_opt": float(n_opt), "L_opt": float(l_opt), "k": float(coefficients[0])},
        samples=draws if per_budget else np.zeros((0, 3)), level=level, converged=True, failed_refits=0, flags=flags,
        residuals=residuals, objective=float(np.sum((y[rows] - fitted) ** 2)), n_points=len(rows), compute=budget, window=n[rows],
    )


def _line_draws(x, log_vertices, weights):
    """[R, 2] (k, a) of each draw's weighted least-squares line log N_opt = k + a x through the vertices
    it has (weights [R, B], 0: budget not drawn; nan: the draw has no vertex there), nan where fewer
    than 2 remain; and how many draws lacked a drawn budget's vertex."""
    drawn = weights > 0
    usable = drawn & np.isfinite(log_vertices)
    lacking = int(np.count_nonzero(np.any(drawn & ~usable, axis=1)))
    w = np.where(usable, weights, 0.0)
    v = np.where(usable, log_vertices, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = w.sum(axis=1)
        mean_x, mean_v = (w * x).sum(axis=1) / total, (w * v).sum(axis=1) / total
        dx = x - mean_x[:, None]
        slope = (w * dx * (v - mean_v[:, None])).sum(axis=1) / (w * dx * dx).sum(axis=1)
    line = np.column_stack([mean_v - slope * mean_x, slope])
    return np.where((np.count_nonzero(usable, axis=1) >= 2)[:, None], line, np.nan), lacking
