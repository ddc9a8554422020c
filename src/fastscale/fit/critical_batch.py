"""The critical batch size (McCandlish et al. 2018; Kaplan et al. 2020 sec. 5.1).

Runs at several batch sizes B reach one target loss after S steps and E = B S examples (or tokens).
They trade off as (S/S_min - 1)(E/E_min - 1) = 1, i.e. S = S_min (1 + B_crit/B) with B_crit = E_min/S_min.
`fit_critical_batch` fits S_min and B_crit to such pairs; `fit_critical_batch_vs_loss` fits
B_crit(L) = B* / L^(1/alpha_B) to critical batches (or logged gradient noise scales) measured at several
losses. B and B_crit come out in the units of E/S (examples, or tokens when E counts tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastscale.fit import _lsq
from fastscale.fit._checks import as_values, enough_data, same_length
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING
from fastscale.fit.results import FitResult


@dataclass(frozen=True)
class CriticalBatchFit(FitResult):
    """params: S_min (steps), E_min (examples), B_crit = E_min/S_min. predict(B) gives the steps S(B)."""

    scales = ("S_min", "E_min", "B_crit")

    @staticmethod
    def _law(p, batch_size):
        return p["S_min"] * (1.0 + p["B_crit"] / batch_size)

    def examples(self, batch_size) -> np.ndarray:
        """E(B) = E_min (1 + B/B_crit): the examples needed at batch size B."""
        return self.params["E_min"] * (1.0 + np.asarray(batch_size, dtype=np.float64) / self.params["B_crit"])


@dataclass(frozen=True)
class CriticalBatchLossFit(FitResult):
    """params: B_star, alpha_B in B_crit(L) = B_star / L^(1/alpha_B). predict(L) gives B_crit."""

    scales = ("B_star",)

    @staticmethod
    def _law(p, loss):
        return p["B_star"] / loss ** (1.0 / p["alpha_B"])


def fit_critical_batch(
    steps, examples, *, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> CriticalBatchFit:
    """From (S, E) pairs that reach the same loss, fit S = S_min (1 + B_crit/B), B = E/S, on log S.

    Given B_crit the best log S_min is the mean residual, so only log B_crit is searched; one start at
    the geometric mean batch size suffices (the profile is unimodal in log B_crit). Needs 3 distinct
    batch sizes: one batch size cannot tell S_min from B_crit. resampling: the bootstrap scheme
    (`bootstrap.bootstrap_blocks`); the residuals ordered by batch size are tested for misspecification.
    """
    s = as_values("steps", steps, positive=True)
    e = as_values("examples", examples, positive=True)
    size = same_length(steps=s, examples=e)
    _lsq.check_bootstrap(resampling, n_bootstrap)
    enough_data("critical batch", 2, 3, **{"batch size (examples/steps)": e / s})
    log_b = np.log(e / s)

    def log_prediction(theta):
        log_s_min, log_b_crit = theta[:, :1], theta[:, 1:]
        ratio = np.exp(log_b_crit - log_b)
        return log_s_min + np.log1p(ratio), np.stack([np.ones_like(ratio), ratio / (1.0 + ratio)], axis=-1)

    log_b_crit = log_b.mean()
    start = np.array([np.mean(np.log(s) - np.log1p(np.exp(log_b_crit - log_b))), log_b_crit])
    bounds = ((None, None), (log_b.min() - 10.0, log_b.max() + 10.0))
    model = _lsq.LogModel(("log S_min", "log B_crit"), np.log(s), log_prediction, bounds, (start,))
    weights = np.ones(size)

    def to_params(theta):
        s_min, b_crit = np.exp(theta).T
        return np.column_stack([s_min, s_min * b_crit, b_crit])

    return _lsq.bootstrapped_result(
        CriticalBatchFit, "critical-batch", model, _lsq.solve(model, weights), weights, to_params, ("S_min", "E_min", "B_crit"),
        level=level, resampling=resampling, n_bootstrap=n_bootstrap, seed=seed,
        bounds={"B_crit": tuple(np.exp(bounds[1]))},  # more than e^10 outside the batch sizes tried
        residual_order=e / s,
    )


def fit_critical_batch_vs_loss(
    loss, critical_batch, *, n_bootstrap: int = DEFAULT_N_BOOTSTRAP, level: float = DEFAULT_LEVEL, seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> CriticalBatchLossFit:
    """Fit B_crit(L) = B_star / L^(1/alpha_B) (a line in log-log) to critical batches or gradient noise
    scales; the residuals ordered by loss are tested for misspecification. resampling: the bootstrap
    scheme (`bootstrap.bootstrap_blocks`)."""
    y = as_values("loss", loss, positive=True)
    b = as_values("critical_batch", critical_batch, positive=True)
    size = same_length(loss=y, critical_batch=b)
    _lsq.check_bootstrap(resampling, n_bootstrap)
    enough_data("critical batch vs loss", 2, 3, loss=y)
    center = np.log(y).mean()
    u = np.log(y) - center
    jac = np.stack([np.ones(size), -u], axis=-1)
    slope, intercept = np.polyfit(u, np.log(b), 1)
    inverse_alpha_bound = 1e-6  # B_crit does not grow as the loss falls
    bounds = ((None, None), (inverse_alpha_bound, None))

    def log_prediction(theta):
        return theta[:, :1] - theta[:, 1:] * u, np.broadcast_to(jac, (len(theta), *jac.shape))

    model = _lsq.LogModel(("k", "1/alpha_B"), np.log(b), log_prediction, bounds, (np.array([intercept, max(-slope, 1e-3)]),))
    weights = np.ones(size)

    def to_params(theta):
        k, inverse_alpha = theta.T  # log B = k - (1/alpha_B)(log L - center)
        return np.column_stack([np.exp(k + inverse_alpha * center), 1.0 / inverse_alpha])

    return _lsq.bootstrapped_result(
        CriticalBatchLossFit, "critical-batch-vs-loss", model, _lsq.solve(model, weights), weights, to_params, ("B_star", "alpha_B"),
        level=level, resampling=resampling, n_bootstrap=n_bootstrap, seed=seed,
        bounds={"alpha_B": (None, 1.0 / inverse_alpha_bound)}, residual_order=y,
    )
