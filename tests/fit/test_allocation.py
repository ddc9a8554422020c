"""N_opt(C) exponents against Porian et al. 2024 (all 15 setups) and Chinchilla approach 2."""

import numpy as np
import pytest
import torch

from fastscale.fit import FitInputError, fit_allocation, fit_isoflop
from fastscale.fit.bootstrap import bootstrap_blocks, resample_counts


def test_porian_exponents_from_optimal_pairs(porian):
    published, pairs, _ = porian
    assert len(published) == 15
    for setup in published:
        rows = [r for r in pairs if r["config"] == setup["config"] and r["n_star"]]
        compute = np.array([float(r["flops"]) for r in rows])
        n_star = np.array([float(r["n_star"]) for r in rows])
        std = np.array([float(r["n_star_std_log"]) for r in rows])
        fit = fit_allocation(compute, n_star, weights=1 / std**2, n_bootstrap=0)
        assert fit.params["a"] == pytest.approx(setup["a_n_exponent"], abs=0.01), setup["config"]
        # Porian write N* = n_coef C^a, i.e. n_coef = C0^-a.
        assert fit.params["C0"] ** -fit.params["a"] == pytest.approx(setup["n_coef"], rel=0.05), setup["config"]
        assert fit.converged and fit.flags == ()


def test_porian_bootstrap_interval_brackets_published_exponent(porian):
    published, pairs, _ = porian
    setup = published[0]  # "Reproducing Kaplan et al.", a = 0.835 (0.824, 0.846)
    rows = [r for r in pairs if r["config"] == setup["config"] and r["n_star"]]
    compute = np.array([float(r["flops"]) for r in rows])
    n_star = np.array([float(r["n_star"]) for r in rows])
    std = np.array([float(r["n_star_std_log"]) for r in rows])
    fit = fit_allocation(compute, n_star, weights=1 / std**2, n_bootstrap=300, seed=0)
    low, high = fit.intervals["a"]
    assert low < setup["a_n_exponent"] < high
    assert high - low < 0.1


def test_porian_exponents_from_isoflop_profiles(porian):
    # Approach 2 from the raw IsoFLOP points: the authors interpolate (Akima) with seed-noise bootstrap;
    # a local parabola through the 5 sizes around each minimum agrees to 0.03 (measured max 0.029).
    published, _, points = porian
    for setup in published:
        rows = [r for r in points if r["config"] == setup["config"]]
        minima = fit_isoflop(
            [float(r["n"]) for r in rows], [float(r["flops"]) for r in rows], [float(r["loss"]) for r in rows], n_bootstrap=0
        )
        assert minima.allocation.params["a"] == pytest.approx(setup["a_n_exponent"], abs=0.03), setup["config"]


def test_isoflop_recovers_synthetic_chinchilla_allocation():
    # L = E + A/N^alpha + B/D^beta on IsoFLOP profiles: the vertices follow N_opt = G (C/6)^(beta/(alpha+beta)).
    alpha, beta, big_a, big_b = 0.34, 0.28, 406.4, 410.7
    budgets = np.logspace(18, 22, 9)
    n, c = [], []
    for budget in budgets:
        g = (alpha * big_a / (beta * big_b)) ** (1 / (alpha + beta))
        center = g * (budget / 6) ** (beta / (alpha + beta))
        sizes = center * np.exp(np.linspace(-1.2, 1.2, 9))
        n.extend(sizes), c.extend([budget] * len(sizes))
    n, c = np.array(n), np.array(c)
    loss = 1.69 + big_a / n**alpha + big_b / (c / (6 * n)) ** beta
    minima = fit_isoflop(n, c, loss, window=1, n_bootstrap=0)
    assert minima.allocation.params["a"] == pytest.approx(beta / (alpha + beta), abs=0.005)
    assert minima.skipped == {}


def test_isoflop_skips_budgets_with_edge_minima():
    n = np.array([1e6, 2e6, 4e6] * 4)
    c = np.repeat([1e17, 2e17, 4e17, 8e17], 3)
    # the first budget's minimum is at its edge
    loss = np.array([3.0, 2.9, 2.8, 3.0, 2.8, 2.9, 3.1, 2.9, 3.0, 3.0, 2.7, 2.75])
    minima = fit_isoflop(n, c, loss, n_bootstrap=0)
    assert list(minima.skipped) == [1e17] and "edge" in minima.skipped[1e17]
    assert list(minima.compute) == [2e17, 4e17, 8e17]
    loss[3:6] = [2.8, 2.9, 3.0]
    with pytest.raises(FitInputError, match="2 budgets with an interior loss minimum, expected at least 3"):
        fit_isoflop(n, c, loss, n_bootstrap=0)


