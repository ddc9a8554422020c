"""L(x) = L_inf + (x0/x)^alpha (Henighan et al. 2020) and the pure power law L = (x0/x)^alpha
(Kaplan et al. 2020, L_inf = 0), for x = N (non-embedding parameters), D (tokens), C (FLOPs or
PF-days: x0 comes out in the units of x) or steps.

Reading: L_inf estimates the irreducible loss (the entropy of the data) and (x0/x)^alpha the reducible
loss (the KL divergence between data and model), both in the units of the loss (nats per token;
multiply by tokens per item for nats per image or document, see `units.per_item`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastscale.fit import _lsq
from fastscale.fit._checks import FitInputError, as_values, enough_data, same_length
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING
from fastscale.fit.results import Estimate, FitResult

MAX_ALPHA = 10.0
L_INF_START_FRACTIONS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.97)


@dataclass(frozen=True)
class PowerLawFit(FitResult):
    """params: L_inf (0 for the pure law), x0, alpha."""

    scales = ("x0",)

    @staticmethod
    def _law(p, x):
        return p["L_inf"] + (p["x0"] / x) ** p["alpha"]

    def reducible(self, x) -> np.ndarray:
        """The reducible loss (x0/x)^alpha at x."""
        return (self.params["x0"] / np.asarray(x, dtype=np.float64)) ** self.params["alpha"]

    def x_for_loss(self, loss: float) -> Estimate:
        """Which x (N, C, ...) reaches this loss; nan where a draw's L_inf is at or above the target."""
        return self.estimate(lambda p: _solve_x(p, loss - p["L_inf"]))

    def x_for_reducible(self, reducible: float) -> Estimate:
        """Which x brings the reducible loss down to epsilon = `reducible`."""
        if not reducible > 0:
            raise FitInputError(f"reducible={reducible!r}: expected a reducible loss > 0")
        return self.estimate(lambda p: _solve_x(p, reducible))


def _solve_x(p, target):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(target > 0, p["x0"] * np.abs(target) ** (-1.0 / p["alpha"]), np.nan)


def fit_power_law(
    x,
    y,
    *,
    irreducible: bool = True,
    weights=None,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    groups=None,
    lower_envelope: bool = False,
    resampling: str = DEFAULT_RESAMPLING,
) -> PowerLawFit:
    """Fit y = L_inf + (x0/x)^alpha by least squares on log y (L_inf = 0 when irreducible=False).

    weights: per-point weights (e.g. 1/variance of log y). resampling: the bootstrap scheme
    (`bootstrap.bootstrap_blocks`: "parametric" draws fresh lognormal noise around the fitted law, "rows"
    resamples the points); groups: labels of rows resampled together (resampling="rows" only).
    lower_envelope: constrain the law to lie on or below every point (how L(C) is fitted to the compute
    frontier). Bounds: 0 <= L_inf <= max(y), 0 < alpha <= 10; a parameter ending on a bound is flagged.
    Needs 4 distinct x (3 for the pure law).

    L_inf is not bounded by min(y): with noise, the lowest points fall below the asymptote, and a bound
    at min(y) pinned the estimate there (1e6 rows with true L_inf 2 gave 1.906 = min(y) and alpha 0.33
    for 0.5). The residual log y - log(L_inf + (x0/x)^alpha) is defined for every positive y whatever
    L_inf is, so points below the fitted asymptote are ordinary noise. Only the lower envelope keeps
    L_inf <= min(y), which its constraint implies anyway. The residuals ordered by x, times sqrt(weight),
    are tested for structure the law cannot capture (results.misspecification_flags).
    """
    x, y = as_values("x", x, positive=True), as_values("y", y, positive=True)
    n = same_length(x=x, y=y)
    _lsq.check_bootstrap(resampling, n_bootstrap, groups)
    n_params = 3 if irreducible else 2
    enough_data("power law" if irreducible else "pure power law", n_params, n_params + 1, x=x)
    w = np.ones(n) if weights is None else as_values("weights", weights, positive=True)
    same_length(x=x, weights=w)
    center = np.log(x).mean()
    model, solution = _lsq.screened_solve(lambda rows: _model(x[rows], y[rows], irreducible, lower_envelope, w[rows], center),
                                          w, x)
    return _lsq.bootstrapped_result(
        PowerLawFit,
        "power" if irreducible else "pure power",
        model,
        solution,
        w,
        lambda theta: _to_params(theta, irreducible, center),
        ("L_inf", "x0", "alpha"),
        level=level,
        resampling=resampling,
        n_bootstrap=n_bootstrap,
        seed=seed,
        groups=groups,
        bounds={"L_inf": model.bounds[0], "alpha": model.bounds[-1]} if irreducible else {"alpha": model.bounds[-1]},
        fixed=() if irreducible else ("L_inf",),
        residual_order=None if lower_envelope else x,
        residual_weights=w,
    )


def _model(x, y, irreducible, lower_envelope, w, center) -> _lsq.LogModel:
    """Centered parametrization: power = exp(k - alpha*u), u = log x - center (the mean of log x over all
    the points), so k and alpha are nearly uncorrelated and L-BFGS converges in a few dozen steps.
    Starts: lines through log(y - L_inf) for a few L_inf below min(y), on every k-th row, at most
    SCREEN_ROWS of them (a start need not be exact, and on 1e6 rows six line fits on every row cost a
    third of the fit)."""
    u = np.log(x) - center
    spread = slice(None, None, max(1, len(x) // _lsq.SCREEN_ROWS))
    log_y = np.log(y)
    if irreducible:

        def log_prediction(theta):
            l_inf, k, alpha = (theta[:, j, None] for j in range(3))
            power = np.exp(k - alpha * u)
            pred = l_inf + power
            return np.log(pred), np.stack([1.0 / pred, power / pred, -u * power / pred], axis=-1)

        starts = tuple(_start(u[spread], y[spread], f * y.min(), w[spread]) for f in L_INF_START_FRACTIONS)
        bounds = ((0.0, float(y.min() if lower_envelope else y.max())), (None, None), (1e-8, MAX_ALPHA))
        names = ("L_inf", "k", "alpha")
    else:

        jacobian = np.stack([np.ones_like(u), -u], axis=-1)

        def log_prediction(theta):
            return theta[:, :1] - theta[:, 1:] * u, np.broadcast_to(jacobian, (len(theta), *jacobian.shape))

        starts = (_start(u[spread], y[spread], 0.0, w[spread])[1:],)
        bounds = ((None, None), (1e-8, MAX_ALPHA))
        names = ("k", "alpha")
    return _lsq.LogModel(names, log_y, log_prediction, bounds, starts, below=lower_envelope)


def _start(u, y, l_inf, w):
    """Weighted straight line through log(y - L_inf) against u."""
    slope, intercept = np.polyfit(u, np.log(y - l_inf), 1, w=np.sqrt(w))
    return np.array([l_inf, intercept, float(np.clip(-slope, 1e-3, MAX_ALPHA))])


def _to_params(theta, irreducible, center) -> np.ndarray:
    """[R, 3] rows (L_inf, x0, alpha) from [R, P] internal thetas."""
    l_inf, k, alpha = theta.T if irreducible else (np.zeros(len(theta)), *theta.T)
    with np.errstate(over="ignore"):  # x0 out of double range is flagged by fit_result
        return np.column_stack([l_inf, np.exp(center + k / alpha), alpha])
