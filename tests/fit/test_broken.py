"""Broken neural scaling laws (Caballero et al. 2023): the paper's constants recovered, the local exponent
against float64 derivatives of eq. 1, no invented break on a single power law, refusals.

Constants: Figure 4 (right) of the paper, the noiseless simulation of 4-digit addition, and Figure 1's
three-break decomposition, both as given in the authors' code release
(github.com/ethancaballero/broken_neural_scaling_laws)."""

import numpy as np
import pytest

from fastscale.fit import FitInputError
from fastscale.fit.broken import fit_broken_power_law, local_exponent

FIGURE_4 = dict(a=0.41388453071629455, b=2.2772722897737556, c0=0.055077348404973955, c1=5.662903816010331,
                d1=612.5836172918001, f1=0.059193036393742314)
FIGURE_1 = dict(a=1e-3, b=4.66e3, c0=0.05, c1=0.49, c2=-0.811, c3=2.1, d1=3e6, d2=1e14, d3=2e20, f1=1.1, f2=1.425, f3=0.05)


def reducible(x, p):
    """y - a of eq. 1 written directly, in float64: b x^-c0 prod_i (1 + (x/d_i)^(1/f_i))^(-c_i f_i)."""
    y = p["b"] * x ** (-p["c0"])
    i = 1
    while f"d{i}" in p:
        y = y * (1.0 + (x / p[f"d{i}"]) ** (1.0 / p[f"f{i}"])) ** (-p[f"c{i}"] * p[f"f{i}"])
        i += 1
    return y


def bnsl(x, p):
    return p["a"] + reducible(x, p)


def figure_4_data(seed, noise=0.01, n=60):
    """The 4-digit-addition curve on n log-spaced dataset sizes around its break, lognormal noise."""
    x = np.logspace(np.log10(50), np.log10(4000), n)
    return x, bnsl(x, FIGURE_4) * np.exp(np.random.default_rng(seed).normal(0, noise, n))


def test_exact_data_give_the_paper_constants_back():
    x, y = figure_4_data(0, noise=0.0)
    fit = fit_broken_power_law(x, y, n_bootstrap=0)
    for name, truth in FIGURE_4.items():
        assert fit.params[name] == pytest.approx(truth, rel=1e-5), name
    assert np.abs(fit.residuals).max() < 1e-8
    assert fit.converged and fit.flags == ()


def test_two_breaks_of_figure_1_are_recovered_exactly():
    # Figure 1's first two breaks (its third, f3 = 0.05, is sharper than this grid's spacing resolves).
    truth = {k: FIGURE_1[k] for k in ("a", "b", "c0", "c1", "c2", "d1", "d2", "f1", "f2")}
    x = np.logspace(-1, 18, 120)
    fit = fit_broken_power_law(x, bnsl(x, truth), breaks=2, n_bootstrap=0)
    for name, value in truth.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-4), name
    assert fit.converged and fit.breaks == 2


def test_noisy_figure_4_constants_fall_in_their_intervals():
    # Measured over 100 noise seeds (60 points, 1% noise, 200 draws, seeds 5000-5099): the default
    # parametric bootstrap's 95% intervals covered the truth in 93% of seeds for a, 93% b, 92% c0, 93% c1,
    # 93% d1, 94% f1 (resampling="rows": 89, 95, 92, 89, 91, 90%). Here 8 seeds x 100 draws: at least 6
    # must cover each.
    covered = dict.fromkeys(FIGURE_4, 0)
    for seed in range(8):
        fit = fit_broken_power_law(*figure_4_data(100 + seed), n_bootstrap=100, seed=seed)
        for name, truth in FIGURE_4.items():
            low, high = fit.intervals[name]
            assert low <= fit.params[name] <= high
            covered[name] += low <= truth <= high
    assert min(covered.values()) >= 6, covered


def test_asymptote_is_not_pinned_to_the_lowest_point():
    # Beyond the break y is a plus noise: half the points fall below a, and a's estimate must follow
    # the truth, not min(y). ~110 of the 200 points lie on the plateau, so a's standard error is about
    # 2% / sqrt(110) = 0.2%: 1% is five of them, while min(y) sits 2-3 noise widths below a.
    x, y = figure_4_data(7, noise=0.02, n=200)
    fit = fit_broken_power_law(x, y, n_bootstrap=0)
    assert y.min() < 0.98 * FIGURE_4["a"]
    assert fit.params["a"] == pytest.approx(FIGURE_4["a"], rel=0.01)


def test_many_rows_recover_the_paper_constants():
    # 1e5 rows (more than the 2,000 the starts are screened on) with 5% noise. The 60-point fits' standard
    # errors scaled by 5 sqrt(60/1e5) are <= 0.6% for every constant: 3% is five of them.
    rng = np.random.default_rng(11)
    x = np.exp(rng.uniform(np.log(50), np.log(4000), 10**5))
    fit = fit_broken_power_law(x, bnsl(x, FIGURE_4) * np.exp(rng.normal(0, 0.05, x.size)), n_bootstrap=0)
    for name, truth in FIGURE_4.items():
        assert fit.params[name] == pytest.approx(truth, rel=0.03), name
    assert fit.converged