def test_isoflop_skips_a_budget_whose_parabola_has_its_minimum_beyond_the_sizes():
    # lowest loss at the 4th of 5 sizes, but the flat least-squares parabola through sizes 2-5 has its
    # vertex at 2.1e8, 13 times the largest size (np.polyfit): an extrapolation, not a measurement
    sizes = np.array([1e6, 2e6, 4e6, 8e6, 1.6e7])
    n, c = np.tile(sizes, 4), np.repeat([1e17, 2e17, 4e17, 8e17], 5)
    profile = 2.0 + 0.02 * np.log(sizes / 4e6) ** 2
    loss = np.concatenate([[2.004, 2.004, 2.007, 1.988, 1.993], profile, profile, profile])
    minima = fit_isoflop(n, c, loss, n_bootstrap=0)
    assert list(minima.skipped) == [1e17] and "minimum N = 2.08e+08 lies beyond the sizes tried (1e+06 to 1.6e+07)" in minima.skipped[1e17]
    assert minima.n_opt == pytest.approx([4e6] * 3, rel=1e-9)


def test_recovers_allocation_exponent_and_interval_covers_truth():
    # One seed; coverage over many seeds is what benchmarks/coverage.py measures for the other laws.
    rng = np.random.default_rng(7)
    compute = np.logspace(17, 21, 12)
    n_opt = (compute / 1e-3) ** 0.55 * np.exp(rng.normal(0, 0.05, 12))
    fit = fit_allocation(compute, n_opt, n_bootstrap=300, seed=2)
    assert fit.params["a"] == pytest.approx(0.55, abs=0.02)
    assert fit.intervals["a"][0] < 0.55 < fit.intervals["a"][1]
    assert np.allclose(fit.tokens(compute), compute / (6 * fit.predict(compute)))


def test_allocation_bad_input():
    with pytest.raises(FitInputError, match="weights.*> 0"):
        fit_allocation([1e17, 1e18, 1e19], [1e6, 1e7, 1e8], weights=[1, 0, 1])
    with pytest.raises(FitInputError, match="allocation: got 2 points"):
        fit_allocation([1e17, 1e18], [1e6, 1e7])


def test_compute_for_inverts_the_allocation_on_every_draw(rng):
    compute = np.geomspace(1e15, 1e20, 12)
    n_opt = (compute / 3e3) ** 0.5 * np.exp(rng.normal(0, 0.05, compute.size))
    fit = fit_allocation(compute, n_opt, n_bootstrap=200, seed=int(rng.integers(1000)))
    target = 2e8
    estimate = fit.compute_for(target)
    assert fit.predict(estimate.value) == pytest.approx(target, rel=1e-12)  # N_opt at that compute is the target
    draws = np.array([c0 * target ** (1 / a) for a, c0 in fit.samples])
    assert (estimate.low, estimate.high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])), rel=1e-9)
    with pytest.raises(FitInputError, match="n_opt=-1"):
        fit.compute_for(-1)


def test_a_bent_allocation_is_flagged_misspecified_and_a_straight_one_is_not():
    # N_opt(C) whose exponent drifts from 0.45 to 0.65 over four decades (a bend a single line
    # cannot follow), 2% noise on 30 budgets; the same budgets on a straight line are not flagged.
    rng = np.random.default_rng(11)
    compute = np.logspace(17, 21, 30)
    u = np.log(compute / 1e19)
    bent = np.exp(18 + 0.55 * u + 0.025 * u**2 + rng.normal(0, 0.02, 30))
    straight = np.exp(18 + 0.55 * u + rng.normal(0, 0.02, 30))
    assert any(f.startswith("misspecified: ") for f in fit_allocation(compute, bent, n_bootstrap=0).flags)
    assert fit_allocation(compute, straight, n_bootstrap=0).flags == ()


def chinchilla_profiles(rng, noise):
    """5 budgets x 9 sizes of Chinchilla's fitted law (Hoffmann et al. 2022, eq. 10: E = 1.69, A = 406.4,
    B = 410.7, alpha = 0.34, beta = 0.28), lognormal noise; each budget's minimum lies inside its sizes."""
    n_grid = np.geomspace(1e7, 1e10, 9)
    n, c, loss = [], [], []
    for budget in np.logspace(18, 21.5, 5):
        d = budget / (6 * n_grid)
        n += list(n_grid)
        c += [budget] * 9
        loss += list((1.69 + 406.4 / n_grid**0.34 + 410.7 / d**0.28) * np.exp(rng.normal(0, noise, 9)))
    return np.array(n), np.array(c), np.array(loss)


