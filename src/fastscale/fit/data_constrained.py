"""The data-constrained law of Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models",
NeurIPS 2023, eqs. 5-7): Chinchilla's L(N, D) with repeated tokens and excess parameters discounted.

    L(N, D, U_D) = E + A / N'^alpha + B / D'^beta
    D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)),   R_D = max(D / U_D - 1, 0)   (repetitions beyond the first epoch)
    N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)),   R_N = max(N / U_N - 1, 0)
    U_N = min(N, N_opt(U_D)),   N_opt(D) = G (D G)^(beta/alpha),   G = (alpha A / (beta B))^(1/(alpha+beta))

U_D is the number of unique tokens, so D / U_D is the number of epochs. U_N, the "unique parameters", is
the size Chinchilla's allocation (Hoffmann et al. eq. 4) pairs with U_D tokens: parameters beyond it are
worth less, as repeated tokens are. The i-th repetition of the data adds U_D exp(-i / R_D*) effective
tokens, so D' never exceeds U_D (1 + R_D*): R_D* is the repetition count at which a repeated token's value
has fallen by 1 - 1/e, and likewise R_N* for excess parameters.

Published constants (PAPER_PARAMS): the fit of the paper (its Figure 3, R_D* = 15.4, R_N* = 5.3) to
the full precision of the authors' repository (huggingface/datablations, README "Parametric Fit":
a, b, e = log A, log B, log E = 6.255414, 7.3049974, 0.6254804; alpha = beta = 0.3526596;
R_D* = 15.387756, R_N* = 5.309743), with its two worked examples (N, D, U_D) = (6.34e9, 242e9, 25e9)
-> 2.2256440889984477 and (8.67e9, 178e9, 25e9) -> 2.2269634075087867, which the tests reproduce.

Two ways to fit, as the paper has two stages:

- `base_law` given (E, A, B, alpha, beta, e.g. a `fit_chinchilla` on single-epoch runs): only R_D* and
  R_N* are fitted, the paper's procedure (it fits the Chinchilla part on runs without repetition, then
  the decay constants on all runs). Intervals are then conditional on the base law being exact.
- default, no `base_law`: all seven parameters at once. This is the default because the CLI and most
  users have one table of runs, and a joint bootstrap carries the uncertainty of E, A, B, alpha, beta
  into the intervals of R_D* and R_N* instead of treating a fitted base law as known. It needs runs at
  one epoch and at several repetition levels in the same table.

The objective is Chinchilla's (chinchilla.py): the sum of Huber_1e-3(log L_hat - log L), with
log L_hat = LSE(a - alpha log N', b - beta log D', e) and R* = exp(rho), so every parameter is
unconstrained; a start grid runs in one batched L-BFGS, the best is polished by scipy, and all bootstrap
resamples are refitted from the optimum in one batched run.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from fastscale.fit._checks import FitInputError, as_values, enough_data, positive_int, same_length
from fastscale.fit._optimize import batched_lbfgs, minimize_lbfgs
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, resample_counts
from fastscale.fit.chinchilla import HUBER_DELTA
from fastscale.fit.results import FitResult, fit_result

log = logging.getLogger(__name__)

PARAM_NAMES = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star")  # R_D_star is the paper's R_D^*
BASE_NAMES = PARAM_NAMES[:5]
PAPER_PARAMS = {
    "E": float(np.exp(0.6254804)),
    "A": float(np.exp(6.255414)),
    "B": float(np.exp(7.3049974)),
    "alpha": 0.3526596,
    "beta": 0.3526596,
    "R_D_star": 15.387756,
    "R_N_star": 5.309743,
}
# Starts for theta = (a, b, e, alpha, beta): Hoffmann et al.'s ranges for a, b, e at their spacing,
# exponents on a coarser grid (zero left out: U_N needs alpha, beta > 0). The decay constants start at the
# paper's values, then the best base is refined from every pair of DECAY_STARTS.
GRID_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_B = GRID_A
GRID_E = (-1.0, 0.0, 1.0)
GRID_EXPONENT = (0.2, 0.5, 1.0)
DECAY_STARTS = (0.5, 2.0, 8.0, 32.0, 128.0)  # R* starts: repetitions worth e^-1 after half an epoch ... 128
GRADIENT_TOL = 1e-7


@dataclass(frozen=True)
class DataConstrainedFit(FitResult):
    """params: E, A, B, alpha, beta, R_D_star, R_N_star (in the units of N and D: parameters, tokens).

    base_fixed: E, A, B, alpha, beta were given (`base_law`), not fitted: they carry no interval."""

    n_starts: int
    base_fixed: bool

    scales = ("A", "B", "R_D_star", "R_N_star")

    @staticmethod
    def _law(p, n, d, unique_d, unique_n=None):
        return data_constrained_loss(p, n, d, unique_d, unique_n)

    def effective_data(self, d, unique_d) -> np.ndarray:
        """D' for D tokens drawn from U_D unique ones, with the fitted R_D*."""
        return effective_data(d, unique_d, self.params["R_D_star"])

    def effective_parameters(self, n, unique_d, unique_n=None) -> np.ndarray:
        """N' for N parameters trained on U_D unique tokens (U_N from the fitted base law unless given)."""
        u_n = unique_parameters(self.params, n, unique_d) if unique_n is None else np.minimum(n, unique_n)
        return effective_parameters(n, u_n, self.params["R_N_star"])


