"""The over-training law of Gadre et al. 2024 against synthetic truth and its closed forms.

Constants: Gadre et al. publish fits as figures, and I found no table of their fitted E, a, b, eta. The
truth here is of the right magnitude and labelled as such: Epoch AI's Chinchilla replication (Besiroglu
et al. 2024: E = 1.8172, A = 482.01, B = 2085.43, alpha = 0.3478, beta = 0.3658) with the two exponents
replaced by their mean, as the over-training law ties them (Gadre et al. justify the tie by Chinchilla's
alpha ~ beta). The design is Gadre et al.'s testbed (their repository, scaling/constants.py): the four
smaller model sizes 0.011B-0.411B at token multipliers M = 20 x {1/4 ... 32}.
"""

import logging

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from fastscale.fit import FitInputError
from fastscale.fit.overtrain import fit_overtrain, tied_objective

TRUTH = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": (0.3478 + 0.3658) / 2}
SIZES = np.array([10569312, 78914048, 153677376, 411616256], dtype=np.float64)  # Gadre et al.'s 0.011B-0.411B
MULTIPLIERS = 20.0 * np.array([0.25, 0.5, 1, 2, 4, 8, 16, 32])


def true_loss(n, d):
    """Float64 evaluation of L(N, D), independent of the fit module."""
    n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
    return TRUTH["E"] + TRUTH["A"] * n ** -TRUTH["alpha"] + TRUTH["B"] * d ** -TRUTH["alpha"]


def runs_grid():
    n, m = (grid.ravel() for grid in np.meshgrid(SIZES, MULTIPLIERS))
    return n, n * m


def noisy_fit(seed, noise=0.01, n_bootstrap=100):
    n, d = runs_grid()
    rng = np.random.default_rng(seed)
    return fit_overtrain(n, d, true_loss(n, d) * np.exp(noise * rng.standard_normal(len(n))), n_bootstrap=n_bootstrap, seed=seed)


def test_recovers_the_constants_within_their_intervals():
    fit = noisy_fit(seed=7, n_bootstrap=200)
    assert fit.converged and fit.flags == () and fit.n_points == 32
    for name, value in TRUTH.items():
        low, high = fit.intervals[name]
        assert low <= fit.params[name] <= high, name
        assert low <= value <= high, name
    # 1% noise on 32 runs: over 100 seeds the estimates' relative standard deviation was 2.1% for E,
    # 2.2% for alpha, 12% for A and 15% for B (largest deviations 7%, 6%, 39%, 47%); the bounds are ~3 sd.
    assert fit.params["E"] == pytest.approx(TRUTH["E"], rel=0.06)
    assert fit.params["alpha"] == pytest.approx(TRUTH["alpha"], rel=0.06)
    assert fit.params["A"] == pytest.approx(TRUTH["A"], rel=0.5)
    assert fit.params["B"] == pytest.approx(TRUTH["B"], rel=0.5)


def test_intervals_cover_the_truth_on_most_seeds():
    # Measured over 100 seeds (200 draws each, seeds 5000-5099): the 95% intervals of the default
    # parametric bootstrap covered E in 92%, A 95%, B 95%, alpha 95% (resampling="rows": 92, 93, 92, 92%).
    # 20 seeds here; >= 15 of 20 fails with probability ~2% at 90% true coverage and surely for decorative intervals.
    covered = {name: 0 for name in TRUTH}
    for seed in range(20):
        fit = noisy_fit(seed=1000 + seed)
        for name, value in TRUTH.items():
            low, high = fit.intervals[name]
            covered[name] += bool(low <= value <= high)
    assert min(covered.values()) >= 15, covered


def test_five_noiseless_runs_determine_the_law():
    n = np.array([SIZES[0], SIZES[1], SIZES[2], SIZES[0], SIZES[1]])
    d = n * np.array([20.0, 20.0, 20.0, 160.0, 640.0])
    fit = fit_overtrain(n, d, true_loss(n, d), n_bootstrap=0)
    assert fit.converged and fit.flags == ()
    for name, value in TRUTH.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-6), name


