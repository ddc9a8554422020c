"""Fits refuse data that cannot determine them (distinct values, not rows) and flag parameters the
data leave undetermined: on a bound, spread over many decades, overflowed draws, zero-width intervals."""

import re

import numpy as np
import pytest

from fastscale.fit import (
    FitInputError,
    _checks,
    fit_allocation,
    fit_chinchilla,
    fit_critical_batch,
    fit_critical_batch_vs_loss,
    fit_isoflop,
    fit_kaplan_nd,
    fit_power_law,
)
from fastscale.fit.results import NOT_DETERMINED_DECADES


def flag(fit, kind):
    """The one flag of this kind (e.g. 'x0_not_determined'), or None."""
    found = [f for f in fit.flags if f.startswith(kind + ":")]
    assert len(found) <= 1, fit.flags
    return found[0] if found else None


def test_power_law_on_rows_that_all_share_one_x_is_refused():
    # The reproduction: 7 rows at one N returned x0 = inf with no flag.
    rng = np.random.default_rng(0)
    x, y = np.full(7, 1e6), 2.5 + rng.uniform(0, 0.05, 7)
    with pytest.raises(FitInputError) as error:
        fit_power_law(x, y, n_bootstrap=10)
    assert str(error.value) == "x has 1 distinct value (7 rows: 1e+06); power law needs >= 4 distinct values of x to determine how it depends on x"
    assert error.value.argument == "x"


def test_power_law_counts_distinct_x_not_rows():
    rng = np.random.default_rng(1)
    x = np.repeat([1e5, 1e6, 1e7], 3)  # 9 rows, 3 sizes: three numbers cannot fix L_inf, x0, alpha and check them
    y = (2 + (3e4 / x) ** 0.25) * np.exp(rng.normal(0, 0.01, 9))
    with pytest.raises(FitInputError, match=r"^x has 3 distinct values \(9 rows: 100000, 1e\+06, 1e\+07\); power law needs >= 4"):
        fit_power_law(x, y, n_bootstrap=0)
    fit = fit_power_law(x, y, irreducible=False, n_bootstrap=0)  # the pure law has 2 parameters: 3 sizes suffice
    assert fit.n_points == 9


@pytest.mark.parametrize("fit_function", [fit_chinchilla, fit_kaplan_nd])
def test_two_variable_laws_refuse_one_model_size(fit_function):
    rng = np.random.default_rng(2)
    n, d = np.full(7, 1e8), np.geomspace(1e9, 1e11, 7)
    loss = 2 + 400 / n**0.34 + 400 / d**0.28 + rng.normal(0, 0.01, 7)
    with pytest.raises(FitInputError) as error:
        fit_function(n, d, loss, n_bootstrap=0)
    law = fit_function.__name__.removeprefix("fit_").replace("_", "-")
    assert str(error.value) == (
        f"n_params has 1 distinct value (7 rows: 1e+08); {law} needs >= 3 distinct values of n_params to determine how it depends on n_params"
    )
    assert error.value.argument == "n_params"


def test_chinchilla_counts_distinct_points():
    # 3 sizes and 3 token counts, but only 5 distinct (N, D) pairs among 10 rows: 5 parameters need 6.
    n = np.array([1e7, 1e8, 1e9, 1e7, 1e8] * 2)
    d = np.array([1e9, 1e10, 1e11, 1e10, 1e9] * 2)
    loss = 2 + 400 / n**0.34 + 400 / d**0.28
    with pytest.raises(FitInputError, match=r"^\(n_params, n_tokens\) takes 5 distinct values in 10 rows; chinchilla needs >= 6 distinct points"):
        fit_chinchilla(n, d, loss, n_bootstrap=0)


def test_critical_batch_on_identical_rows_is_refused():
    # The reproduction: 5 identical rows returned zero-width intervals and no flag.
    with pytest.raises(FitInputError) as error:
        fit_critical_batch(np.full(5, 1000.0), np.full(5, 1e6), n_bootstrap=50)
    assert str(error.value).startswith("batch size (examples/steps) has 1 distinct value (5 rows: 1000); critical batch needs >= 3")


def test_isoflop_counts_distinct_sizes_per_budget():
    repeated = np.array([1e7, 1e7, 1e8, 1e8, 1e8])  # five runs of one budget, two distinct sizes: no parabola
    n = np.concatenate([repeated] + [np.geomspace(1e7, 1e9, 5)] * 3)
    c = np.repeat([1e17, 1e18, 1e19, 1e20], 5)
    loss = 3.0 + 0.1 * (np.log(n) - np.log(1e8)) ** 2
    minima = fit_isoflop(n, c, loss, n_bootstrap=0)
    assert minima.skipped == {1e17: "2 distinct model sizes (5 rows), expected at least 3"}