def effective_data(d, unique_d, r_d_star) -> np.ndarray:
    """D' = U_D + U_D R_D* (1 - exp(-R_D/R_D*)) with R_D = max(D/U_D - 1, 0) (Muennighoff et al. eq. 5)."""
    d, unique_d = np.asarray(d, dtype=np.float64), np.asarray(unique_d, dtype=np.float64)
    return unique_d * _decayed(np.maximum(d / unique_d - 1.0, 0.0), r_d_star)


def effective_parameters(n, unique_n, r_n_star) -> np.ndarray:
    """N' = U_N + U_N R_N* (1 - exp(-R_N/R_N*)) with R_N = max(N/U_N - 1, 0) (Muennighoff et al. eq. 6)."""
    n, unique_n = np.asarray(n, dtype=np.float64), np.asarray(unique_n, dtype=np.float64)
    return unique_n * _decayed(np.maximum(n / unique_n - 1.0, 0.0), r_n_star)


def compute_optimal_parameters(p: dict, d) -> np.ndarray:
    """N_opt(D) = G (D G)^(beta/alpha): the N that Chinchilla's allocation (Hoffmann et al. eq. 4,
    D_opt = G^-1 (C/6)^(alpha/(alpha+beta))) pairs with D tokens, for base params p (A, B, alpha, beta)."""
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
    return g * (np.asarray(d, dtype=np.float64) * g) ** (p["beta"] / p["alpha"])


def unique_parameters(p: dict, n, unique_d) -> np.ndarray:
    """U_N = min(N, N_opt(U_D)): parameters beyond the compute-optimal size for the unique data are excess."""
    return np.minimum(np.asarray(n, dtype=np.float64), compute_optimal_parameters(p, unique_d))


def data_constrained_loss(p: dict, n, d, unique_d, unique_n=None) -> np.ndarray:
    """L = E + A/N'^alpha + B/D'^beta for params p (names as PARAM_NAMES). unique_n: U_N per run when
    known (capped at N, as the paper's min); default the compute-optimal size for U_D."""
    n = np.asarray(n, dtype=np.float64)
    u_n = unique_parameters(p, n, unique_d) if unique_n is None else np.minimum(n, np.asarray(unique_n, dtype=np.float64))
    n_eff = effective_parameters(n, u_n, p["R_N_star"])
    d_eff = effective_data(d, unique_d, p["R_D_star"])
    return p["E"] + p["A"] / n_eff ** p["alpha"] + p["B"] / d_eff ** p["beta"]


def _decayed(repetitions, r_star):
    """1 + R* (1 - exp(-R/R*)): the effective multiple of the unique amount after R repetitions."""
    return 1.0 + r_star * -np.expm1(-repetitions / r_star)


