"""The over-training law of Gadre et al. 2024 ("Language models scale reliably with over-training and on
downstream tasks", arXiv:2403.08540): Chinchilla's L(N, D) with ONE exponent for N and D.

Two forms of one law, with the paper's parameter names:

    L(N, D) = E + A N^-alpha + B D^-alpha                        (Chinchilla's form with alpha = beta)
    L(C, M) = E + (a M^eta + b M^-eta) C^-eta                    (their form: C = 6 N D, M = D / N)

Substituting N = sqrt(C / 6M) and D = sqrt(C M / 6) converts one into the other:
eta = alpha / 2, a = A (1/6)^-eta = A 6^eta, b = B 6^eta. The paper's point is that at a fixed token
multiplier M the reducible loss is a power law in C with the SAME exponent eta for every M, so runs
at a cheap M (the compute-optimal ~20) extrapolate to heavily over-trained ones (M = 640).

Closed forms (derived here from the law, checked in the tests against float64 evaluation of it):
- compute-optimal multiplier: dL/dM = 0 at M* = (b/a)^(1/(2 eta)) = (B/A)^(1/alpha), the same at every C;
- loss on the compute-optimal line: L*(C) = E + 2 sqrt(a b) C^-eta;
- over-training penalty: L(C, M) - E = 2 sqrt(a b) cosh(eta ln(M / M*)) C^-eta;
- compute for a target loss at multiplier M: C = ((a M^eta + b M^-eta) / (L - E))^(1/eta).

Fit: least squares on log L (losses compare by ratio, as in every law here; the authors' repository,
scaling/laws.py, fits L itself by least squares with scipy's curve_fit): log L_hat = LSE(k_N - alpha u,
k_D - alpha v, e) with u, v = log N, log D centred on the data (so the scales k barely correlate with
alpha). A grid of 144 starts runs at once in the batched L-BFGS on at most chinchilla.GRID_ROWS rows; the best
is polished by scipy on all rows. The objective is Chinchilla's log-space objective with the Huber
threshold at infinity (plain squares) and beta tied to alpha. Nothing is bounded: E may sit above the
smallest observed loss (noise around the asymptote is allowed). Bootstrap refits start from the
optimum, all draws in one batched run (in chunks on large data), as for Chinchilla; the draws come
from `bootstrap.bootstrap_blocks`. Least squares has no Huber robustness to lose, so the default
parametric draws (the fitted law plus Gaussian noise in log L at the residuals' scale) assume what the
fit itself assumes; on runs with outliers both the fit and its intervals follow them.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from fastscale.fit._checks import as_values, enough_data, positive_int, same_length
from fastscale.fit._optimize import batched_lbfgs, lbfgs_refit, minimize_lbfgs
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING, check_resampling, resample_count_chunks
from fastscale.fit.chinchilla import grid_rows, huber_objective
from fastscale.fit.results import Estimate, FitResult, bootstrapped_result

log = logging.getLogger(__name__)

PARAM_NAMES = ("E", "A", "B", "alpha", "a", "b", "eta")
# Starts, theta = (k_N, k_D, e, alpha): k are the logs of the two reducible terms at the centre of the
# data (each from 0.05 to 2.7 nats), e = log E. Measured against a 6 x 6 x 5 x 6 = 1,080-start grid on 72
# data sets (Gadre et al.'s released losses, 5 and 32 synthetic runs, 40 runs of random E, A, B, alpha):
# these 144 starts reached the same optimum on all but a rising loss (flagged alpha_not_positive), 4x faster.
GRID_K = (-3.0, -1.5, 0.0, 1.0)
GRID_E = (-1.0, 0.0, 1.0)
GRID_ALPHA = (0.05, 0.2, 0.8)
GRADIENT_TOL = 1e-7
LEAST_SQUARES = np.inf  # Huber threshold at infinity: the Huber objective is then 0.5 r^2
BOOTSTRAP_CELLS = 2_000_000  # draws x rows per batched bootstrap run: bounds memory on large data
N_PARAMS = 4
# Row resamples of few runs: flag when more than this share drew fewer than N_PARAMS + 1 distinct runs.
# Beyond MANY_RUNS distinct runs (one row each) such a resample has probability < 1e-20 and is not counted.
UNDERDETERMINED_SHARE = 0.01
MANY_RUNS = 64


def overtrain_grid() -> np.ndarray:
    """The 4 * 4 * 3 * 3 = 144 starts as rows (k_N, k_D, e, alpha)."""
    return np.array(list(itertools.product(GRID_K, GRID_K, GRID_E, GRID_ALPHA)), dtype=np.float64)


@dataclass(frozen=True)
class OvertrainFit(FitResult):
    """params: E, A, B, alpha of L(N, D) and the same law's a, b, eta of L(C, M) (see the module
    docstring). predict(N, D) and predict_interval(N, D) take parameters and tokens."""

    scales = ("E", "A", "B", "a", "b")

    @staticmethod
    def _law(p, n, d):
        return p["E"] + p["A"] * n ** -p["alpha"] + p["B"] * d ** -p["alpha"]

    def loss_at(self, compute, multiplier) -> np.ndarray:
        """L(C, M) = E + (a M^eta + b M^-eta) C^-eta: the loss of a run of C FLOPs (C = 6 N D) at D/N = M."""
        return loss_at(self.params, np.asarray(compute, dtype=np.float64), np.asarray(multiplier, dtype=np.float64))

    def optimal_multiplier(self) -> Estimate:
        """M* = (b/a)^(1/(2 eta)) = (B/A)^(1/alpha): the tokens per parameter minimizing loss at every C."""
        return self.estimate(optimal_multiplier)

    def compute_for_loss(self, loss: float, multiplier: float | None = None) -> Estimate:
        """C reaching `loss` at token multiplier M (default: the compute-optimal M*); nan where loss <= E."""
        return self.estimate(lambda p: compute_for_loss(p, loss, optimal_multiplier(p) if multiplier is None else multiplier))


def loss_at(p: dict, compute, multiplier):
    """Gadre et al.'s L(C, M) = E + (a M^eta + b M^-eta) C^-eta."""
    return p["E"] + (p["a"] * multiplier ** p["eta"] + p["b"] * multiplier ** -p["eta"]) * compute ** -p["eta"]