def test_extrapolates_to_the_papers_held_out_runs_within_the_interval():
    # Gadre et al.'s headline predictions: a 1.4B model at M = 640 (900B tokens, 32x over-trained) and a
    # 6.9B model at M = 20, from runs of at most 0.411B parameters.
    fit = noisy_fit(seed=11, n_bootstrap=200)
    n = np.array([1439795200.0, 6889410560.0])
    d = n * np.array([640.0, 20.0])
    low, high = fit.predict_interval(n, d)
    truth = true_loss(n, d)
    assert np.all((low <= truth) & (truth <= high)), (low, truth, high)
    assert fit.predict(n, d) == pytest.approx(truth, rel=0.02)


def test_both_forms_are_one_law():
    fit = noisy_fit(seed=3, n_bootstrap=0)
    p = fit.params
    assert p["eta"] == pytest.approx(p["alpha"] / 2, rel=1e-15)
    assert p["a"] == pytest.approx(p["A"] * (1 / 6) ** -p["eta"], rel=1e-13)
    assert p["b"] == pytest.approx(p["B"] * (1 / 6) ** -p["eta"], rel=1e-13)
    n = np.array([1.1e7, 3.3e8, 7.7e9])
    d = np.array([2.3e8, 4.1e11, 1.3e11])
    direct = p["E"] + p["A"] * n ** -p["alpha"] + p["B"] * d ** -p["alpha"]
    np.testing.assert_allclose(fit.predict(n, d), direct, rtol=1e-14)
    np.testing.assert_allclose(fit.loss_at(6 * n * d, d / n), direct, rtol=1e-12)


def test_optimal_multiplier_minimizes_loss_at_fixed_compute():
    fit = noisy_fit(seed=5, n_bootstrap=50)
    p = fit.params
    estimate = fit.optimal_multiplier()
    assert estimate.value == pytest.approx((p["B"] / p["A"]) ** (1 / p["alpha"]), rel=1e-12)
    assert estimate.low <= estimate.value <= estimate.high
    for compute in (1e18, 1e21, 1e24):
        # Independent minimization over log M of L(N, D) with N = sqrt(C / 6M), D = sqrt(C M / 6).
        def loss_of(log_m, c=compute):
            m = np.exp(log_m)
            return fit.predict(np.sqrt(c / (6 * m)), np.sqrt(c * m / 6))

        best = minimize_scalar(loss_of, bounds=(np.log(1e-2), np.log(1e6)), method="bounded", options={"xatol": 1e-10})
        assert np.exp(best.x) == pytest.approx(estimate.value, rel=1e-4)
        # On the compute-optimal line L = E + 2 sqrt(a b) C^-eta; away from it the cosh penalty.
        assert best.fun == pytest.approx(p["E"] + 2 * np.sqrt(p["a"] * p["b"]) * compute ** -p["eta"], rel=1e-12)
        over = 32 * estimate.value
        penalty = 2 * np.sqrt(p["a"] * p["b"]) * np.cosh(p["eta"] * np.log(32)) * compute ** -p["eta"]
        assert fit.loss_at(compute, over) == pytest.approx(p["E"] + penalty, rel=1e-12)


def test_compute_for_loss_inverts_the_law():
    fit = noisy_fit(seed=9, n_bootstrap=50)
    for multiplier in (None, 20.0, 640.0):
        compute = fit.compute_for_loss(2.3, multiplier)
        m = fit.optimal_multiplier().value if multiplier is None else multiplier
        assert fit.loss_at(compute.value, m) == pytest.approx(2.3, rel=1e-12)
        assert compute.low <= compute.value <= compute.high
    assert np.isnan(fit.compute_for_loss(fit.params["E"] * 0.99).value)  # below E: unreachable