@dataclass(frozen=True)
class _Runs:
    """Logs of the data, computed once: log N, log U_D, log L, R_D, and log U_N when the caller gave it."""

    log_n: np.ndarray
    log_unique_d: np.ndarray
    repetitions_d: np.ndarray
    log_y: np.ndarray
    log_unique_n: np.ndarray | None


def loss_objective(runs: _Runs, weights=None, base=None, delta: float = HUBER_DELTA):
    """Batched objective f(theta [S, P], rows) -> (sum of weighted Huber losses [S], gradients [S, P]).

    theta = (a, b, e, alpha, beta, rho_D, rho_N) with A, B, E, R_D*, R_N* = exp(a, b, e, rho_D, rho_N);
    with base = (a, b, e, alpha, beta) held fixed, theta = (rho_D, rho_N). weights: None, [n], or
    [n_resamples, n] bootstrap counts indexed by `rows`. The gradient is analytic, including the
    dependence of U_N on the base law: log U_N = (a - b + log(alpha/beta) + beta log U_D) / alpha.
    """
    weights = None if weights is None else np.asarray(weights, dtype=np.float64)
    free = slice(0, 7) if base is None else slice(5, 7)
    base = None if base is None else np.asarray(base, dtype=np.float64)

    def value_and_gradient(theta, rows):
        full = theta if base is None else np.column_stack([np.broadcast_to(base, (len(theta), 5)), theta])
        a, b, e, alpha, beta, rho_d, rho_n = (full[:, j, None] for j in range(7))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            log_d_eff, dlog_d_drho = _log_effective(runs.repetitions_d, rho_d)
            log_d_eff = log_d_eff + runs.log_unique_d
            if runs.log_unique_n is None:
                log_optimal = (a - b + np.log(alpha / beta) + beta * runs.log_unique_d) / alpha
                excess = log_optimal < runs.log_n
                log_u_n = np.where(excess, log_optimal, runs.log_n)
            else:
                log_optimal, excess, log_u_n = None, np.zeros(1, dtype=bool), np.minimum(runs.log_unique_n, runs.log_n)
            repetitions_n = np.expm1(runs.log_n - log_u_n)
            log_n_eff, dlog_n_drho = _log_effective(repetitions_n, rho_n)
            log_n_eff = log_n_eff + log_u_n
            # d log N' / d log U_N: U_N scales N' directly and, through R_N = N/U_N - 1, the decay
            x_n = np.exp(-repetitions_n / np.exp(rho_n))
            f_n = 1.0 + np.exp(rho_n) * -np.expm1(-repetitions_n / np.exp(rho_n))
            k = np.where(excess, (f_n - (repetitions_n + 1.0) * x_n) / f_n, 0.0)
            t_n, t_d = a - alpha * log_n_eff, b - beta * log_d_eff
            top = np.maximum(np.maximum(t_n, t_d), e)
            w_n, w_d, w_e = np.exp(t_n - top), np.exp(t_d - top), np.exp(e - top)
            total = w_n + w_d + w_e
            r = np.log(total) + top - runs.log_y
        slope = np.clip(r, -delta, delta)
        huber = slope * (r - 0.5 * slope)
        if weights is not None:
            w = weights if weights.ndim == 1 else weights[rows]
            huber, slope = huber * w, slope * w
        g_n, g_d, g_e = slope * w_n / total, slope * w_d / total, slope * w_e / total
        if log_optimal is None:
            du_alpha = du_beta = 0.0
        else:
            du_alpha = np.where(excess, 1.0 / alpha - log_optimal, 0.0)  # alpha * d log U_N / d alpha
            du_beta = np.where(excess, runs.log_unique_d - 1.0 / beta, 0.0)  # alpha * d log U_N / d beta
        gradient = np.stack(
            [
                (g_n * (1.0 - k)).sum(1),
                (g_d + g_n * k).sum(1),
                g_e.sum(1),
                -(g_n * (log_n_eff + k * du_alpha)).sum(1),
                -(g_d * log_d_eff + g_n * k * du_beta).sum(1),
                -(g_d * beta * dlog_d_drho).sum(1),
                -(g_n * alpha * dlog_n_drho).sum(1),
            ],
            axis=1,
        )
        value = huber.sum(1)
        valid = (alpha[:, 0] > 0) & (beta[:, 0] > 0) & np.isfinite(value)  # U_N needs positive exponents
        return np.where(valid, value, np.inf), np.where(valid[:, None], gradient[:, free], 0.0)

    return value_and_gradient


