"""The bootstrap draws every law refits (fit.bootstrap), against closed forms."""

import numpy as np
import pytest
from scipy import stats

from fastscale.fit._checks import FitInputError
from fastscale.fit.bootstrap import bootstrap_blocks, noise_scale


def _all_draws(*args, **kwargs):
    blocks = list(bootstrap_blocks(*args, **kwargs))
    return np.concatenate([b.weights for b in blocks]), np.concatenate([b.log_y for b in blocks])


def test_parametric_percentile_interval_of_a_linear_law_is_the_student_t_interval():
    # For a law linear in its parameters (a pure power law is a line in log-log), drawing the noise
    # scale from its chi-square distribution makes each draw's slope exactly beta_hat + s*t(n-p)*se/s.
    # The refit here is ordinary least squares, written independently of the library.
    rng = np.random.default_rng(4)
    x = np.log(np.geomspace(1e5, 1e9, 9))
    design = np.column_stack([np.ones_like(x), x])
    log_y = design @ np.array([3.0, -0.076]) + rng.normal(0, 0.02, 9)
    coef, *_ = np.linalg.lstsq(design, log_y, rcond=None)
    log_pred = design @ coef
    _, draws = _all_draws("parametric", log_y=log_y, log_pred=log_pred, weights=np.ones(9), n_params=2, n_bootstrap=40_000, seed=1)
    slopes = np.linalg.lstsq(design, draws.T, rcond=None)[0][1]
    s = noise_scale(log_y, log_pred, np.ones(9), 2)
    se = s * np.sqrt(np.linalg.inv(design.T @ design)[1, 1])
    half_width = stats.t.ppf(0.975, 9 - 2) * se
    low, high = np.percentile(slopes, [2.5, 97.5])
    # Monte Carlo error of a 2.5% quantile from 40,000 draws is ~1.5% of the half width
    assert low == pytest.approx(coef[1] - half_width, abs=0.04 * half_width)
    assert high == pytest.approx(coef[1] + half_width, abs=0.04 * half_width)
    # sigma held at s would give the normal interval, 1.96/2.36 as wide: far outside the tolerance
    assert stats.norm.ppf(0.975) * se < 0.9 * half_width


def test_parametric_noise_follows_the_weights_and_spares_zero_weight_rows():
    log_pred = np.zeros(4)
    weights = np.array([1.0, 4.0, 0.0, 1.0])
    log_y = np.array([0.1, -0.05, 3.0, -0.1])
    w, draws = _all_draws("parametric", log_y=log_y, log_pred=log_pred, weights=weights, n_params=1, n_bootstrap=50_000, seed=2)
    assert (w == weights).all()
    variance = draws.var(axis=0)
    assert variance[0] / variance[1] == pytest.approx(4.0, rel=0.03)
    assert variance[2] == 0.0
    # the mean sigma*^2 of chi-square draws is s^2 (n-p)/(n-p-2): here dof 3, so 3 s^2
    s2 = np.sum(weights * (log_y - log_pred) ** 2) / 3
    assert variance[0] == pytest.approx(3 * s2, rel=0.1)


def test_noiseless_data_give_identical_parametric_draws():
    log_pred = np.log(np.linspace(2, 3, 7))
    _, draws = _all_draws("parametric", log_y=log_pred, log_pred=log_pred, weights=np.ones(7), n_params=3, n_bootstrap=5, seed=0)
    assert (draws == log_pred).all()


def test_row_resampling_counts_rows_and_keeps_the_observations():
    log_y = np.random.default_rng(0).normal(size=11)
    weights = np.full(11, 0.5)
    w, draws = _all_draws("rows", log_y=log_y, log_pred=np.zeros(11), weights=weights, n_params=2, n_bootstrap=30, seed=3)
    counts = w / 0.5
    assert (counts == np.round(counts)).all() and (counts.sum(axis=1) == 11).all()
    assert (draws == log_y).all()


def test_groups_are_drawn_whole():
    groups = np.array([0, 0, 1, 1, 1, 2, 3])
    w, _ = _all_draws("rows", log_y=np.zeros(7), log_pred=np.zeros(7), weights=np.ones(7), n_params=1, n_bootstrap=40, seed=5, groups=groups)
    for label in np.unique(groups):
        rows = w[:, groups == label]
        assert (rows == rows[:, :1]).all()


@pytest.mark.parametrize(
    "resampling, groups, message",
    [("bca", None, r"resampling='bca': expected one of \('parametric', 'rows'\)"),
     ("parametric", [0, 0, 1], "groups: rows are resampled in groups only with resampling='rows'")],
)
def test_bad_scheme_is_named(resampling, groups, message):
    with pytest.raises(FitInputError, match=message):
        list(bootstrap_blocks(resampling, log_y=np.zeros(3), log_pred=np.zeros(3), weights=np.ones(3), n_params=1, n_bootstrap=2, seed=0, groups=groups))
