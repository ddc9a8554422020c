"""The compute-efficient frontier from learning curves, against the closed form of Kaplan's L(N, S)."""

import numpy as np
import pytest

from fastscale.fit import FitInputError, compute_frontier, fit_frontier, fit_power_law
from fastscale.fit.frontier import early_rows

ALPHA_N, ALPHA_S = 0.3, 0.6


def learning_curves(noise=0.0, seed=0):
    """Curves of L = (1e4/N)^0.3 + (1e2/S)^0.6 at batch 1, C = 6 N S. Minimizing over N at fixed C gives
    N_opt proportional to C^(aS/(aN+aS)) = C^(2/3) and L(C) proportional to C^-(aN aS/(aN+aS)) = C^-0.2."""
    rng = np.random.default_rng(seed)
    run, n_params, compute, loss = [], [], [], []
    for i, n in enumerate(np.geomspace(1e4, 1e9, 21)):
        steps = np.geomspace(1, 1e8, 120)
        run += [f"run{i:02d}"] * len(steps)
        n_params += [n] * len(steps)
        compute += list(6 * n * steps)
        loss += list(((1e4 / n) ** ALPHA_N + (1e2 / steps) ** ALPHA_S) * np.exp(rng.normal(0, noise, len(steps))))
    return np.array(run), np.array(n_params), np.array(compute), np.array(loss)


def test_frontier_is_the_lower_envelope():
    run, n, c, loss = learning_curves()
    frontier = compute_frontier(run, n, c, loss, n_grid=50)
    for point, value in zip(frontier.compute[::7], frontier.loss[::7]):
        # every run that reached this compute has a loss at or above the frontier there
        for name in np.unique(run):
            rows = run == name
            if c[rows].min() <= point <= c[rows].max():
                assert np.interp(np.log(point), np.log(c[rows]), np.log(loss[rows])) >= np.log(value) - 1e-12


def test_frontier_fit_recovers_the_closed_form_exponents():
    run, n, c, loss = learning_curves()
    # Fit the middle of the compute range, where the ladder of sizes brackets N_opt (at the ends the
    # smallest and largest runs hold the frontier off the ideal curve).
    middle = (c > 1e8) & (c < 1e15)
    fit = fit_frontier(run[middle], n[middle], c[middle], loss[middle], irreducible=False, n_bootstrap=30)
    alpha_c = ALPHA_N * ALPHA_S / (ALPHA_N + ALPHA_S)
    assert fit.loss_fit.params["alpha"] == pytest.approx(alpha_c, abs=0.01)
    assert fit.allocation.params["a"] == pytest.approx(ALPHA_S / (ALPHA_N + ALPHA_S), abs=0.05)
    assert fit.max_above_frontier <= 1e-3  # on or below the frontier
    assert fit.loss_fit.intervals["alpha"][0] < fit.loss_fit.params["alpha"] < fit.loss_fit.intervals["alpha"][1]


def test_frontier_needs_three_runs():
    run, n, c, loss = learning_curves()
    two = np.isin(run, ["run00", "run01"])
    with pytest.raises(FitInputError, match="got 2 runs, expected at least 3"):
        compute_frontier(run[two], n[two], c[two], loss[two])


def test_frontier_estimates_lie_inside_their_intervals_and_below_the_frontier():
    # With an irreducible loss 1.0 added, L_inf stays <= the lowest frontier loss (the envelope
    # constraint implies it, unlike a free power law), the fit recovers it, and every interval contains
    # its estimate, the forecast's included.
    run, n, c, loss = learning_curves(noise=0.005, seed=3)
    middle = (c > 1e8) & (c < 1e15)
    fit = fit_frontier(run[middle], n[middle], c[middle], 1.0 + loss[middle], n_bootstrap=30, seed=1)
    law = fit.loss_fit
    assert law.params["L_inf"] <= fit.frontier.loss.min() * (1 + 1e-9)
    assert law.params["L_inf"] == pytest.approx(1.0, abs=5e-3)  # the envelope of 0.5%-noisy curves is off by up to that
    for name, (low, high) in law.intervals.items():
        assert low <= law.params[name] <= high, name
    forecast = law.x_for_loss(float(np.median(fit.frontier.loss)))
    assert forecast.low <= forecast.value <= forecast.high
    assert not any(flag.startswith("misspecified") for flag in law.flags)  # one-sided residuals: not tested