def test_scale_spread_over_decades_is_flagged_not_determined():
    # Five sizes within one decade, 1% noise: the curvature that fixes x0 is not seen (measured on
    # seeds 0-5: its 95% interval spans 9 to 24 decades).
    rng = np.random.default_rng(0)
    x = np.logspace(6, 7, 5)
    y = (2 + (3e4 / x) ** 0.25) * np.exp(rng.normal(0, 0.01, 5))
    fit = fit_power_law(x, y, n_bootstrap=100)
    low, high = np.percentile(fit.samples[:, 1], [2.5, 97.5])  # x0 is column 1 of the draws
    decades = np.log10(high / low)
    assert decades > NOT_DETERMINED_DECADES
    assert flag(fit, "x0_not_determined") == (
        f"x0_not_determined: interval [{low:.3g}, {high:.3g}] spans {decades:.1f} decades, more than {NOT_DETERMINED_DECADES:g} decades"
    )
    ten = np.logspace(5, 9, 10)
    well = fit_power_law(ten, (2 + (3e4 / ten) ** 0.25) * np.exp(rng.normal(0, 0.01, 10)), n_bootstrap=200)
    assert np.log10(well.intervals["x0"][1] / well.intervals["x0"][0]) < 1 and well.flags == ()


def test_loss_that_does_not_depend_on_x_flags_overflowed_draws_and_bounds():
    # Flat losses: alpha runs to its lower bound, x0 = exp(k / alpha) leaves double precision in some draws.
    rng = np.random.default_rng(0)
    x = np.logspace(5, 9, 6)
    y = 2.5 * np.exp(rng.normal(0, 0.01, 6))
    fit = fit_power_law(x, y, n_bootstrap=100)
    x0_draws = fit.samples[:, 1]
    lost = int(np.sum(~np.isfinite(x0_draws)))
    assert lost > 0  # the reproduction: inf/nan draws existed and used to vanish from the interval silently
    assert flag(fit, "x0_draws_not_finite") == (
        f"x0_draws_not_finite: {lost} of {len(x0_draws)} bootstrap draws ({lost / len(x0_draws):.0%}) are nan or inf, left out of its interval"
    )
    assert np.all(np.isfinite(fit.intervals["x0"]))
    x0 = fit.params["x0"]
    assert flag(fit, "x0_overflow" if x0 == 0 or not np.isfinite(x0) else "x0_not_determined")
    assert re.search(r"alpha_at_bound: .*lower bound 1e-08", flag(fit, "alpha_at_bound"))


def test_noiseless_data_give_a_flagged_zero_width_interval():
    loss = np.linspace(2.5, 5.0, 6)
    fit = fit_critical_batch_vs_loss(loss, 1e6 / loss ** (1 / 0.21), n_bootstrap=20)
    for name in ("B_star", "alpha_B"):
        low, high = fit.intervals[name]
        assert high - low <= 1e-12 * abs(fit.params[name])
        assert flag(fit, f"{name}_zero_width_interval").endswith("(identical or noiseless rows?): the interval says nothing")


def test_allocation_without_growth_is_flagged():
    rng = np.random.default_rng(3)
    c = np.logspace(18, 21, 6)
    fit = fit_allocation(c, 1e8 * (c / 1e18) ** -0.1 * np.exp(rng.normal(0, 0.01, 6)), n_bootstrap=0)
    assert flag(fit, "a_not_positive").startswith(f"a_not_positive: a={fit.params['a']:.4g} <= 0")


def test_distinct_values_outside_the_counted_sample_still_count(monkeypatch):
    # enough_data first counts distinct values on SAMPLE_ROWS rows spread over the data; values it did
    # not see must still count, and a shortfall must still be named from all the rows.
    monkeypatch.setattr(_checks, "SAMPLE_ROWS", 5)  # rows 0, 5, 10, 15, 20 of 21
    x = np.full(21, 1e6)
    x[[1, 2, 3]] = [1e7, 1e8, 1e9]  # four distinct sizes, three of them between the sampled rows
    _checks.enough_data("power law", 3, 4, x=x)
    x[3] = 1e6
    with pytest.raises(FitInputError, match=r"^x has 3 distinct values \(21 rows: 1e\+06, 1e\+07, 1e\+08\); power law needs >= 4"):
        _checks.enough_data("power law", 3, 4, x=x)
    # points: two variables with 2 distinct values each in the sample, 4 distinct pairs in all
    n = np.full(21, 1.0)
    d = np.full(21, 1.0)
    n[[1, 2]], d[[2, 3]] = 2.0, 2.0
    _checks.enough_data("law", 3, 2, n=n, d=d)
    with pytest.raises(FitInputError, match=r"^\(n, d\) takes 4 distinct values in 21 rows; law needs >= 5 distinct points"):
        _checks.enough_data("law", 4, 2, n=n, d=d)
