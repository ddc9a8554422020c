"""Kaplan et al. 2020's two-variable laws and the batch-size corrections they rest on.

L(N, D) = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D                      (eq. 1.5)
L(N, S_min) = (Nc/N)^alpha_N + (Sc/S_min)^alpha_S                          (eq. 1.6)
S_min = S / (1 + B_crit(L)/B),  C_min = C / (1 + B/B_crit(L)),  B_crit(L) = B* / L^(1/alpha_B)   (eqs. 5.4, 1.4)
N is non-embedding parameters, D and B in tokens, S in optimizer steps, L in nats per token.
Both laws are fitted by least squares on log L with scipy L-BFGS-B from a small grid of exponents; the
bootstrap draws (`resampling`, see `bootstrap.bootstrap_blocks`) are refitted all at once (`_lsq.refit`).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from fastscale.fit import _lsq
from fastscale.fit._checks import as_values, enough_data, same_length
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING
from fastscale.fit.results import FitResult

EXPONENT_BOUNDS = (1e-4, 5.0)
START_EXPONENTS = (0.05, 0.1, 0.3, 0.7)


@dataclass(frozen=True)
class KaplanNDFit(FitResult):
    """params: Nc, Dc (in the units of N and D), alpha_N, alpha_D."""

    scales = ("Nc", "Dc")

    @staticmethod
    def _law(p, n, d):
        return ((p["Nc"] / n) ** (p["alpha_N"] / p["alpha_D"]) + p["Dc"] / d) ** p["alpha_D"]


@dataclass(frozen=True)
class KaplanNSFit(FitResult):
    """params: Nc, Sc (steps), alpha_N, alpha_S."""

    scales = ("Nc", "Sc")

    @staticmethod
    def _law(p, n, s_min):
        return (p["Nc"] / n) ** p["alpha_N"] + (p["Sc"] / s_min) ** p["alpha_S"]


def minimum_steps(steps, batch_size, critical_batch):
    """S_min = S / (1 + B_crit/B): the steps the run would need at a batch far above B_crit."""
    return np.asarray(steps, dtype=np.float64) / (1.0 + np.asarray(critical_batch, dtype=np.float64) / np.asarray(batch_size, dtype=np.float64))


def minimum_compute(compute, batch_size, critical_batch):
    """C_min = C / (1 + B/B_crit): the compute the run would need at a batch far below B_crit."""
    return np.asarray(compute, dtype=np.float64) / (1.0 + np.asarray(batch_size, dtype=np.float64) / np.asarray(critical_batch, dtype=np.float64))


def critical_batch_from_loss(loss, b_star, alpha_b):
    """B_crit(L) = B* / L^(1/alpha_B) (Kaplan eq. 1.4: B* = 2e8 tokens, alpha_B = 0.21 for WebText2)."""
    return b_star / np.asarray(loss, dtype=np.float64) ** (1.0 / alpha_b)


def fit_kaplan_nd(
    n_params, n_tokens, loss, *, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> KaplanNDFit:
    """Fit L(N, D) = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D to final (early-stopped) losses.
    resampling: the bootstrap scheme (`bootstrap.bootstrap_blocks`)."""
    n, (mn, md), (vn, vd), log_y = _centred_logs("kaplan-nd", resampling, n_bootstrap, n_params=n_params, n_tokens=n_tokens, loss=loss)

    def to_params(theta):
        k_n, k_d, alpha_n, alpha_d = theta.T
        with np.errstate(over="ignore"):  # Nc out of double range is flagged by fit_result
            return np.column_stack([np.exp(mn + k_n * alpha_d / alpha_n), np.exp(md + k_d), alpha_n, alpha_d])

    names = ("Nc", "Dc", "alpha_N", "alpha_D")
    build = functools.partial(_nd_model, vn, vd, log_y)
    return _finish(KaplanNDFit, "kaplan-nd", names, build, to_params, n, n_bootstrap, level, seed, resampling)


def fit_kaplan_ns(
    n_params, min_steps, loss, *, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> KaplanNSFit:
    """Fit L(N, S_min) = (Nc/N)^alpha_N + (Sc/S_min)^alpha_S (learning-curve points, S_min from `minimum_steps`).
    resampling: the bootstrap scheme (`bootstrap.bootstrap_blocks`)."""
    n, (mn, ms), (vn, vs), log_y = _centred_logs("kaplan-ns", resampling, n_bootstrap, n_params=n_params, min_steps=min_steps, loss=loss)

    def to_params(theta):
        k_n, k_s, alpha_n, alpha_s = theta.T
        with np.errstate(over="ignore"):  # Nc out of double range is flagged by fit_result
            return np.column_stack([np.exp(mn + k_n / alpha_n), np.exp(ms + k_s / alpha_s), alpha_n, alpha_s])

    names = ("Nc", "Sc", "alpha_N", "alpha_S")
    build = functools.partial(_ns_model, vn, vs, log_y)
    return _finish(KaplanNSFit, "kaplan-ns", names, build, to_params, n, n_bootstrap, level, seed, resampling)


def _centred_logs(law: str, resampling: str, n_bootstrap, **columns) -> tuple:
    """(N, the means of log N and log x, log N and log x less their means, log loss) of the columns N, x
    and the loss, checked: positive, of one length, with enough distinct (N, x) for the law's 4
    parameters, and the bootstrap's options too. Centred logs make the exponents nearly uncorrelated
    with the scales, so L-BFGS converges quickly."""
    values = {name: as_values(name, column, positive=True) for name, column in columns.items()}
    same_length(**values)
    _lsq.check_bootstrap(resampling, n_bootstrap)
    enough_data(law, 4, 3, **dict(list(values.items())[:2]))
    n, x, loss = values.values()
    means = np.log(n).mean(), np.log(x).mean()
    return n, means, (np.log(n) - means[0], np.log(x) - means[1]), np.log(loss)


def _nd_model(vn, vd, log_y, rows) -> _lsq.LogModel:
    """L(N, D) on some rows, log N and log D centred over all the data (vn, vd)."""
    vn, vd, log_y = vn[rows], vd[rows], log_y[rows]

    def log_prediction(theta):
        # theta = (k_N, k_D, alpha_N, alpha_D): the log of each bracketed term at the centre of the data,
        # so the exponents are nearly uncorrelated with the scales and L-BFGS converges quickly.
        k_n, k_d, alpha_n, alpha_d = (theta[:, j, None] for j in range(4))
        ratio = alpha_n / alpha_d
        t_n, t_d = k_n - ratio * vn, k_d - vd
        top = np.maximum(t_n, t_d)
        lse = top + np.log(np.exp(t_n - top) + np.exp(t_d - top))
        w_n = np.exp(t_n - lse)
        jac = np.stack([alpha_d * w_n, alpha_d * (1.0 - w_n), -w_n * vn, lse + w_n * ratio * vn], axis=-1)
        return alpha_d * lse, jac

    half = np.log(np.exp(log_y.mean()) / 2)
    grid = itertools.product(START_EXPONENTS, START_EXPONENTS)
    starts = tuple(np.array([half / a_d, half / a_d, a_n, a_d]) for a_n, a_d in grid)
    bounds = ((None, None), (None, None), EXPONENT_BOUNDS, EXPONENT_BOUNDS)
    return _lsq.LogModel(("k_N", "k_D", "alpha_N", "alpha_D"), log_y, log_prediction, bounds, starts)


def _ns_model(vn, vs, log_y, rows) -> _lsq.LogModel:
    """L(N, S_min) on some rows, log N and log S_min centred over all the data (vn, vs)."""
    vn, vs, log_y = vn[rows], vs[rows], log_y[rows]

    def log_prediction(theta):
        k_n, k_s, alpha_n, alpha_s = (theta[:, j, None] for j in range(4))  # logs of the two terms at the centre of the data
        t_n, t_s = k_n - alpha_n * vn, k_s - alpha_s * vs
        top = np.maximum(t_n, t_s)
        lse = top + np.log(np.exp(t_n - top) + np.exp(t_s - top))
        w_n = np.exp(t_n - lse)
        return lse, np.stack([w_n, 1.0 - w_n, -w_n * vn, -(1.0 - w_n) * vs], axis=-1)

    half = np.log(np.exp(log_y.mean()) / 2)
    starts = tuple(np.array([half, half, a_n, a_s]) for a_n, a_s in itertools.product(START_EXPONENTS, START_EXPONENTS))
    bounds = ((None, None), (None, None), EXPONENT_BOUNDS, EXPONENT_BOUNDS)
    return _lsq.LogModel(("k_N", "k_S", "alpha_N", "alpha_S"), log_y, log_prediction, bounds, starts)


def _finish(cls, law, names, build, to_params, n, n_bootstrap, level, seed, resampling):
    """Solve (starts screened on large data along N, `_lsq.screened_solve`), bootstrap and package a two-variable law."""
    weights = np.ones(len(n))
    model, solution = _lsq.screened_solve(build, weights, n)
    exponents = [name for name in names if name.startswith("alpha")]
    return _lsq.bootstrapped_result(cls, law, model, solution, weights, to_params, names, level=level, resampling=resampling,
                                    n_bootstrap=n_bootstrap, seed=seed, bounds=dict.fromkeys(exponents, EXPONENT_BOUNDS))


def compute_efficient_exponents(alpha_n: float, alpha_s: float, alpha_b: float) -> dict:
    """Kaplan et al. appendix B: training compute-efficiently on L(N, S_min) with B = B_crit(L),
    L(C_min) falls as C_min^-alpha_C_min with alpha_C_min = 1/(1/alpha_S + 1/alpha_B + 1/alpha_N), and
    N, B and S_min grow as C_min to the powers alpha_C_min/alpha_N, /alpha_B and /alpha_S."""
    alpha_c = 1.0 / (1.0 / alpha_s + 1.0 / alpha_b + 1.0 / alpha_n)
    return {"alpha_C_min": alpha_c, "N": alpha_c / alpha_n, "B": alpha_c / alpha_b, "S_min": alpha_c / alpha_s}
