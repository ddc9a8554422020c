"""Chinchilla approach 3 (Hoffmann et al. 2022): L(N, D) = E + A/N^alpha + B/D^beta.

The fit follows the paper and Epoch AI's replication (Besiroglu et al. 2024): in log space,
log L_hat = LSE(a - alpha log N, b - beta log D, e) with A, B, E = exp(a), exp(b), exp(e); minimize the
SUM over points of Huber_delta(log L_hat - log L), delta = 1e-3, with L-BFGS from every point of the
4,500-start grid, and keep the best. All starts run at once in the batched L-BFGS (one vectorized
objective call per iteration); the best is then polished by scipy's L-BFGS-B. Units: N as counted by
the data (Chinchilla counts all parameters), D in tokens, C = 6 N D in FLOPs.

Bootstrap: every draw is refitted from the optimum (as Epoch's standard errors are), a block of draws
at once in the batched L-BFGS, blocks from `bootstrap.bootstrap_blocks`. With the default
resampling="parametric" a draw is the fitted law plus Gaussian noise in log L at the residuals' scale
s. The Huber loss keeps the estimate robust to a few outlying runs; the draws are not: an outlier
inflates s (one residual of 10 s adds to s^2 as much as 100 ordinary ones) and every draw then puts
noise of that scale on every point, so on a correct law with outlying runs the intervals are wider
than the Huber fit's robustness calls for. Measured on 240 points of Hoffmann et al.'s law with 0.5%
noise and 4% of the runs off by +-5% (12 seeds, 200 draws): parametric intervals 2.1-2.6 times as
wide as the rows scheme's, which already covered the truth in 11 of 12 seeds. Draws from the law also
carry nothing the law leaves out. On Epoch's 240 points the residuals are heavy-tailed (kurtosis 14;
s = 0.0076 where 1.48 MAD = 0.0049) and structured (a quadratic in log N, log D explains 34% of their
variance; the runs at the fewest tokens, D < 6e9, fit worst: rms residual 0.013 against 0.0045-0.0067
elsewhere). Measured with 1,000 draws (95% intervals; Epoch's from 4,000 resampled point sets,
standard errors in brackets):

    param   parametric          rows                Epoch
    E       [1.775, 1.854]      [1.771, 1.869]      [1.769, 1.871] (0.026)
    A       [311, 757]          [287, 728]          [285, 744] (125)
    B       [1326, 3536]        [1047, 5709]        [1042, 5810] (1293)
    alpha   [0.322, 0.374]      [0.317, 0.372]      [0.317, 0.373] (0.015)
    beta    [0.343, 0.392]      [0.333, 0.414]      [0.331, 0.415] (0.021)

E, A and alpha agree; B and beta, which the runs at few tokens pull on, come out half as wide as
resampling the points gives. resampling="rows" resamples the points (Epoch's scheme), which keeps
outliers as outliers and carries such structure, at the cost of undercovering on few points (see
`bootstrap`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from fastscale.fit._checks import as_values, enough_data, positive_int, same_length
from fastscale.fit._optimize import batched_lbfgs, lbfgs_refit, minimize_lbfgs
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING, check_resampling, per_draw
from fastscale.fit.results import Estimate, FitResult, bootstrapped_result

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3
# Hoffmann et al.'s initialization grid, theta = (a, b, e, alpha, beta): 6 * 6 * 5 * 5 * 5 = 4,500 starts.
GRID_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_B = GRID_A
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_ALPHA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_BETA = GRID_ALPHA
PARAM_NAMES = ("E", "A", "B", "alpha", "beta", "a", "b")
# A start "reached the optimum" when its objective is within this relative distance of the best.
SAME_OPTIMUM_RTOL = 1e-6
GRADIENT_TOL = 1e-7
# Rows a start grid runs on (a fixed random subset beyond that; the polish uses all). On 6 synthetic sets
# of 500 points the grid on 250 of them led the polish to the optimum of the grid on all 500 (objectives
# equal to 1e-15, exponents to 1e-8) in half the time; Epoch's 240 points are all used.
GRID_ROWS = 250


def chinchilla_grid() -> np.ndarray:
    """The 4,500 starts of Hoffmann et al. as rows (a, b, e, alpha, beta)."""
    return np.array(list(itertools.product(GRID_A, GRID_B, GRID_E, GRID_ALPHA, GRID_BETA)), dtype=np.float64)


@dataclass(frozen=True)
class ChinchillaFit(FitResult):
    """params: E, A, B, alpha, beta, and the derived compute-optimal exponents a = beta/(alpha+beta)
    (N_opt proportional to C^a) and b = alpha/(alpha+beta) (D_opt proportional to C^b)."""

    n_starts: int
    starts_at_optimum: int  # how many grid starts ended at the grid's best objective (a flat surface shows here)

    scales = ("A", "B")

    @staticmethod
    def _law(p, n, d):
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    def compute_optimal(self, compute) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, D_opt) minimizing L under C = 6 N D (closed form of Hoffmann et al. eq. 4)."""
        return compute_optimal_allocation(self.params, np.asarray(compute, dtype=np.float64))

    def compute_optimal_estimate(self, compute: float) -> tuple[Estimate, Estimate]:
        """N_opt and D_opt at one compute budget, with bootstrap intervals."""
        return (
            self.estimate(lambda p: compute_optimal_allocation(p, compute)[0]),
            self.estimate(lambda p: compute_optimal_allocation(p, compute)[1]),
        )

    def compute_for_loss(self, loss: float) -> Estimate:
        """The compute C (FLOPs) at which a compute-optimal model reaches `loss`; nan where E >= loss."""
        return self.estimate(lambda p: _compute_for_loss(p, loss))


