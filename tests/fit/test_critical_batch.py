"""McCandlish et al. 2018: the steps/examples trade-off and B_crit(L)."""

import numpy as np
import pytest

from fastscale.fit import FitInputError, fit_critical_batch, fit_critical_batch_vs_loss


def tradeoff(seed, s_min=2000.0, e_min=4e6, noise=0.02):
    """(S, E) pairs on (S/S_min - 1)(E/E_min - 1) = 1 at batch sizes around B_crit = 2000, with noise on S."""
    rng = np.random.default_rng(seed)
    batch = np.geomspace(64, 65536, 11)
    steps = s_min * (1 + (e_min / s_min) / batch) * np.exp(rng.normal(0, noise, len(batch)))
    return steps, steps * batch


def test_exact_pairs_give_exact_s_min_e_min_and_b_crit():
    steps, examples = tradeoff(0, noise=0.0)
    fit = fit_critical_batch(steps, examples, n_bootstrap=0)
    assert fit.params["S_min"] == pytest.approx(2000.0, rel=1e-6)
    assert fit.params["E_min"] == pytest.approx(4e6, rel=1e-6)
    assert fit.params["B_crit"] == pytest.approx(2000.0, rel=1e-6)
    batch = np.geomspace(10, 1e6, 7)
    s, e = fit.predict(batch), fit.examples(batch)
    assert np.allclose((s / fit.params["S_min"] - 1) * (e / fit.params["E_min"] - 1), 1.0)
    assert np.allclose(e, s * batch)


def test_noisy_pairs_interval_covers_b_crit():
    # A guard against gross undercoverage on a few seeds; coverage at scale is benchmarks/coverage.py's.
    covered = 0
    for seed in range(8):
        fit = fit_critical_batch(*tradeoff(seed), n_bootstrap=50, seed=seed)
        low, high = fit.intervals["B_crit"]
        covered += low <= 2000.0 <= high
        assert fit.params["B_crit"] == pytest.approx(2000.0, rel=0.25)
    assert covered >= 6


def test_b_crit_against_loss_recovers_kaplans_exponent(published_constants):
    b = published_constants["kaplan2020"]["B_crit"]
    covered = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        loss = np.linspace(2.5, 5.0, 15)
        noise_scale = b["B_star_tokens"] / loss ** (1 / b["alpha_B"]) * np.exp(rng.normal(0, 0.1, 15))
        fit = fit_critical_batch_vs_loss(loss, noise_scale, n_bootstrap=50, seed=seed)
        assert fit.params["alpha_B"] == pytest.approx(b["alpha_B"], rel=0.15)
        low, high = fit.intervals["alpha_B"]
        covered += low <= b["alpha_B"] <= high
    assert covered >= 6


def test_critical_batch_bad_input():
    with pytest.raises(FitInputError, match="critical batch: got 2 points"):
        fit_critical_batch([100, 50], [1e4, 2e4])
    with pytest.raises(FitInputError, match="examples: expected finite numbers"):
        fit_critical_batch([100, 50, 40], [1e4, np.inf, 3e4])


def test_a_tradeoff_of_another_shape_is_flagged_misspecified():
    # S = S_min (1 + (B_crit/B)^2) falls faster with B than McCandlish's S_min (1 + B_crit/B): on 20
    # batch sizes with 1% noise the residuals ordered by B bend; the true shape is not flagged.
    rng = np.random.default_rng(8)
    batch = np.geomspace(64, 65536, 20)
    noise = np.exp(rng.normal(0, 0.01, 20))
    wrong = 2000 * (1 + (2000 / batch) ** 2) * noise
    right = 2000 * (1 + 2000 / batch) * noise
    assert any(f.startswith("misspecified: ") for f in fit_critical_batch(wrong, wrong * batch, n_bootstrap=0).flags)
    assert fit_critical_batch(right, right * batch, n_bootstrap=0).flags == ()


def test_b_crit_against_loss_off_a_power_law_is_flagged_misspecified():
    loss = np.geomspace(2, 6, 20)
    rng = np.random.default_rng(9)
    curved = 2e8 / loss ** (1 / 0.21) * np.exp(0.8 * np.log(loss / 3.5) ** 2 + rng.normal(0, 0.01, 20))
    assert any(f.startswith("misspecified: ") for f in fit_critical_batch_vs_loss(loss, curved, n_bootstrap=0).flags)