def _log_effective(repetitions, rho):
    """log(1 + R*(1 - exp(-R/R*))) with R* = exp(rho), and its derivative in rho."""
    r_star = np.exp(rho)
    decay = np.exp(-repetitions / r_star)
    multiple = 1.0 + r_star * -np.expm1(-repetitions / r_star)
    return np.log(multiple), (r_star * -np.expm1(-repetitions / r_star) - repetitions * decay) / multiple


def fit_data_constrained(
    n,
    d,
    unique_d,
    loss,
    *,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    unique_n=None,
    base_law=None,
    delta: float = HUBER_DELTA,
) -> DataConstrainedFit:
    """Fit Muennighoff et al.'s L(N, D, U_D) (module docstring) to final losses.

    n: parameters per run; d: tokens trained on; unique_d: unique tokens in the data the run cycled
    through (unique_d <= d; d / unique_d epochs); loss: final loss in nats per token. unique_n: U_N per
    run if known, else the compute-optimal size for U_D under the base law. base_law: a mapping with E,
    A, B, alpha, beta (a `ChinchillaFit` or its params) to hold fixed and fit only R_D*, R_N* (the paper's
    second stage); default fit all seven (see the module docstring for why).
    """
    n = as_values("n", n, positive=True)
    d = as_values("d", d, positive=True)
    u_d = as_values("unique_d", unique_d, positive=True)
    y = as_values("loss", loss, positive=True)
    size = same_length(n=n, d=d, unique_d=u_d, loss=y)
    _unique_within("unique_d", u_d, "d", d)
    u_n = None if unique_n is None else as_values("unique_n", unique_n, positive=True)
    if u_n is not None:
        same_length(n=n, unique_n=u_n)
    base = _base_theta(base_law)
    epochs = d / u_d
    if base is None:
        enough_data("data-constrained", 7, 3, n=n, d=d, epochs=epochs)
    else:
        enough_data("data-constrained (R_D*, R_N* on a fixed base law)", 2, 3, epochs=epochs)
    runs = _Runs(np.log(n), np.log(u_d), np.maximum(epochs - 1.0, 0.0), np.log(y), None if u_n is None else np.log(u_n))

    theta, objective, converged, n_starts = _fit(runs, base, delta)
    counts = resample_counts(size, positive_int("n_bootstrap", n_bootstrap, minimum=0), seed)
    draws, failed = _bootstrap(runs, base, theta, counts, delta)
    params = _to_params(theta, base)
    return fit_result(
        DataConstrainedFit,
        law="data-constrained",
        params=params,
        samples=np.array([list(_to_params(t, base).values()) for t in draws]).reshape(-1, len(PARAM_NAMES)),
        level=level,
        converged=converged,
        failed_refits=failed,
        fixed=BASE_NAMES if base is not None else (),
        flags=_flags(params, n, u_d, u_n),
        residuals=runs.log_y - np.log(data_constrained_loss(params, n, d, u_d, u_n)),
        objective=objective,
        n_points=size,
        n_starts=n_starts,
        base_fixed=base is not None,
    )


def _unique_within(name, unique, total_name, total):
    bad = np.flatnonzero(unique > total * (1 + 1e-12))
    if bad.size:
        i = bad[0]
        raise FitInputError(
            f"{name}: expected <= {total_name} (a run cannot see more unique tokens than it trains on), got {unique[i]:.6g} > "
            f"{total_name}={total[i]:.6g} at index {i} ({bad.size} such rows)",
            name,
        )