def compute_optimal_allocation(p: dict, compute):
    """(N_opt, D_opt) for params p (A, B, alpha, beta) at compute C = 6 N D:
    N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1/(alpha+beta)), a = beta/(alpha+beta)."""
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
    n_opt = g * (compute / 6.0) ** (p["beta"] / (p["alpha"] + p["beta"]))
    return n_opt, compute / (6.0 * n_opt)


def _compute_for_loss(p, loss):
    """At the optimum alpha A N^-alpha = beta B D^-beta, so L - E = (1 + alpha/beta) A N_opt^-alpha,
    and N_opt = G (C/6)^a inverts in closed form."""
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
    reducible = loss - p["E"]
    with np.errstate(invalid="ignore", divide="ignore"):
        n_opt = (np.abs(reducible) / ((1.0 + p["alpha"] / p["beta"]) * p["A"])) ** (-1.0 / p["alpha"])
        return np.where(reducible > 0, 6.0 * (n_opt / g) ** (1.0 / p["a"]), np.nan)


def huber_objective(log_n, log_d, log_loss, weights=None, delta=HUBER_DELTA):
    """Batched objective f(theta [S, 5], rows) -> (sum of weighted Huber losses [S], gradients [S, 5]).

    log_loss: [n] observed log L, or [R, n] per-draw log L of a bootstrap block indexed by `rows`;
    weights: None (all ones), [n], or [R, n] per-draw weights indexed by `rows` (see `per_draw`).
    Written with in-place operations: this function is nearly all of a 4,500-start fit's time.
    """
    log_loss = np.asarray(log_loss, dtype=np.float64)
    weights = None if weights is None else np.asarray(weights, dtype=np.float64)
    scale_n = np.stack([np.ones_like(log_n), -log_n], axis=1)  # d t_n / d (a, alpha)
    scale_d = np.stack([np.ones_like(log_d), -log_d], axis=1)  # d t_d / d (b, beta)

    def value_and_gradient(theta, rows):
        a, b, e, alpha, beta = (theta[:, j, None] for j in range(5))
        # The terms are exponentiated as they are, without log-sum-exp's shift by their maximum (which took
        # 40% of the time): a sum of positive terms loses no precision, and a sum that overflows (or
        # underflows to 0) gives an inf objective, which the line search rejects, so those warnings are off.
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            return _huber_terms(a, b, e, alpha, beta, rows)

    def _huber_terms(a, b, e, alpha, beta, rows):
        term_n = np.multiply(alpha, -log_n)
        term_n += a
        np.exp(term_n, out=term_n)  # A / N^alpha
        term_d = np.multiply(beta, -log_d)
        term_d += b
        np.exp(term_d, out=term_d)  # B / D^beta
        exp_e = np.exp(e)
        total = term_n + term_d
        total += exp_e
        r = np.log(total)
        r -= per_draw(log_loss, rows)
        slope = np.minimum(r, delta)
        np.maximum(slope, -delta, out=slope)
        # Huber(r) = c (r - c/2) with c = clip(r, -delta, delta): r^2/2 inside, delta(|r| - delta/2) outside
        r -= 0.5 * slope
        r *= slope
        if weights is not None:
            w = per_draw(weights, rows)
            r *= w
            slope *= w
        slope /= total
        term_n *= slope
        term_d *= slope
        g_n, g_d = term_n @ scale_n, term_d @ scale_d
        gradient = np.stack([g_n[:, 0], g_d[:, 0], exp_e[:, 0] * slope.sum(1), g_n[:, 1], g_d[:, 1]], axis=1)
        return r.sum(1), gradient

    return value_and_gradient