def windows(n, c, loss):
    """Each budget's rows by ascending N, cut to the lowest loss and 2 sizes each side (fit_isoflop's default)."""
    out = []
    for budget in np.unique(c):
        rows = np.flatnonzero(c == budget)
        rows = rows[np.argsort(n[rows])]
        lowest = int(np.argmin(loss[rows]))
        out.append(rows[max(0, lowest - 2) : lowest + 3])
    return out


def test_isoflop_parametric_draws_are_both_stages_refitted_by_numpy():
    # The parametric draws, rebuilt with numpy: new losses for the windows' rows (bootstrap_blocks, noise
    # pooled over budgets with 3 parameters per parabola), np.polyfit's parabola and vertex per budget,
    # np.polyfit's line through each draw's vertices (a vertex beyond the sizes tried is none: left out).
    n, c, loss = chinchilla_profiles(np.random.default_rng(torch.initial_seed()), 0.003)
    fit = fit_isoflop(n, c, loss, n_bootstrap=40, seed=3)
    assert fit.skipped == {}
    rows = windows(n, c, loss)
    fitted = np.concatenate([np.polyval(np.polyfit(np.log(n[r]), loss[r], 2), np.log(n[r])) for r in rows])
    everything = np.concatenate(rows)
    (block,) = bootstrap_blocks("parametric", log_y=loss[everything], log_pred=fitted, weights=np.ones(len(everything)),
                                n_params=3 * len(rows), n_bootstrap=40, seed=3)
    vertices = np.empty((40, len(rows)))
    start = 0
    for b, r in enumerate(rows):
        for i in range(40):
            c2, c1, c0 = np.polyfit(np.log(n[r]), block.log_y[i, start : start + len(r)], 2)
            inside = c2 > 0 and np.log(1e7) <= -c1 / (2 * c2) <= np.log(1e10)
            vertices[i, b] = -c1 / (2 * c2) if inside else np.nan
            expected = [np.exp(vertices[i, b]), c0 - c1**2 / (4 * c2) if inside else np.nan, c2]
            np.testing.assert_allclose(fit.parabolas[b].samples[i], expected, rtol=1e-8)
        start += len(r)
    budgets = np.unique(c)
    lines = np.array([np.polyfit(np.log(budgets)[np.isfinite(v)], v[np.isfinite(v)], 1) for v in vertices])
    np.testing.assert_allclose(fit.allocation.samples, np.column_stack([lines[:, 0], np.exp(-lines[:, 1] / lines[:, 0])]), rtol=1e-8)
    assert all(len(p.intervals) == 3 and p.intervals["N_opt"][0] <= p.params["N_opt"] <= p.intervals["N_opt"][1] for p in fit.parabolas)


def test_isoflop_rows_resamples_whole_budgets():
    # "rows": the counts of a bootstrap of the 5 budgets; each draw's line is the least-squares line through
    # the drawn budgets' own vertices, weighted by their counts; a budget's vertex gets no interval (flagged).
    n, c, loss = chinchilla_profiles(np.random.default_rng(torch.initial_seed()), 0.002)
    parametric = fit_isoflop(n, c, loss, n_bootstrap=30, seed=1)
    rows = fit_isoflop(n, c, loss, n_bootstrap=30, seed=1, resampling="rows")
    assert rows.allocation.params == parametric.allocation.params and rows.n_opt.tolist() == parametric.n_opt.tolist()
    counts = resample_counts(5, 30, 1)
    x, v = np.log(rows.compute), np.log(rows.n_opt)
    for draw, count in zip(rows.allocation.samples, counts):
        if np.count_nonzero(count) < 2:  # one budget drawn 5 times: no line
            assert np.isnan(draw).all()
            continue
        slope, intercept = np.polyfit(x, v, 1, w=np.sqrt(count))
        np.testing.assert_allclose(draw, [slope, np.exp(-intercept / slope)], rtol=1e-8)
    assert all(p.intervals == {} and p.flags[0].startswith("no_interval: ") for p in rows.parabolas)
    with pytest.raises(FitInputError, match="resampling='budgets'"):
        fit_isoflop(n, c, loss, n_bootstrap=3, resampling="budgets")
