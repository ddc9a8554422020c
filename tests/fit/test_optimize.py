"""The batched L-BFGS of fit._optimize against closed forms and scipy, on synthetic problems (no data files)."""

import numpy as np
import pytest
from scipy.optimize import minimize

from fastscale.fit._optimize import batched_lbfgs


def test_every_start_reaches_its_own_weighted_least_squares_solution():
    # Start s solves its own problem (weights row s, as a bootstrap refit does): each optimum is the
    # closed-form weighted least-squares solution, computed independently by numpy's lstsq.
    rng = np.random.default_rng(11)
    design = np.column_stack([np.ones(37), rng.normal(size=37), rng.normal(size=37) ** 2])
    target = design @ np.array([0.5, -1.25, 2.0]) + rng.normal(0, 0.3, 37)
    weights = rng.integers(0, 4, (9, 37)).astype(np.float64)

    def objective(theta, rows):
        r = theta @ design.T - target
        w = weights[rows]
        return 0.5 * np.sum(w * r * r, axis=1), (w * r) @ design

    result = batched_lbfgs(objective, rng.normal(0, 3, (9, 3)), ftol=1e-15, gtol=1e-10)
    root_w = np.sqrt(weights)
    expected = np.array([np.linalg.lstsq(design * root_w[s, :, None], target * root_w[s], rcond=None)[0] for s in range(9)])
    assert result.converged.all()
    np.testing.assert_allclose(result.x, expected, rtol=1e-6, atol=1e-7)


def test_rosenbrock_valley_is_followed_to_its_minimum_from_every_start():
    # A curved narrow valley, the case where a careless line search or curvature update stalls.
    def objective(theta, rows):
        x, y = theta[:, 0], theta[:, 1]
        value = (1 - x) ** 2 + 100 * (y - x * x) ** 2
        gradient = np.column_stack([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])
        return value, gradient

    starts = np.random.default_rng(3).uniform(-2, 2, (25, 2))
    result = batched_lbfgs(objective, starts, max_iter=2000, ftol=1e-16, gtol=1e-10)
    assert result.converged.all()
    np.testing.assert_allclose(result.x, 1.0, atol=1e-5)


def test_batched_and_scipy_runs_agree_on_a_chinchilla_law_fit():
    # Synthetic losses from Hoffmann et al.'s approach-3 constants, a log-space least-squares objective
    # written here from the law, and the same 30 starts for both optimizers: the best optimum of each
    # run is the same point (the surface has several basins, so start by start they may differ).
    rng = np.random.default_rng(7)
    log_n, log_d = rng.uniform(np.log(7e7), np.log(1.6e10), 120), rng.uniform(np.log(5e9), np.log(5e11), 120)
    truth = np.array([np.log(406.4), np.log(410.7), np.log(1.69), 0.34, 0.28])
    log_loss = _log_law(truth[None], log_n, log_d)[0] + rng.normal(0, 0.01, 120)

    def objective(theta, rows):
        log_pred, jacobian = _log_law(theta, log_n, log_d, gradient=True)
        r = log_pred - log_loss
        return 0.5 * np.mean(r * r, axis=1), np.einsum("sn,snp->sp", r, jacobian) / len(r)

    starts = np.column_stack([rng.uniform(0, 10, 30), rng.uniform(0, 10, 30), rng.uniform(-1, 1, 30), rng.uniform(0.1, 1, 30), rng.uniform(0.1, 1, 30)])
    with np.errstate(over="ignore", invalid="ignore"):
        batch = batched_lbfgs(objective, starts, max_iter=3000, ftol=1e-15, gtol=1e-12)
        loop = [minimize(lambda t: tuple(v[0] for v in objective(t[None], None)), s, jac=True, method="L-BFGS-B",
                         options={"maxiter": 15000, "ftol": 1e-15, "gtol": 1e-12}) for s in starts]
    best_loop = min(loop, key=lambda r: r.fun if np.isfinite(r.fun) else np.inf)
    best_batch = int(np.nanargmin(batch.f))
    assert batch.f[best_batch] == pytest.approx(best_loop.fun, rel=1e-6)
    np.testing.assert_allclose(batch.x[best_batch], best_loop.x, rtol=2e-3, atol=2e-3)
    # and both found the law the data came from (1% noise on 120 points: exponents to ~0.03)
    np.testing.assert_allclose(batch.x[best_batch][3:], truth[3:], atol=0.05)


def _log_law(theta, log_n, log_d, gradient=False):
    """log(exp(e) + exp(a - alpha log N) + exp(b - beta log D)) for every row of theta, and its jacobian."""
    a, b, e, alpha, beta = (theta[:, j, None] for j in range(5))
    terms = np.stack([np.broadcast_to(e, (len(theta), len(log_n))), a - alpha * log_n, b - beta * log_d])
    top = terms.max(axis=0)
    share = np.exp(terms - top)
    total = share.sum(axis=0)
    log_pred = top + np.log(total)
    if not gradient:
        return log_pred
    p_e, p_n, p_d = share / total
    return log_pred, np.stack([p_n, p_d, p_e, -p_n * log_n, -p_d * log_d], axis=2)