def optimal_multiplier(p: dict):
    """The M minimizing L(C, M) at fixed C: a M^eta = b M^-eta, so M* = (b/a)^(1/(2 eta))."""
    return (p["b"] / p["a"]) ** (0.5 / p["eta"])


def compute_for_loss(p: dict, loss: float, multiplier):
    """Invert L(C, M) for C at fixed M: C = (lambda(M) / (L - E))^(1/eta), lambda(M) = a M^eta + b M^-eta."""
    reducible = loss - p["E"]
    slope = p["a"] * multiplier ** p["eta"] + p["b"] * multiplier ** -p["eta"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(reducible > 0, (slope / np.abs(reducible)) ** (1.0 / p["eta"]), np.nan)


def tied_objective(log_n, log_d, log_y, weights=None):
    """Batched least squares on log L over theta [S, 4] = (k_N, k_D, e, alpha): Chinchilla's objective on
    (k_N, k_D, e, alpha, beta = alpha), its beta gradient added to alpha's (the chain rule of the tie).
    log_n, log_d may be centred (the fit passes u, v), which only shifts what k means; weights as in
    `huber_objective` (log_y too: [n], or [R, n] per draw)."""
    untied = huber_objective(log_n, log_d, log_y, weights, delta=LEAST_SQUARES)

    def value_and_gradient(theta, rows):
        value, gradient = untied(np.concatenate([theta, theta[:, 3:]], axis=1), rows)
        gradient[:, 3] += gradient[:, 4]
        return value, gradient[:, :4]

    return value_and_gradient


def fit_overtrain(
    n,
    d,
    loss,
    *,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> OvertrainFit:
    """Fit L(N, D) = E + A N^-alpha + B D^-alpha (Gadre et al. 2024) and report it in both forms.

    n: parameters per run (as the data counts them); d: training tokens per run; loss: final loss in
    nats per token. Needs >= 3 distinct N, >= 3 distinct D and >= 5 distinct (N, D) runs (4 parameters
    and one residual): the paper's sweeps vary N and M = D/N, which gives both. resampling: the
    bootstrap's scheme, "parametric" or "rows" (see `bootstrap`).
    """
    n = as_values("n", n, positive=True)
    d = as_values("d", d, positive=True)
    y = as_values("loss", loss, positive=True)
    same_length(n=n, d=d, loss=y)
    enough_data("overtrain", N_PARAMS, 3, n=n, d=d)
    check_resampling(resampling)
    n_bootstrap = positive_int("n_bootstrap", n_bootstrap, minimum=0)
    centre_n, centre_d = np.log(n).mean(), np.log(d).mean()
    u, v, log_y = np.log(n) - centre_n, np.log(d) - centre_d, np.log(y)

    theta, objective, converged = _best_of_grid(u, v, log_y)
    to_params = _parameters(centre_n, centre_d)
    params = dict(zip(PARAM_NAMES, to_params(theta)))
    log_pred = np.log(OvertrainFit._law(params, n, d))
    labels = _run_labels(n, d) if resampling == "rows" else None
    short = 0 if labels is None else _short_resamples(labels, n_bootstrap, seed)
    return bootstrapped_result(
        OvertrainFit, log_y=log_y, log_pred=log_pred, n_params=N_PARAMS, cells=BOOTSTRAP_CELLS,
        refit=lbfgs_refit(lambda weights, draws_log_y: tied_objective(u, v, draws_log_y, weights), theta),
        to_samples=lambda draws: np.array([to_params(t) for t in draws]).reshape(-1, len(PARAM_NAMES)),
        resampling=resampling, n_bootstrap=n_bootstrap, seed=seed, law="overtrain", params=params, level=level, converged=converged,
        flags=_exponent_flags(params) + _underdetermined_flags(short, n_bootstrap, labels), objective=objective,
    )


def _best_of_grid(u, v, log_y):
    """(theta, objective, converged): every grid start at once on at most chinchilla.GRID_ROWS rows
    (`grid_rows`), then the best polished by scipy on all rows."""
    grid, rows = overtrain_grid(), grid_rows(len(log_y))
    with np.errstate(over="ignore", invalid="ignore"):
        batch = batched_lbfgs(tied_objective(u[rows], v[rows], log_y[rows]), grid)
    start = batch.x[int(np.argmin(np.where(np.isfinite(batch.f), batch.f, np.inf)))]
    single = tied_objective(u, v, log_y)
    one_row = np.zeros(1, dtype=int)

    def value_and_gradient(theta):
        return tuple(r[0] for r in single(theta[None], one_row))

    polished = minimize_lbfgs(value_and_gradient, start)
    at_start = value_and_gradient(start)[0]
    theta = polished.x if polished.fun <= at_start else start
    _, gradient = value_and_gradient(theta)
    converged = bool(polished.success) or float(np.abs(gradient).max()) <= GRADIENT_TOL
    log.info("overtrain: %d starts on %d rows (%d batched iterations), polished on %d rows",
             len(grid), len(rows), batch.iterations, len(log_y))
    return theta, float(min(polished.fun, at_start)), converged


def _parameters(centre_n, centre_d):
    """theta -> (E, A, B, alpha, a, b, eta): k_N - alpha u = log(A N^-alpha) gives A = exp(k_N + alpha centre_n)."""

    def to_params(theta):
        k_n, k_d, e, alpha = theta
        with np.errstate(over="ignore"):  # a scale out of double range is flagged by fit_result
            big_a, big_b = np.exp(k_n + alpha * centre_n), np.exp(k_d + alpha * centre_d)
            eta = alpha / 2.0
            return np.exp(e), big_a, big_b, alpha, big_a * 6.0**eta, big_b * 6.0**eta, eta

    return to_params


def _run_labels(n, d) -> np.ndarray:
    """Each row's run: rows with the same (N, D) are one run."""
    return np.unique(np.stack([n, d], axis=1), axis=0, return_inverse=True)[1].ravel()


def _short_resamples(labels, n_bootstrap: int, seed: int) -> int:
    """How many of the "rows" bootstrap's resamples (the counts `bootstrap_blocks` draws with this seed)
    hold fewer than N_PARAMS + 1 distinct runs (0 beyond MANY_RUNS runs)."""
    runs = int(labels.max()) + 1
    if runs > MANY_RUNS:
        return 0
    short = 0
    for counts in resample_count_chunks(len(labels), n_bootstrap, seed):
        drawn = np.stack([(counts[:, labels == run] > 0).any(axis=1) for run in range(runs)], axis=1)
        short += int(np.sum(drawn.sum(axis=1) < N_PARAMS + 1))
    return short


def _underdetermined_flags(short: int, resamples: int, labels) -> list:
    """Flag a row bootstrap whose resamples often hold fewer distinct runs than the law has parameters + 1.

    With 5 runs, 96% of resamples repeat a run and keep <= 4 distinct ones. The refit then interpolates
    them (zero residual, so the draw carries no noise) or, with fewer, stops somewhere on a family of
    exact fits chosen by its start: the percentile interval measures the optimizer, not the data. The
    parametric draws keep every run and are not counted."""
    if short <= UNDERDETERMINED_SHARE * resamples:
        return []
    runs = int(labels.max()) + 1
    return [
        f"bootstrap_underdetermined: {short} of {resamples} resamples drew fewer than {N_PARAMS + 1} of the {runs} distinct runs, "
        f"too few to determine {N_PARAMS} parameters: the intervals are unreliable (fit more runs)"
    ]


def _exponent_flags(params):
    if params["alpha"] > 0:
        return []
    return [f"alpha_not_positive: alpha={params['alpha']:.4g} <= 0: loss does not fall with N and D"]