def test_tied_objective_gradient_against_finite_differences():
    rng = np.random.default_rng(13)
    u, v = rng.normal(0, 1.5, 9), rng.normal(0, 2.0, 9)
    log_y = np.log(rng.uniform(2.0, 3.5, 9))
    objective = tied_objective(u, v, log_y)
    theta = np.array([[-1.3, -0.7, 0.4, 0.31], [0.2, -2.0, 0.6, 0.9]])
    value, gradient = objective(theta, np.arange(2))
    direct = [0.5 * np.sum((np.log(np.exp(kn - al * u) + np.exp(kd - al * v) + np.exp(e)) - log_y) ** 2) for kn, kd, e, al in theta]
    np.testing.assert_allclose(value, direct, rtol=1e-12)
    step = 1e-6
    for j in range(4):
        shift = np.zeros(4)
        shift[j] = step
        up, _ = objective(theta + shift, np.arange(2))
        down, _ = objective(theta - shift, np.arange(2))
        np.testing.assert_allclose(gradient[:, j], (up - down) / (2 * step), rtol=1e-6, atol=1e-9)


def test_refuses_too_few_distinct_values():
    n, d = runs_grid()
    loss = true_loss(n, d)
    two_sizes = np.where(n > SIZES[1], SIZES[1], n)
    with pytest.raises(FitInputError, match=r"n has 2 distinct values.*overtrain needs >= 3") as error:
        fit_overtrain(two_sizes, d, loss, n_bootstrap=0)
    assert error.value.argument == "n"
    with pytest.raises(FitInputError, match="overtrain: got 4 points, expected at least 5"):
        fit_overtrain(n[:4], d[:4], loss[:4], n_bootstrap=0)
    rows = np.array([0, 9, 18, 0, 9, 18])  # 3 sizes x 3 token counts, but only 3 distinct runs
    with pytest.raises(FitInputError, match=r"takes 3 distinct values in 6 rows; overtrain needs >= 5"):
        fit_overtrain(n[rows], d[rows], loss[rows], n_bootstrap=0)


def test_bad_input_is_named():
    n, d = runs_grid()
    loss = true_loss(n, d)
    with pytest.raises(FitInputError, match=r"d: expected values > 0"):
        fit_overtrain(n, -d, loss, n_bootstrap=0)
    with pytest.raises(FitInputError, match=r"loss: expected finite numbers, got nan at index 2"):
        fit_overtrain(n, d, np.where(np.arange(len(n)) == 2, np.nan, loss), n_bootstrap=0)
    with pytest.raises(FitInputError, match="one length"):
        fit_overtrain(n, d[:-1], loss, n_bootstrap=0)
    with pytest.raises(FitInputError, match=r"n_bootstrap=-1: expected an integer >= 0"):
        fit_overtrain(n, d, loss, n_bootstrap=-1)
    with pytest.raises(FitInputError, match=r"resampling='bca': expected one of \('parametric', 'rows'\)"):
        fit_overtrain(n, d, loss, resampling="bca")


def test_exponent_of_a_rising_loss_is_flagged(caplog):
    n, d = runs_grid()
    rising = 2.0 + 1e-3 * np.log(n * d)  # loss grows with N and D: no positive shared exponent fits
    with caplog.at_level(logging.WARNING):
        fit = fit_overtrain(n, d, rising, n_bootstrap=0)
    assert any(flag.startswith("alpha_not_positive") for flag in fit.flags), fit.flags


def test_large_data_paths_give_the_same_fit(monkeypatch):
    # Beyond GRID_ROWS rows the start grid runs on a subset and the polish on all rows; beyond
    # BOOTSTRAP_CELLS the draws run in chunks. Shrunk here so 32 runs take both paths.
    from fastscale.fit import chinchilla, overtrain

    n, d = runs_grid()
    loss = true_loss(n, d) * np.exp(0.01 * np.random.default_rng(17).standard_normal(len(n)))
    reference = fit_overtrain(n, d, loss, n_bootstrap=40, seed=2)
    monkeypatch.setattr(chinchilla, "GRID_ROWS", 12)
    monkeypatch.setattr(overtrain, "BOOTSTRAP_CELLS", 5 * len(n))
    shrunk = fit_overtrain(n, d, loss, n_bootstrap=40, seed=2)
    assert shrunk.converged and len(shrunk.samples) == 40
    for name in TRUTH:
        assert shrunk.params[name] == pytest.approx(reference.params[name], rel=1e-6), name
    np.testing.assert_allclose(shrunk.samples, reference.samples, rtol=1e-6)


