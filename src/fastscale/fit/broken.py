"""Broken neural scaling laws (Caballero, Gupta, Rish and Krueger, "Broken Neural Scaling Laws", ICLR 2023, eq. 1):

    y = a + b x^-c0 prod_{i=1..n} (1 + (x/d_i)^(1/f_i))^(-c_i f_i)

with the paper's names: a is the limit y reaches as x grows, b the offset, c0 the slope of the first
power-law segment (of y - a against x on a log-log plot), c_i the change of slope at break i, d_i
where break i happens (in the units of x) and f_i > 0 its sharpness (smaller is sharper). Far from
every break the law is a power law: y - a = b x^-c0 below the first break and, between breaks j and
j + 1, a segment of exponent c0 + c1 + ... + cj (the decomposition of the paper's Figure 1).

The local exponent follows from eq. 1 in closed form: the log of factor i is -c_i f_i softplus(z_i)
with z_i = log(x/d_i)/f_i, so

    -d log(y - a) / d log x = c0 + sum_i c_i sigmoid(log(x/d_i) / f_i),

which runs from c0 (x << every d_i) to c0 + c1 + ... + cn (x >> every d_i).

Fit: least squares on log y, as every law here (the authors minimize a mean squared log error too;
their code takes log(y + 1), we take log y so a 1% miss counts the same at every scale). The law's
permutation symmetry (breaks can be listed in any order) is removed by sorting breaks by d. Bounds,
kept by a sin^2 change of variables so the batched optimizers can run unconstrained and still reach a
bound exactly (where `fit_result` flags it): a >= 0 (a = s^2; no upper bound, so noise around the
limit is allowed and a is not pinned to min(y)); every d_i between the SEGMENT_POINTS-th smallest and
largest distinct x, so each segment has its own points (a break outside the data changes nothing the
data can see, and a sharp break beside the last point would only fit that point's noise); f_i between
half the median spacing of the distinct log x (a sharper break falls between two points, where the
data cannot tell its sharpness) and F_MAX. Starts: breaks on a grid of the
observed log-x range, a at fractions of min(y), a few sharpnesses, and for each the slopes b, c0, c_i
of the sharp-break limit (f -> 0, where the log of factor i is -c_i max(0, log(x/d_i))), a linear
least-squares problem, so every start already follows the data. All starts run at once in the batched
L-BFGS of `_optimize` (screened: the best few continue), and all bootstrap refits at once in a batched
Levenberg-Marquardt from the estimate, the draws from `bootstrap.bootstrap_blocks` (by default the
fitted law plus Gaussian noise in log y at the residuals' scale; resampling="rows" resamples the points).

A break the data do not show is flagged, not invented: besides `fit_result`'s `d<i>_at_bound` and
`f<i>_at_bound`, `d<i>_not_determined` / `f<i>_not_determined` when the interval of d_i / f_i covers
more than half of its searched log range (or more than NOT_DETERMINED_DECADES decades), and
`c<i>_interval_includes_zero` when the data do not exclude a break with no change of slope. On a
single power law with an asymptote fitted with one break, d1 or f1 ends on a bound (tests).
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from fastscale.fit import _lsq
from fastscale.fit._checks import as_values, enough_data, positive_int, same_length
from fastscale.fit._optimize import batched_lbfgs
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING, check_resampling, per_draw
from fastscale.fit.results import NOT_DETERMINED_DECADES, Estimate, FitResult, bootstrapped_result

log = logging.getLogger(__name__)

# Largest sharpness: at f = 10 a break bends the curve over ~40 e-folds of x, beyond any data (the
# paper's Figure 1 uses f from 0.05 to 1.4). The smallest is data-dependent (module docstring).
F_MAX = 10.0
SEGMENT_POINTS = 3  # distinct x on each side of a break, the one it may sit on included
GRID_BREAKS = 10  # break locations per break on the interior of the observed log-x range
A_START_FRACTIONS = (0.0, 0.5, 0.9, 0.99)  # of min(y)
F_STARTS = (0.1, 0.5)
# A d_i or f_i whose interval covers more than this share of its searched log range is not determined.
NOT_LOCATED_SHARE = 0.5
# Screening: on the paper's 3-break Figure 1 curve (700 points, 960 starts) keeping the 24 best starts
# after 20 steps found the same optimum (the exact constants, to 1e-8) as 50 steps and as running every
# start to convergence, in a fraction of their time (benchmarks/results/notes.md).
SCREEN_ITERATIONS = 20
KEEP_STARTS = 24
# Rows the starts are screened on (evenly spaced in x). On 9 sets of 500 points (Figure 1's curve with 2
# and 3 breaks, Figure 4's with 1; 1% noise) 250 rows led to the optimum 2,000 did, to 12 digits, in less
# time (notes.md); on the noiseless 3-break curve of 700 points both found the constants (to 2e-11 and 1e-9).
SCREEN_POINTS = 250
# Levenberg-Marquardt refits (see _levenberg_marquardt): the tolerances match the batched L-BFGS's.
LM_MAX_ITER = 50
LM_POLISH_ITER = 500  # the estimate's final refinement on every row
BOOTSTRAP_CELLS = 500_000  # resamples x rows refitted at once: jacobians of <= 50 MB
LM_FTOL = 1e-10
LM_GTOL = 1e-9
# Bootstrap refits start this far (in the unit box of the sin^2 variables) inside a bound the estimate
# sits on: sin^2 has zero slope at its ends, so a start exactly there could never leave the bound.
BOUND_NUDGE = 1e-4


def parameter_names(breaks: int) -> tuple:
    """a, b, c0, c1..cn, d1..dn, f1..fn (the order of the authors' code)."""
    indices = range(1, breaks + 1)
    return ("a", "b", "c0", *(f"c{i}" for i in indices), *(f"d{i}" for i in indices), *(f"f{i}" for i in indices))


def breaks_of(params: dict) -> int:
    return sum(1 for name in params if name.startswith("d"))


def local_exponent(params: dict, x):
    """-d log(y - a)/d log x = c0 + sum_i c_i sigmoid(log(x/d_i)/f_i) (module docstring)."""
    log_x = np.log(np.asarray(x, dtype=np.float64))
    total = params["c0"] + 0.0 * log_x
    for i in range(1, breaks_of(params) + 1):
        total = total + params[f"c{i}"] * expit((log_x - np.log(params[f"d{i}"])) / params[f"f{i}"])
    return total


@dataclass(frozen=True)
class BrokenPowerLawFit(FitResult):
    """params: a, b, c0, c1..cn, d1..dn, f1..fn (Caballero et al. 2023, eq. 1), breaks sorted by d."""

    breaks: int

    scales = ("b",)

    @staticmethod
    def _law(p, x):
        log_x = np.log(x)
        log_power = np.log(p["b"]) - p["c0"] * log_x
        for i in range(1, breaks_of(p) + 1):
            f = p[f"f{i}"]
            log_power = log_power - p[f"c{i}"] * f * np.logaddexp(0.0, (log_x - np.log(p[f"d{i}"])) / f)
        return p["a"] + np.exp(log_power)

    def local_exponent(self, x) -> np.ndarray:
        """The slope -d log(y - a)/d log x at x: c0 below every break, c0 + c1 + ... + cn above them."""
        return local_exponent(self.params, x)

    def local_exponent_estimate(self, x: float) -> Estimate:
        """The local exponent at one x with its bootstrap interval."""
        return self.estimate(lambda p: local_exponent(p, x))

    def segment_exponents(self) -> tuple:
        """Exponent of each power-law segment: c0, c0 + c1, ..., c0 + c1 + ... + cn (with intervals)."""
        return tuple(self.estimate(lambda p, j=j: sum(p[f"c{i}"] for i in range(j + 1))) for j in range(self.breaks + 1))


def fit_broken_power_law(
    x,
    y,
    *,
    breaks: int = 1,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> BrokenPowerLawFit:
    """Fit y = a + b x^-c0 prod_i (1 + (x/d_i)^(1/f_i))^(-c_i f_i) with `breaks` breaks (module docstring).

    x: the scaled quantity (N, D, C, steps), y > 0: the metric (loss, error). Needs 3 + 3 * breaks + 1
    distinct x. Bootstrap: `n_bootstrap` draws of the `resampling` scheme ("parametric" or "rows", see
    `bootstrap`), all refitted at once from the estimate.
    """
    x, y = as_values("x", x, positive=True), as_values("y", y, positive=True)
    same_length(x=x, y=y)
    breaks = positive_int("breaks", breaks)
    n_params = 3 + 3 * breaks
    law = f"broken power law ({breaks} break{'s' * (breaks > 1)})"
    enough_data(law, n_params, n_params + 1, x=x)
    check_resampling(resampling)
    n_bootstrap = positive_int("n_bootstrap", n_bootstrap, minimum=0)
    space = _Space(np.log(x), breaks)
    log_y = np.log(y)
    theta, objective, converged, n_starts = _fit(space, log_y, y)
    names = parameter_names(breaks)
    params = {name: float(v) for name, v in zip(names, space.params(theta[None])[0])}
    log_pred = np.log(BrokenPowerLawFit._law(params, x))
    indices = range(1, breaks + 1)
    bounds = {"a": (0.0, None), **{f"d{i}": space.d_bounds for i in indices}, **{f"f{i}": space.f_bounds for i in indices}}
    log.info("%s: %d starts, objective %.10g", law, n_starts, objective)
    return bootstrapped_result(
        BrokenPowerLawFit, log_y=log_y, log_pred=log_pred, n_params=n_params, cells=BOOTSTRAP_CELLS, to_samples=space.params,
        refit=lambda weights, draws_log_y: _refit(space, draws_log_y, theta, weights),
        sample_flags=lambda samples: _break_flags(params, samples, space, level), resampling=resampling, n_bootstrap=n_bootstrap,
        seed=seed, law="broken", params=params, level=level, converged=converged, bounds=bounds, residual_order=x, objective=objective,
        breaks=breaks,
    )


class _Space:
    """The unconstrained variables theta = (s, k, c0, c_1..n, t_1..n, q_1..n) the optimizer sees:
    a = s^2, log b = k + c0 * centre, log d_i = lo + (hi - lo) sin^2(t_i), log f_i = log f_min +
    log(F_MAX/f_min) sin^2(q_i), with log x centred (u = log x - centre) so k and c0 are nearly
    uncorrelated."""

    def __init__(self, log_x: np.ndarray, breaks: int):
        self.breaks = breaks
        self.centre = float(log_x.mean())
        self.u = log_x - self.centre
        distinct = np.unique(log_x)
        self.lo, self.hi = distinct[SEGMENT_POINTS - 1] - self.centre, distinct[-SEGMENT_POINTS] - self.centre
        self.d_bounds = (float(np.exp(distinct[SEGMENT_POINTS - 1])), float(np.exp(distinct[-SEGMENT_POINTS])))
        self.f_bounds = (float(np.median(np.diff(distinct))) / 2, F_MAX)
        self.f_span = np.log(F_MAX / self.f_bounds[0])

    def unpack(self, theta):
        n = self.breaks
        s, k, c0 = theta[:, 0], theta[:, 1], theta[:, 2]
        c, t, q = theta[:, 3 : 3 + n], theta[:, 3 + n : 3 + 2 * n], theta[:, 3 + 2 * n :]
        log_d = self.lo + (self.hi - self.lo) * np.sin(t) ** 2  # centred
        f = self.f_bounds[0] * np.exp(self.f_span * np.sin(q) ** 2)
        return s, k, c0, c, t, q, log_d, f

    def pack(self, a, k, c0, c, log_d, f):
        """theta from natural values (log_d centred); breaks [S, n]."""
        box_d = np.clip((log_d - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        box_f = np.clip(np.log(np.asarray(f) / self.f_bounds[0]) / self.f_span, 0.0, 1.0)
        columns = [np.sqrt(np.maximum(a, 0.0))[:, None], k[:, None], c0[:, None], c, np.arcsin(np.sqrt(box_d)), np.arcsin(np.sqrt(box_f))]
        return np.concatenate(columns, axis=1)

    def params(self, theta) -> np.ndarray:
        """[S, P] parameter rows in `parameter_names` order, breaks sorted by d."""
        s, k, c0, c, _, _, log_d, f = self.unpack(np.asarray(theta, dtype=np.float64).reshape(-1, 3 + 3 * self.breaks))
        order = np.argsort(log_d, axis=1)
        c, log_d, f = (np.take_along_axis(v, order, axis=1) for v in (c, log_d, f))
        with np.errstate(over="ignore"):  # b out of double range is flagged by fit_result
            b = np.exp(k + c0 * self.centre)
        return np.column_stack([s**2, b, c0, c, np.exp(log_d + self.centre), f])

    def nudged(self, theta):
        """theta moved BOUND_NUDGE inside any sin^2 bound and off s = 0 (see BOUND_NUDGE)."""
        theta = theta.copy()
        n = self.breaks
        box = np.clip(np.sin(theta[3 + n :]) ** 2, BOUND_NUDGE, 1 - BOUND_NUDGE)
        theta[3 + n :] = np.arcsin(np.sqrt(box))
        theta[0] = max(abs(theta[0]), BOUND_NUDGE)
        return theta

    def bend(self, theta):
        """[S, P] phi''/phi' of the change of variables phi(theta) per parameter: 1/s for a = s^2,
        2 cot(2 t) for a sin^2 box, 0 for the parameters used as they are.

        The curvature a Gauss-Newton step leaves out: with G the gradient in phi, the exact Hessian in
        theta has G phi'' on its diagonal besides J'J. Near a bound J' -> 0, so without it a draw whose
        optimum lies on the bound gets steps far past it (see _levenberg_marquardt)."""
        n = self.breaks
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.zeros_like(theta)
            ratio[:, 0] = 1.0 / theta[:, 0]
            ratio[:, 3 + n :] = 2.0 / np.tan(2.0 * theta[:, 3 + n :])
        return np.where(np.isfinite(ratio), ratio, 0.0)

    def log_prediction(self, theta):
        """(log prediction [S, n], its jacobian d log pred / d theta [S, n, P]) for theta [S, P]."""
        s, k, c0, c, t, q, log_d, f = self.unpack(theta)
        u = self.u
        z = (u[None, None, :] - log_d[:, :, None]) / f[:, :, None]  # [S, n_breaks, n_points]
        # softplus(z) and sigmoid(z) from one exp(-|z|), without overflow
        e = np.exp(-np.abs(z))
        soft = np.log1p(e)
        soft += np.maximum(z, 0.0)
        sig = np.where(z >= 0, 1.0, e)
        sig /= 1.0 + e
        power = np.exp(k[:, None] - c0[:, None] * u - np.einsum("sb,sbn->sn", c * f, soft))
        pred = s[:, None] ** 2 + power
        share = power / pred  # d log pred / d log power
        jacobian = np.concatenate([
            (2 * s[:, None] / pred)[:, :, None],
            share[:, :, None],
            (-u * share)[:, :, None],
            np.moveaxis(-f[:, :, None] * soft, 1, 2) * share[:, :, None],
            np.moveaxis((c * (self.hi - self.lo) * np.sin(2 * t))[:, :, None] * sig, 1, 2) * share[:, :, None],
            np.moveaxis((-c * f * self.f_span * np.sin(2 * q))[:, :, None] * (soft - z * sig), 1, 2) * share[:, :, None],
        ], axis=2)
        return np.log(pred), jacobian

    def objective(self, log_y, weights=None):
        """Batched f(theta [S, P], rows) -> (0.5 * weighted mean squared log residual [S], gradient [S, P]).

        log_y: [n], or [R, n] per draw indexed by `rows`; weights: None (all ones) or [R, n] per-draw
        weights indexed by `rows` (see bootstrap.per_draw)."""

        def value_and_gradient(theta, rows):
            log_pred, jacobian = self.log_prediction(theta)
            r = per_draw(log_y, rows) - log_pred
            w = np.ones_like(r) if weights is None else np.broadcast_to(per_draw(weights, rows), r.shape)
            total = w.sum(axis=1)
            wr = w * r
            return 0.5 * np.einsum("sn,sn->s", wr, r) / total, -np.einsum("sn,snp->sp", wr, jacobian) / total[:, None]

        return value_and_gradient

    def subset(self, rows) -> "_Space":
        """The same variables (same bounds and centre) on some rows of the data."""
        part = copy.copy(self)
        part.u = self.u[rows]
        return part

    def starts(self, y) -> np.ndarray:
        """Breaks on the grid x fractions of min(y) for a x sharpnesses, slopes from the sharp-break limit."""
        grid = np.linspace(self.lo, self.hi, GRID_BREAKS + 2)[1:-1]
        rows = []
        for fraction in A_START_FRACTIONS:
            a = fraction * float(y.min())
            target = np.log(y - a)
            for locations in itertools.combinations(grid, self.breaks):
                hinges = [-np.maximum(0.0, self.u - d) for d in locations]
                design = np.column_stack([np.ones_like(self.u), -self.u, *hinges])
                (k, c0, *c), *_ = np.linalg.lstsq(design, target, rcond=None)
                rows += [(a, k, c0, c, locations, f) for f in F_STARTS]
        a, k, c0, c, d, f = (np.array(column, dtype=np.float64) for column in zip(*rows))
        return self.pack(a, k, c0, c.reshape(len(rows), -1), d.reshape(len(rows), -1), np.full((len(rows), self.breaks), 1.0) * f[:, None])


def _fit(space: _Space, log_y, y):
    """Multi-start on at most SCREEN_POINTS rows (evenly spaced in x order: the starts' [S, n, P]
    jacobians must fit in memory), then Levenberg-Marquardt on every row from the best. Every start
    runs SCREEN_ITERATIONS steps of the batched L-BFGS; only the KEEP_STARTS best run to convergence."""
    rows = np.argsort(space.u, kind="stable")[np.unique(np.linspace(0, len(log_y) - 1, SCREEN_POINTS).round().astype(int))]
    screen_space = space.subset(rows)
    starts = screen_space.starts(y[rows])
    batched = screen_space.objective(log_y[rows])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        screen = batched_lbfgs(batched, starts, max_iter=SCREEN_ITERATIONS)
        keep = np.argsort(np.where(np.isfinite(screen.f), screen.f, np.inf))[:KEEP_STARTS]
        batch = batched_lbfgs(batched, screen.x[keep], max_iter=2000)
        best = int(np.argmin(np.where(np.isfinite(batch.f), batch.f, np.inf)))
        theta, converged = _levenberg_marquardt(space, log_y[None], np.ones((1, len(log_y))), batch.x[best][None], max_iter=LM_POLISH_ITER)
        objective, _ = space.objective(log_y)(theta, np.zeros(1, dtype=int))
    return theta[0], float(objective[0]), bool(converged[0]), len(starts)


def _refit(space: _Space, log_y, theta, weights):
    """Refit every draw (rows of log_y and weights, [R, n]) from the estimate: Levenberg-Marquardt first,
    then the batched L-BFGS for the draws it did not finish in LM_MAX_ITER steps (a break sharper than
    the data's spacing makes the objective too far from quadratic for Gauss-Newton steps).
    Returns (theta [R, P], converged [R])."""
    start = np.repeat(space.nudged(theta)[None], len(weights), axis=0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        draws, converged = _levenberg_marquardt(space, log_y, weights, start)
        rest = np.flatnonzero(~converged)
        if rest.size:
            batch = batched_lbfgs(space.objective(per_draw(log_y, rest), per_draw(weights, rest)), draws[rest], max_iter=2000)
            draws[rest], converged[rest] = batch.x, batch.converged
    log.debug("broken: %d of %d refits finished by Levenberg-Marquardt", len(weights) - rest.size, len(weights))
    return draws, converged


def _levenberg_marquardt(space: _Space, log_y, weights, theta, max_iter: int = LM_MAX_ITER):
    """Weighted least squares on log y for every row of theta at once (log_y, weights: [S, n]), by
    `_lsq.levenberg_marquardt` with the change of variables' curvature (`_Space.bend`) on the normal
    matrix's diagonal. Returns (theta [S, P], converged [S]).

    Why not the batched L-BFGS: from the estimate, a refit is a small-residual least-squares problem
    where Gauss-Newton steps converge in a few iterations where L-BFGS needs hundreds (on 300 resamples
    of 500 points about 10x faster, benchmarks/results/notes.md), with objectives equal to 5e-6
    (relative) or lower and percentile ends equal to 1e-4."""
    return _lsq.levenberg_marquardt(space.log_prediction, theta, weights, log_y, max_iter=max_iter, ftol=LM_FTOL, gtol=LM_GTOL,
                                    curvature=lambda x, descent: np.maximum(-descent * space.bend(x), 0.0))


def _break_flags(params, samples, space: _Space, level) -> list:
    """A break the data do not locate or shape, or whose change of slope may be zero (module docstring)."""
    if len(samples) == 0:
        return []
    names = list(params)
    tail = 50 * (1 - level)
    searched = {"d": (space.hi - space.lo, "locate"), "f": (space.f_span, "tell the sharpness of")}
    flags = []
    for i in range(1, space.breaks + 1):
        for kind, (width, verb) in searched.items():
            low, high = np.nanpercentile(samples[:, names.index(f"{kind}{i}")], [tail, 100 - tail])
            span = np.log(high / low)
            if span > NOT_LOCATED_SHARE * width or span > NOT_DETERMINED_DECADES * np.log(10):
                flags.append(
                    f"{kind}{i}_not_determined: its {level:.0%} interval [{low:.3g}, {high:.3g}] covers {span / width:.0%} "
                    f"of the log range searched: the data do not {verb} break {i}"
                )
        low, high = np.nanpercentile(samples[:, names.index(f"c{i}")], [tail, 100 - tail])
        if low <= 0 <= high:
            flags.append(f"c{i}_interval_includes_zero: [{low:.3g}, {high:.3g}]: the data do not show that the slope changes at break {i}")
    return flags
