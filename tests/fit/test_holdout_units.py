"""The extrapolation check, units and the per-item reading of Henighan et al. 2020."""

import numpy as np
import pytest

from fastscale import units
from fastscale.fit import FitInputError, fit_power_law, holdout_largest


def test_holdout_on_exact_data_predicts_the_largest_exactly():
    x = np.logspace(5, 9, 9)
    y = 2.0 + (3e4 / x) ** 0.25
    check = holdout_largest(fit_power_law, (x,), y, 2, n_bootstrap=0)
    assert list(check.held_out) == [8, 7]
    assert check.fit.n_points == 7
    assert check.mean_abs_rel_error < 1e-7
    assert np.allclose(check.inputs[0], x[[8, 7]])


def test_holdout_error_is_the_relative_error_of_the_prediction():
    rng = np.random.default_rng(4)
    x = np.logspace(5, 9, 12)
    y = (2.0 + (3e4 / x) ** 0.25) * np.exp(rng.normal(0, 0.01, 12))
    check = holdout_largest(fit_power_law, (x,), y, 3, n_bootstrap=40)
    manual = fit_power_law(x[:9], y[:9], n_bootstrap=0).predict(x[[11, 10, 9]])
    assert np.allclose(check.predicted, manual, rtol=1e-9)
    assert check.mean_abs_rel_error == pytest.approx(np.mean(np.abs(manual / y[[11, 10, 9]] - 1)))
    assert np.all(check.low <= check.predicted) and np.all(check.predicted <= check.high)


def test_holdout_needs_rows_left():
    with pytest.raises(FitInputError, match="holdout_largest=5: expected fewer than the 5 rows"):
        holdout_largest(fit_power_law, (np.arange(1.0, 6.0),), np.ones(5), 5)
    x = np.repeat(np.arange(1.0, 7.0), 2)  # 6 distinct x, 3 once the 6 largest rows are out
    with pytest.raises(FitInputError, match="holdout_largest=6: the fit without the 6 held-out rows: x has 3 distinct values") as error:
        holdout_largest(fit_power_law, (x,), 1 + 1 / x, 6)
    assert error.value.argument == "x"  # so the CLI still names the column


def test_pf_day(published_constants):
    assert units.PF_DAY_FLOPS == published_constants["units"]["PF_day_FLOP"]
    assert units.pf_days_to_flops(units.flops_to_pf_days(5.76e23)) == pytest.approx(5.76e23)
    assert units.training_flops(1e9, 2e10) == pytest.approx(1.2e20)
    assert units.tokens_from_flops(1.2e20, 1e9) == pytest.approx(2e10)


# Henighan Table 3 restates Table 1's per-token L(C) per image: tokens per image are 8*8*3, 16*16*3,
# 32*32*3 (pixels x RGB) and 16*16, 32*32 (VQ codes).
PER_IMAGE = {"Image 16x16": ("16x16", 768), "Image 32x32": ("32x32", 3072), "Image VQ 16x16": ("64x64 (16x16 VQ)", 256), "Image VQ 32x32": ("64x64 (32x32 VQ)", 1024)}


def test_per_image_reading_reproduces_henighan_table3(published_constants):
    table1, table3 = published_constants["henighan2020_table1"], published_constants["henighan2020_table3_per_image"]
    for name, (row, tokens) in PER_IMAGE.items():
        law = table1[name]["L_C"]
        per_image = units.per_item({"L_inf": law["L_inf"], "x0": law["C0"], "alpha": law["alpha"]}, tokens)
        assert per_image["L_inf"] == pytest.approx(table3[row]["irreducible_nats_per_image"], rel=0.01), name
        c0 = float(table3[row]["reducible"].split("/")[1].split(")")[0])
        # Table 1's C0 has two digits, amplified by tokens^(1/alpha): agreement to 10%
        assert per_image["x0"] == pytest.approx(c0, rel=0.1), name


def test_per_image_8x8_row_of_table3_is_ten_times_off():
    # Table 1 (8x8): L_inf 3.13, C0 1.8e-8, alpha 0.19 per token; 192 tokens give C0 = 1.9e4 per image,
    # but the transcribed Table 3 reads 1.9e3 (the L_inf column, 602 nats, agrees). Recorded, not hidden.
    per_image = units.per_item({"L_inf": 3.13, "x0": 1.8e-8, "alpha": 0.19}, 192)
    assert per_image["L_inf"] == pytest.approx(602, rel=0.01)
    assert per_image["x0"] == pytest.approx(1.9e4, rel=0.05)