def test_local_exponent_is_the_float64_slope_of_eq_1():
    # -d log(y - a)/d log x by central differences of eq. 1 in float64, through all three breaks.
    log_x = np.linspace(np.log(1e-1), np.log(1e26), 400)
    h = 1e-5
    numeric = -(np.log(reducible(np.exp(log_x + h), FIGURE_1)) - np.log(reducible(np.exp(log_x - h), FIGURE_1))) / (2 * h)
    np.testing.assert_allclose(local_exponent(FIGURE_1, np.exp(log_x)), numeric, rtol=0, atol=1e-6)


def test_segments_have_the_papers_exponents():
    # Far from every break the law is the power-law segment of Figure 1's decomposition, exponent
    # c0 + c1 + ... + cj, and its scale continues the previous segment's at the break.
    p = FIGURE_1
    segment_3 = p["b"] * p["d1"] ** (-p["c0"]) * (p["d2"] / p["d1"]) ** (-(p["c0"] + p["c1"]))
    x = 1e17  # 3 decades past d2 (f2 = 1.425), 3.3 below d3
    exponent = p["c0"] + p["c1"] + p["c2"]
    assert local_exponent(p, x) == pytest.approx(exponent, abs=0.01)
    assert reducible(x, p) == pytest.approx(segment_3 * (x / p["d2"]) ** (-exponent), rel=0.02)
    assert local_exponent(p, 1e-1) == pytest.approx(p["c0"], abs=1e-3)
    assert local_exponent(p, 1e26) == pytest.approx(p["c0"] + p["c1"] + p["c2"] + p["c3"], abs=1e-3)


def test_fitted_slopes_before_and_after_the_break():
    x, y = figure_4_data(3)
    fit = fit_broken_power_law(x, y, n_bootstrap=100)
    before, after = fit.segment_exponents()
    assert before.value == fit.params["c0"] and after.value == pytest.approx(fit.params["c0"] + fit.params["c1"])
    assert before.low <= FIGURE_4["c0"] <= before.high
    assert after.low <= FIGURE_4["c0"] + FIGURE_4["c1"] <= after.high
    # the fitted law's slope, float64 central differences of its own prediction minus a
    # (3000 is 27 break widths past d1 yet y - a is still 4e-4 of y, so the difference keeps 12 digits)
    for x_far, slope in ((1.0, before.value), (3000.0, after.value)):
        h = 1e-5
        above, below = (np.log(fit.predict(x_far * np.exp(step)) - fit.params["a"]) for step in (h, -h))
        numeric = -(above - below) / (2 * h)
        assert fit.local_exponent(x_far) == pytest.approx(numeric, abs=1e-6)
        assert fit.local_exponent(x_far) == pytest.approx(slope, abs=1e-6)
    at_break = fit.local_exponent_estimate(fit.params["d1"])
    assert at_break.value == pytest.approx(fit.params["c0"] + fit.params["c1"] / 2)
    low, high = fit.predict_interval(x)
    assert np.all(low <= fit.predict(x)) and np.all(fit.predict(x) <= high)


def test_one_break_too_few_is_flagged_misspecified():
    # Figure 1's two-break curve with 1% noise: one break leaves structured residuals (flagged in 5 of 5
    # seeds tried), two breaks do not.
    truth = {k: FIGURE_1[k] for k in ("a", "b", "c0", "c1", "c2", "d1", "d2", "f1", "f2")}
    x = np.logspace(-1, 18, 60)
    y = bnsl(x, truth) * np.exp(np.random.default_rng(0).normal(0, 0.01, x.size))
    kinds = lambda fit: [flag.split(":")[0] for flag in fit.flags]  # noqa: E731
    assert "misspecified" in kinds(fit_broken_power_law(x, y, breaks=1, n_bootstrap=0))
    assert "misspecified" not in kinds(fit_broken_power_law(x, y, breaks=2, n_bootstrap=0))


@pytest.mark.parametrize("seed", range(4))
def test_single_power_law_does_not_get_a_determined_break(seed):
    # L = 2 + (3e4/x)^0.3 has no break: the fitted break's location or sharpness must be flagged.
    rng = np.random.default_rng(seed)
    x = np.logspace(6, 9, 30)
    y = (2.0 + (3e4 / x) ** 0.3) * np.exp(rng.normal(0, 0.01, x.size))
    fit = fit_broken_power_law(x, y, n_bootstrap=100, seed=seed)
    kinds = ("d1_at_bound", "f1_at_bound", "d1_not_determined", "f1_not_determined")
    undetermined = [flag for flag in fit.flags if flag.split(":")[0] in kinds]
    assert undetermined, fit.flags