def _base_theta(base_law):
    """(a, b, e, alpha, beta) of a base law given as a mapping or a fit result with `params`; None for none."""
    if base_law is None:
        return None
    params = getattr(base_law, "params", base_law)
    missing = [name for name in BASE_NAMES if name not in params]
    if missing:
        raise FitInputError(f"base_law: expected E, A, B, alpha, beta, missing {', '.join(missing)} (got {sorted(params)})", "base_law")
    values = {name: float(params[name]) for name in BASE_NAMES}
    bad = [f"{name}={value!r}" for name, value in values.items() if not (np.isfinite(value) and value > 0)]
    if bad:
        raise FitInputError(f"base_law: expected finite values > 0, got {', '.join(bad)}", "base_law")
    return np.array([np.log(values["A"]), np.log(values["B"]), np.log(values["E"]), values["alpha"], values["beta"]])


def _decay_grid():
    """(rho_D, rho_N) starts: every pair of DECAY_STARTS."""
    return np.log(np.array(list(itertools.product(DECAY_STARTS, DECAY_STARTS))))


def _starts(base):
    if base is not None:
        return _decay_grid()
    grid = np.array(list(itertools.product(GRID_A, GRID_B, GRID_E, GRID_EXPONENT, GRID_EXPONENT)))
    paper = np.log([PAPER_PARAMS["R_D_star"], PAPER_PARAMS["R_N_star"]])
    return np.column_stack([grid, np.broadcast_to(paper, (len(grid), 2))])


def _fit(runs, base, delta):
    """Best of the start grid (then, fitting all seven, of the decay grid from the best base), polished."""
    objective = loss_objective(runs, base=base, delta=delta)
    starts = _starts(base)
    with np.errstate(over="ignore", invalid="ignore"):
        batch = batched_lbfgs(objective, starts)
        best = batch.x[int(np.argmin(batch.f))]  # non-finite objectives are inf
        n_starts = len(starts)
        if base is None:
            decays = _decay_grid()
            refine = batched_lbfgs(objective, np.column_stack([np.broadcast_to(best[:5], (len(decays), 5)), decays]))
            if refine.f.min() < batch.f.min():
                best = refine.x[int(np.argmin(refine.f))]
            n_starts += len(decays)
        polished = minimize_lbfgs(lambda t: tuple(v[0] for v in objective(t[None], np.zeros(1, dtype=int))), best)
    value = lambda t: float(objective(t[None], np.zeros(1, dtype=int))[0][0])  # noqa: E731
    theta = polished.x if value(polished.x) <= value(best) else best
    _, gradient = objective(theta[None], np.zeros(1, dtype=int))
    converged = bool(polished.success) or float(np.abs(gradient).max()) <= GRADIENT_TOL
    log.info("data-constrained: %d starts, optimum %.10g", n_starts, value(theta))
    return theta, value(theta), converged, n_starts


def _bootstrap(runs, base, theta, counts, delta):
    if len(counts) == 0:
        return np.zeros((0, len(theta))), 0
    objective = loss_objective(runs, counts, base, delta)
    with np.errstate(over="ignore", invalid="ignore"):
        batch = batched_lbfgs(objective, np.repeat(theta[None], len(counts), axis=0), max_iter=2000)
    return batch.x[batch.converged], int(np.sum(~batch.converged))


def _to_params(theta, base):
    full = theta if base is None else np.concatenate([base, theta])
    a, b, e, alpha, beta, rho_d, rho_n = full
    return dict(zip(PARAM_NAMES, (np.exp(e), np.exp(a), np.exp(b), alpha, beta, np.exp(rho_d), np.exp(rho_n))))


def _flags(params, n, unique_d, unique_n):
    flags = [
        f"{name}_not_positive: {name}={params[name]:.4g} <= 0: loss does not fall with {variable}"
        for name, variable in (("alpha", "N'"), ("beta", "D'"))
        if params[name] <= 0
    ]
    u_n = unique_parameters(params, n, unique_d) if unique_n is None else np.minimum(n, unique_n)
    if not np.any(n > u_n * (1 + 1e-9)):
        flags.append(
            "R_N_star_not_determined: no run has more parameters than U_N (the compute-optimal size for its unique data), "
            "so the data say nothing about how excess parameters decay"
        )
    return flags