def learning_curves(sizes, rng, bad_largest=False):
    """One learning curve per size, L = (1e4/N)^0.3 + (2e5/tokens)^0.6 with 0.5% noise (rows: run, N, C, loss).
    bad_largest: the largest run stops inside the others' compute range, with a loss 5 nats too high."""
    run, n, c, loss = [], [], [], []
    for i, size in enumerate(sizes):
        bad = bad_largest and size == sizes[-1]
        tokens = np.geomspace(4e3, 4e4 if bad else 4e5, 25)
        curve = ((1e4 / size) ** 0.3 + (2e5 / tokens) ** 0.6) * np.exp(rng.normal(0, 0.005, tokens.size)) + 5.0 * bad
        run += [f"run{i}"] * tokens.size
        n += [size] * tokens.size
        c += list(6 * size * tokens)
        loss += list(curve)
    return np.array(run), np.array(n), np.array(c), np.array(loss)


def test_frontier_holdout_compares_the_kept_runs_law_with_the_held_out_runs_curves():
    from fastscale.fit import fit_frontier, holdout_largest_runs

    run, n, c, loss = learning_curves(np.geomspace(1e4, 1e7, 7), np.random.default_rng(11))
    check = holdout_largest_runs(run, n, c, loss, 2, n_bootstrap=30)
    assert list(check.held_out_runs) == ["run5", "run6"]
    assert len(check.compute) > 0 and set(check.run) <= {"run5", "run6"}
    for name, compute, observed in zip(check.run, check.compute, check.observed):
        rows = run == name
        own = np.exp(np.interp(np.log(compute), np.log(c[rows]), np.log(loss[rows])))
        assert observed == pytest.approx(own, rel=1e-12)  # the frontier there is the held-out run's curve
        for other in np.unique(run):
            other_rows = run == other
            if c[other_rows].min() <= compute <= c[other_rows].max():
                assert observed <= np.exp(np.interp(np.log(compute), np.log(c[other_rows]), np.log(loss[other_rows]))) * (1 + 1e-12)
    kept = ~np.isin(run, ["run5", "run6"])
    reference = fit_frontier(run[kept], n[kept], c[kept], loss[kept], n_bootstrap=0)
    assert np.allclose(check.predicted, reference.loss_fit.predict(check.compute), rtol=1e-9)
    assert np.allclose(check.relative_error, check.predicted / check.observed - 1)
    assert np.all(check.low <= check.predicted) and np.all(check.predicted <= check.high)


def test_frontier_holdout_refuses_runs_that_never_reach_the_frontier():
    from fastscale.fit import holdout_largest_runs

    run, n, c, loss = learning_curves(np.geomspace(1e4, 1e7, 6), np.random.default_rng(12), bad_largest=True)
    with pytest.raises(FitInputError, match=r"holdout_largest=1: the held-out runs \['run5'\] never reach the frontier of all runs"):
        holdout_largest_runs(run, n, c, loss, 1, n_bootstrap=0)
    with pytest.raises(FitInputError, match="holdout_largest=6: expected fewer than the 6 distinct model sizes"):
        holdout_largest_runs(run, n, c, loss, 6, n_bootstrap=0)


def test_holdout_splits_per_row_weights_with_the_rows():
    from fastscale.fit import fit_allocation

    rng = np.random.default_rng(13)
    c = np.geomspace(1e18, 1e22, 9)
    sigma = rng.uniform(0.01, 0.1, 9)
    n_opt = (c / 1e10) ** 0.5 * np.exp(rng.normal(0, sigma))
    check = holdout_largest(fit_allocation, (c,), n_opt, 2, per_row={"weights": sigma**-2}, n_bootstrap=0)
    manual = fit_allocation(c[:7], n_opt[:7], weights=sigma[:7] ** -2, n_bootstrap=0)
    unweighted = fit_allocation(c[:7], n_opt[:7], n_bootstrap=0)
    assert check.fit.params == pytest.approx(manual.params, rel=1e-12)
    assert check.fit.params["a"] != pytest.approx(unweighted.params["a"], rel=1e-6)  # the weights took effect
    assert np.allclose(check.predicted, manual.predict(c[[8, 7]]), rtol=1e-12)
    none = holdout_largest(fit_allocation, (c,), n_opt, 2, per_row={"weights": None}, n_bootstrap=0)
    assert none.fit.params == pytest.approx(unweighted.params, rel=1e-12)