def test_frontier_resamples_its_runs_for_l_of_c_and_passes_the_scheme_to_n_opt():
    # L(C): the frontier's points are cut from learning curves, so its bootstrap draws whole runs
    # whatever the scheme; N_opt(C) (one point per run) takes the caller's scheme.
    run, n, c, loss = learning_curves(noise=0.005, seed=4)
    middle = (c > 1e8) & (c < 1e15)
    args = (run[middle], n[middle], c[middle], loss[middle])
    parametric = fit_frontier(*args, irreducible=False, n_bootstrap=20, seed=2)
    rows = fit_frontier(*args, irreducible=False, n_bootstrap=20, seed=2, resampling="rows")
    assert parametric.loss_fit.samples.tolist() == rows.loss_fit.samples.tolist()
    frontier = parametric.frontier
    by_run = fit_power_law(frontier.compute, frontier.loss, irreducible=False, lower_envelope=True, groups=frontier.run,
                           resampling="rows", n_bootstrap=20, seed=2)
    assert by_run.samples.tolist() == parametric.loss_fit.samples.tolist()
    assert not np.allclose(parametric.allocation.samples, rows.allocation.samples)
    with pytest.raises(FitInputError, match="resampling='runs'"):
        fit_frontier(*args, n_bootstrap=3, resampling="runs")


def test_frontier_is_monotone_where_runs_end_and_matches_a_brute_force_envelope():
    # Short runs of three sizes that end while the larger runs are still above their last loss: the
    # envelope of the curves alone jumps up there; the frontier (lowest loss with at most C) does not.
    rng = np.random.default_rng(7)
    run, n, c, loss = [], [], [], []
    for i, (size, end) in enumerate([(1e4, 1e8), (1e5, 1e10), (1e6, 1e11), (3e4, 3e8)]):
        compute = np.geomspace(1e7, end, 17)
        run += [f"r{i}"] * 17
        n += [size] * 17
        c += list(compute)
        loss += list((2.0 + (1e4 / size) ** 0.3 + (1e2 * 6 * size / compute) ** 0.6) * np.exp(rng.normal(0, 0.01, 17)))
    run, n, c, loss = np.array(run), np.array(n), np.array(c), np.array(loss)
    frontier = compute_frontier(run, n, c, loss, n_grid=41)
    assert np.all(np.diff(frontier.loss) <= 0)
    # independent: each run's log-log interpolation on the grid, the minimum over runs, then over grid points <= C
    grid = np.geomspace(c.min(), c.max(), 41)
    envelope = np.full(41, np.inf)
    for name in np.unique(run):
        rows = run == name
        inside = (grid >= c[rows].min() * (1 - 1e-12)) & (grid <= c[rows].max() * (1 + 1e-12))
        envelope[inside] = np.minimum(envelope[inside], np.exp(np.interp(np.log(grid[inside]), np.log(c[rows]), np.log(loss[rows]))))
    expected = np.array([envelope[: g + 1].min() for g in range(41)])
    assert not np.all(np.diff(envelope[np.isfinite(envelope)]) <= 0)  # the raw envelope does rise: the test can fail
    np.testing.assert_allclose(frontier.compute, grid, rtol=1e-12)
    np.testing.assert_allclose(frontier.loss, expected, rtol=1e-12)
    # each point names a run that reached that loss at or before that compute
    for g in range(41):
        rows = (run == frontier.run[g]) & (c <= grid[g] * (1 + 1e-12))
        assert rows.any() and frontier.n_params[g] == n[run == frontier.run[g]][0]


def test_early_rows_are_each_runs_first_steps_by_compute():
    run = np.array(["a"] * 10 + ["b"] * 5)
    steps = np.concatenate([np.arange(1, 11), np.arange(1, 6)]).astype(float)
    compute = steps * np.where(run == "a", 3e9, 7e10)
    early = early_rows(run, compute, 0.2)
    assert early.tolist() == (steps <= 0.2 * np.where(run == "a", 10, 5)).tolist()
    assert early.sum() == 3  # a: steps 1, 2; b: step 1
    assert not early_rows(run, compute, 0.0).any()
    with pytest.raises(FitInputError, match=r"drop_warmup=1\.5: expected a fraction"):
        early_rows(run, compute, 1.5)
