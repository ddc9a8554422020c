"""L(x) = L_inf + (x0/x)^alpha and the pure power law: closed forms, synthetic truth, published constants."""

import numpy as np
import pytest

from fastscale.fit import FitInputError, fit_power_law


def synthetic(seed, l_inf=2.0, x0=3e4, alpha=0.25, noise=0.01, n=10):
    rng = np.random.default_rng(seed)
    x = np.logspace(5, 9, n)
    return x, (l_inf + (x0 / x) ** alpha) * np.exp(rng.normal(0, noise, n))


def test_exact_data_gives_exact_parameters():
    x, y = synthetic(0, noise=0.0)
    fit = fit_power_law(x, y, n_bootstrap=0)
    assert fit.params["L_inf"] == pytest.approx(2.0, rel=1e-6)
    assert fit.params["x0"] == pytest.approx(3e4, rel=1e-5)
    assert fit.params["alpha"] == pytest.approx(0.25, rel=1e-6)
    assert np.abs(fit.residuals).max() < 1e-8
    assert fit.converged and fit.flags == ()


def test_pure_power_law_is_the_log_log_line():
    x = np.logspace(6, 10, 7)
    y = (8.8e13 / x) ** 0.076 * np.exp(np.array([0.01, -0.02, 0.0, 0.015, -0.01, 0.005, 0.0]))
    fit = fit_power_law(x, y, irreducible=False, n_bootstrap=0)
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    assert fit.params["alpha"] == pytest.approx(-slope, rel=1e-7)
    assert fit.params["alpha"] * np.log(fit.params["x0"]) == pytest.approx(intercept, rel=1e-7)
    assert fit.params["L_inf"] == 0.0
    assert "L_inf" not in fit.intervals


def test_kaplan_language_law_reproduces_its_constants(published_constants):
    # Kaplan's L(N) = (N_c/N)^alpha_N: exact points from the published constants give them back.
    law = published_constants["kaplan2020"]["L_N"]
    n = np.logspace(5, 9, 9)
    fit = fit_power_law(n, (law["N_c"] / n) ** law["alpha_N"], irreducible=False, n_bootstrap=0)
    assert fit.params["alpha"] == pytest.approx(law["alpha_N"], rel=1e-6)
    assert fit.params["x0"] == pytest.approx(law["N_c"], rel=1e-4)


def test_henighan_image_law_reproduces_its_constants(published_constants):
    law = published_constants["henighan2020_table1"]["Image 8x8"]["L_N"]
    n = np.logspace(4, 8, 9)
    fit = fit_power_law(n, law["L_inf"] + (law["N0"] / n) ** law["alpha"], n_bootstrap=0)
    assert fit.params["L_inf"] == pytest.approx(law["L_inf"], rel=1e-5)
    assert fit.params["alpha"] == pytest.approx(law["alpha"], rel=1e-4)
    assert fit.params["x0"] == pytest.approx(law["N0"], rel=1e-3)


def test_intervals_cover_the_truth_in_most_seeds():
    # Coverage at scale is benchmarks/coverage.py's (benchmarks/results/coverage.md); this is a guard
    # against gross undercoverage: of 12 seeds x 100 draws at least 9 must cover.
    covered = {"L_inf": 0, "alpha": 0}
    for seed in range(12):
        fit = fit_power_law(*synthetic(seed), n_bootstrap=100, seed=seed)
        for name, truth in (("L_inf", 2.0), ("alpha", 0.25)):
            low, high = fit.intervals[name]
            covered[name] += low <= truth <= high
    assert covered["L_inf"] >= 9 and covered["alpha"] >= 9, covered


def test_forecasts_invert_the_law():
    x, y = synthetic(1)
    fit = fit_power_law(x, y, n_bootstrap=50)
    target = fit.x_for_loss(2.05)
    assert fit.predict(target.value) == pytest.approx(2.05, rel=1e-10)
    assert target.low < target.value < target.high
    eps = fit.x_for_reducible(0.05)
    assert fit.reducible(eps.value) == pytest.approx(0.05, rel=1e-10)
    assert np.isnan(fit.x_for_loss(0.9 * fit.params["L_inf"]).value)  # below the irreducible loss
    low, high = fit.predict_interval(x)
    assert np.all(low <= fit.predict(x) + 1e-12) and np.all(fit.predict(x) <= high + 1e-12)


def test_irreducible_loss_at_its_bound_is_flagged():
    # A pure power law has no floor: the fitted L_inf runs into its lower bound 0 and must say so.
    x = np.logspace(5, 9, 8)
    y = (1e12 / x) ** 0.1
    fit = fit_power_law(x, y, n_bootstrap=0)
    assert fit.params["L_inf"] == pytest.approx(0.0, abs=1e-6)
    assert any(flag.startswith("L_inf_at_bound: the estimate is on its lower bound 0") for flag in fit.flags)


@pytest.mark.parametrize(
    "x, y, message",
    [
        ([1, 2, 3, 4], [1, 2, -3, 4], r"y: expected values > 0 \(logs are taken\), got -3.0 at index 2"),
        ([1, 0, 3, 4], [1, 2, 3, 4], r"x: expected values > 0"),
        ([1, 2, 3, 4], [1, 2, np.nan, 4], r"y: expected finite numbers, got nan at index 2"),
        ([1, 2], [3, 2], r"power law: got 2 points, expected at least 4"),
        ([1, 2, 3], [3, 2, 1, 0.5], r"one length"),
        ([[1, 2], [3, 4]], [1, 2], r"x: expected a 1-D array"),
    ],
)
def test_bad_input_names_the_argument(x, y, message):
    with pytest.raises(FitInputError, match=message):
        fit_power_law(x, y, n_bootstrap=0)


def test_bad_options_are_named():
    x, y = synthetic(0)
    with pytest.raises(FitInputError, match="n_bootstrap=-1"):
        fit_power_law(x, y, n_bootstrap=-1)
    with pytest.raises(FitInputError, match="level=1.5"):
        fit_power_law(x, y, n_bootstrap=2, level=1.5)