def test_refuses_too_few_distinct_x():
    x = np.repeat(np.logspace(2, 4, 6), 3)
    with pytest.raises(FitInputError, match=r"x has 6 distinct values .* needs >= 7 distinct values of x") as error:
        fit_broken_power_law(x, bnsl(x, FIGURE_4), n_bootstrap=0)
    assert error.value.argument == "x"
    x = np.repeat(np.logspace(2, 4, 9), 2)
    with pytest.raises(FitInputError, match=r"needs >= 10 distinct values of x"):
        fit_broken_power_law(x, bnsl(x, FIGURE_4), breaks=2, n_bootstrap=0)


@pytest.mark.parametrize("breaks", [0, -1, 1.5, True])
def test_refuses_a_bad_break_count(breaks):
    x, y = figure_4_data(0)
    with pytest.raises(FitInputError, match=rf"breaks={breaks!r}: expected an integer >= 1"):
        fit_broken_power_law(x, y, breaks=breaks)


def test_refuses_non_positive_y():
    x, y = figure_4_data(0)
    y[5] = 0.0
    with pytest.raises(FitInputError, match=r"y: expected values > 0 .* got 0.0 at index 5"):
        fit_broken_power_law(x, y)
    with pytest.raises(FitInputError, match=r"resampling='bca': expected one of \('parametric', 'rows'\)"):
        fit_broken_power_law(*figure_4_data(0), resampling="bca")


def test_bend_is_the_curvature_ratio_of_the_change_of_variables():
    # phi''/phi' by central differences of the natural parameters a, log d1, log f1 (one break, so the
    # sort by d cannot reorder them) in the optimizer's variables s, t1, q1; 0 for b, c0, c1's variables.
    from fastscale.fit.broken import _Space

    x = np.logspace(1, 5, 20)
    space = _Space(np.log(x), 1)
    theta = np.array([[0.3, 0.1, 0.2, 0.5, 0.4, 1.1]])
    natural = lambda t: np.log(space.params(t)[0, [0, 4, 5]]) * [0, 1, 1] + space.params(t)[0, [0, 4, 5]] * [1, 0, 0]  # noqa: E731
    h = 1e-4
    for column, j in ((0, 0), (4, 1), (5, 2)):
        step = np.zeros_like(theta)
        step[0, column] = h
        up, mid, down = natural(theta + step)[j], natural(theta)[j], natural(theta - step)[j]
        ratio = ((up - 2 * mid + down) / h**2) / ((up - down) / (2 * h))
        assert space.bend(theta)[0, column] == pytest.approx(ratio, rel=1e-5), column
    assert np.all(space.bend(theta)[0, 1:4] == 0)


def test_bootstrap_refits_match_scipy_on_draws_whose_asymptote_is_on_its_bound():
    # Figure 1's first two breaks with a = 1e-3, which data from x = 0.1 cannot tell from 0: a sits on its
    # bound in the estimate and in about half of the draws, where Gauss-Newton alone overshoots the bound.
    # Each batched refit must reach what scipy's L-BFGS-B reaches on the same draw from the same start.
    from scipy.optimize import minimize

    from fastscale.fit.bootstrap import bootstrap_blocks
    from fastscale.fit.broken import _refit, _Space

    truth = {k: FIGURE_1[k] for k in ("a", "b", "c0", "c1", "c2", "d1", "d2", "f1", "f2")}
    x = np.logspace(-1, 18, 120)
    y = bnsl(x, truth) * np.exp(np.random.default_rng(1).normal(0, 0.01, x.size))
    fit = fit_broken_power_law(x, y, breaks=2, n_bootstrap=0)
    assert fit.params["a"] < 1e-12
    space = _Space(np.log(x), 2)
    theta = space.pack(np.array([fit.params["a"]]), np.log([fit.params["b"]]) - fit.params["c0"] * space.centre, np.array([fit.params["c0"]]),
                       np.array([[fit.params["c1"], fit.params["c2"]]]), np.log([[fit.params["d1"], fit.params["d2"]]]) - space.centre,
                       np.array([[fit.params["f1"], fit.params["f2"]]]))[0]
    block = next(bootstrap_blocks("parametric", log_y=np.log(y), log_pred=np.log(fit.predict(x)), weights=np.ones(x.size), n_params=9, n_bootstrap=6, seed=3))
    draws, converged = _refit(space, block.log_y, theta, block.weights)
    assert converged.all()
    for draw in range(6):
        objective = space.objective(block.log_y[draw])
        one = lambda t: tuple(v[0] for v in objective(t[None], np.zeros(1, dtype=int)))  # noqa: E731
        reference = minimize(one, space.nudged(theta), jac=True, method="L-BFGS-B", options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-12})
        assert one(draws[draw])[0] <= reference.fun * (1 + 1e-7), draw