# Gadre et al.'s released evaluations (github.com/mlfoundations/scaling, exp_data/models/rpj-*.json; the
# Hugging Face release mlfoundations/scaling is marked MIT): models trained on RedPajama, C4 validation
# loss ("c4_val" split), N = "params", D = "tokens". Fitted: the 0.011B model at all eight multipliers
# and 0.079B, 0.154B, 0.411B at M = 20 and 320 (14 runs). Held out: the paper's two headline runs.
RPJ_RUNS = (
    (10569312, 52846560, 6.123879526201114), (10569312, 105693120, 5.723234933817179),
    (10569312, 211386240, 5.38702091510821), (10569312, 422772480, 5.107841900656407),
    (10569312, 845544960, 4.8231177076673335), (10569312, 1691089920, 4.670495020574533),
    (10569312, 3382179840, 4.572292613487238), (10569312, 6764359680, 4.492098042798854),
    (78914048, 1578280960, 3.899942990231468), (78914048, 25252495360, 3.489515495205766),
    (153677376, 3073547520, 3.531147408490181), (153677376, 49176760320, 3.168113735949615),
    (411616256, 8232325120, 3.149769456671634), (411616256, 131717201920, 2.8035228460174086),
)
RPJ_HELD_OUT = ((1439795200, 921468928000, 2.502053562117363), (6889410560, 137788211200, 2.424993099368689))


def test_predicts_the_papers_held_out_runs_from_their_released_losses():
    # Measured: 1.4B at M = 640 (900B tokens) predicted 2.5114 against 2.5021 (+0.37%), 6.9B at M = 20
    # predicted 2.4342 against 2.4250 (+0.38%), both inside the 95% prediction interval; the 14 fitted runs
    # together took 1/20 and 1/14 of those runs' 6ND. The 1% bound guards that reproduction. The fit set is
    # ours (the paper's exact set is not restated here); without the 0.011B runs at M = 5 and 10 the same
    # predictions miss by -1.8% and -2.6%, still inside their intervals.
    n, d, loss = (np.array(column, dtype=np.float64) for column in zip(*RPJ_RUNS))
    fit = fit_overtrain(n, d, loss, n_bootstrap=200, seed=0)
    assert fit.converged and fit.flags == ()
    held_n, held_d, measured = (np.array(column, dtype=np.float64) for column in zip(*RPJ_HELD_OUT))
    np.testing.assert_allclose(fit.predict(held_n, held_d), measured, rtol=0.01)
    low, high = fit.predict_interval(held_n, held_d)
    assert np.all((low <= measured) & (measured <= high)), (low, measured, high)


def test_row_bootstrap_of_five_runs_is_flagged_as_underdetermined():
    # 5 runs: only 5!/5^5 = 3.8% of row resamples keep all five, the rest cannot determine 4 parameters.
    # Parametric draws keep all five runs: nothing to flag.
    n = np.array([SIZES[0], SIZES[1], SIZES[2], SIZES[0], SIZES[1]])
    d = n * np.array([20.0, 20.0, 20.0, 160.0, 640.0])
    loss = true_loss(n, d) * np.exp(0.005 * np.random.default_rng(19).standard_normal(5))
    fit = fit_overtrain(n, d, loss, n_bootstrap=200, seed=4, resampling="rows")
    flags = [flag for flag in fit.flags if flag.startswith("bootstrap_underdetermined")]
    assert len(flags) == 1, fit.flags
    short = int(flags[0].split(": ")[1].split(" of ")[0])
    assert 0.9 * 200 <= short <= 200  # expected 96.2% of 200
    assert fit_overtrain(n, d, loss, n_bootstrap=0).flags == ()  # no resamples, nothing to flag
    parametric = fit_overtrain(n, d, loss, n_bootstrap=200, seed=4)
    assert not any(flag.startswith("bootstrap_underdetermined") for flag in parametric.flags), parametric.flags