def fit_chinchilla(
    n_params,
    n_tokens,
    loss,
    *,
    delta: float = HUBER_DELTA,
    starts=None,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (approach 3) from the full Hoffmann grid.

    n_params: N per run; n_tokens: D per run (D = C / 6N when only compute is known); loss: final loss
    in nats per token. starts: rows (a, b, e, alpha, beta), default `chinchilla_grid()`. resampling:
    the bootstrap's scheme ("parametric" or "rows", see `bootstrap`; the module docstring says what
    "parametric" implies with the Huber loss). Bootstrap refits start from the optimum (as Epoch's
    standard errors do), a block of draws at a time in the batched L-BFGS.
    """
    n = as_values("n_params", n_params, positive=True)
    d = as_values("n_tokens", n_tokens, positive=True)
    y = as_values("loss", loss, positive=True)
    size = same_length(n_params=n, n_tokens=d, loss=y)
    enough_data("chinchilla", 5, 3, n_params=n, n_tokens=d)
    check_resampling(resampling)
    n_bootstrap = positive_int("n_bootstrap", n_bootstrap, minimum=0)
    grid = chinchilla_grid() if starts is None else np.atleast_2d(np.asarray(starts, dtype=np.float64))
    log_n, log_d, log_y = np.log(n), np.log(d), np.log(y)

    rows = grid_rows(size)
    with np.errstate(over="ignore", invalid="ignore"):
        batch = batched_lbfgs(huber_objective(log_n[rows], log_d[rows], log_y[rows], delta=delta), grid)
    best = int(np.argmin(np.where(np.isfinite(batch.f), batch.f, np.inf)))
    single = huber_objective(log_n, log_d, log_y, delta=delta)
    one_row = np.zeros(1, dtype=int)

    def value_and_gradient(t):
        return tuple(v[0] for v in single(t[None], one_row))

    polished = minimize_lbfgs(value_and_gradient, batch.x[best])
    at_start = value_and_gradient(batch.x[best])[0]
    theta = polished.x if polished.fun <= at_start else batch.x[best]
    objective = float(min(polished.fun, at_start))
    _, gradient = value_and_gradient(theta)
    converged = bool(polished.success) or float(np.abs(gradient).max()) <= GRADIENT_TOL
    at_optimum = int(np.sum(batch.f <= batch.f[best] * (1 + SAME_OPTIMUM_RTOL)))
    log.info("chinchilla: %d starts on %d rows, %d at the grid's best after %d batched iterations; optimum %.10g on %d rows",
             len(grid), len(rows), at_optimum, batch.iterations, objective, size)

    params = dict(zip(PARAM_NAMES, _to_params(theta)))
    log_pred = np.log(ChinchillaFit._law(params, n, d))
    refit = lbfgs_refit(lambda weights, draws_log_y: huber_objective(log_n, log_d, draws_log_y, weights, delta), theta)
    return bootstrapped_result(
        ChinchillaFit, log_y=log_y, log_pred=log_pred, refit=refit, n_params=len(theta), resampling=resampling, n_bootstrap=n_bootstrap,
        seed=seed, to_samples=lambda draws: np.array([_to_params(t) for t in draws]).reshape(-1, len(PARAM_NAMES)),
        law="chinchilla", params=params, level=level, converged=converged, flags=_exponent_flags(params), objective=objective,
        n_starts=len(grid), starts_at_optimum=at_optimum,
    )


def grid_rows(size: int, limit: int = GRID_ROWS) -> np.ndarray:
    """The rows a start grid runs on: all of them up to `limit`, else a fixed random `limit` of them
    (seed 0, ascending). The grid only has to find the basin (the polish on every row finds the
    optimum), and 4,500 starts on a million rows would need 36 GB per temporary."""
    if size <= limit:
        return np.arange(size)
    return np.sort(np.random.default_rng(0).choice(size, limit, replace=False))


def _to_params(theta):
    a, b, e, alpha, beta = theta
    return np.exp(e), np.exp(a), np.exp(b), alpha, beta, beta / (alpha + beta), alpha / (alpha + beta)


def _exponent_flags(params):
    return [
        f"{name}_not_positive: {name}={params[name]:.4g} <= 0: loss does not fall with {variable}"
        for name, variable in (("alpha", "N"), ("beta", "D"))
        if params[name] <= 0
    ]
