"""An independent float64 fit of L = L_inf + (x0/N)^alpha (scipy, not fastscale.fit) for the studies' tests."""

import numpy as np
from scipy.optimize import least_squares


def law(n, l_inf, x0, alpha):
    return l_inf + (x0 / n) ** alpha


def independent_fit(n, y) -> np.ndarray:
    """(L_inf, x0, alpha) by float64 least squares on log y, from scipy, started at a few L_inf."""
    best = None
    for fraction in (0.0, 0.5, 0.9):
        start = [fraction * y.min(), np.log(n.min()), 0.5]  # x0 as log x0
        fit = least_squares(lambda p: np.log(law(n, p[0], np.exp(p[1]), p[2])) - np.log(y), start,
                            bounds=([0, -np.inf, 1e-8], [y.max(), np.inf, 10]), xtol=1e-15, ftol=1e-15, gtol=1e-15)
        if best is None or fit.cost < best.cost:
            best = fit
    return np.array([best.x[0], np.exp(best.x[1]), best.x[2]])
