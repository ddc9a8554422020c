"""The fit figures: every plot function writes PNG and SVG; the logic is checked on the matplotlib artists
(which points are marked held out and where their predictions sit, slice colours against the colour bar's
norm, the band around the fitted curve, learning-curve colours, break lines, tick labels that do not
collide), not on pixels. Fits are made once per module on small synthetic data from published constants."""

import dataclasses
import itertools

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from fastscale.fit import plots
from fastscale.fit._checks import FitInputError
from fastscale.fit.broken import fit_broken_power_law
from fastscale.fit.data_constrained import PAPER_PARAMS, data_constrained_loss, fit_data_constrained
from fastscale.fit.frontier import fit_frontier
from fastscale.fit.holdout import holdout_largest, holdout_largest_runs
from fastscale.fit.overtrain import fit_overtrain
from fastscale.fit.power import fit_power_law

N_BOOTSTRAP = 40
# Hoffmann et al. 2022 (Chinchilla), eq. 10 / Table A3 (approach 3): E, A, B, alpha, beta.
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20261203)


@pytest.fixture(scope="module")
def power(rng):
    """L(N) = 2 + (3e4/N)^0.25, 0.3% noise; the 3 largest N held out."""
    x = np.geomspace(1e5, 1e9, 11)
    y = (2.0 + (3e4 / x) ** 0.25) * np.exp(rng.normal(0, 0.003, x.size))
    fit = fit_power_law(x, y, n_bootstrap=N_BOOTSTRAP)
    return fit, x, y, holdout_largest(fit_power_law, (x,), y, 3, n_bootstrap=N_BOOTSTRAP)


@pytest.fixture(scope="module")
def overtrain(rng):
    """Gadre et al. 2024's law at token multipliers 20-320 (their sweep's range), 0.3% noise; 3 rows of largest N held out."""
    n, multiplier = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 5), [20.0, 80.0, 320.0]))
    d = n * multiplier
    loss = (1.8 + 500.0 * n**-0.3 + 1500.0 * d**-0.3) * np.exp(rng.normal(0, 0.003, n.size))
    fit = fit_overtrain(n, d, loss, n_bootstrap=N_BOOTSTRAP)
    return fit, n, d, loss, holdout_largest(fit_overtrain, (n, d), loss, 3, n_bootstrap=N_BOOTSTRAP)


def learning_curves(rng, sizes=(2e6, 5e6, 1.2e7, 3e7, 8e7, 2e8)):
    """Runs of Chinchilla's law (CHINCHILLA) over 2e7-2e10 tokens, C = 6ND, 1% noise per logged point."""
    p = CHINCHILLA
    run, n, c, loss = [], [], [], []
    for size in sizes:
        tokens = np.geomspace(2e7, 2e10, 25)
        curve = (p["E"] + p["A"] / size ** p["alpha"] + p["B"] / tokens ** p["beta"]) * np.exp(rng.normal(0, 0.01, tokens.size))
        run += [f"N{size:.0e}"] * tokens.size
        n += [size] * tokens.size
        c += list(6 * size * tokens)
        loss += list(curve)
    return np.array(run), np.array(n), np.array(c), np.array(loss)


@pytest.fixture(scope="module")
def frontier(rng):
    run, n, c, loss = learning_curves(rng)
    fit = fit_frontier(run, n, c, loss, n_bootstrap=N_BOOTSTRAP)
    return fit, run, n, c, loss, holdout_largest_runs(run, n, c, loss, 1, n_bootstrap=N_BOOTSTRAP)


@pytest.mark.slow
def test_every_plot_writes_png_and_svg(tmp_path, rng, power, overtrain, frontier):
    fit, x, y, check = power
    broken_x = np.geomspace(1e3, 1e9, 20)
    broken_y = (0.5 + 10 * broken_x**-0.1 * (1 + (broken_x / 1e6) ** (1 / 0.3)) ** (-0.4 * 0.3)) * np.exp(rng.normal(0, 0.003, 20))
    broken = fit_broken_power_law(broken_x, broken_y, n_bootstrap=20)
    n, unique_d, epochs = (a.ravel() for a in np.meshgrid([1e8, 4e8, 1.6e9], [2e9, 8e9], [1.0, 4.0, 16.0, 60.0]))
    d = unique_d * epochs
    dc_loss = data_constrained_loss(PAPER_PARAMS, n, d, unique_d) * np.exp(rng.normal(0, 0.003, n.size))
    constrained = fit_data_constrained(n, d, unique_d, dc_loss, n_bootstrap=10)
    frontier_fit, run, sizes, compute, loss, frontier_check = frontier
    draw = {
        "law": lambda path: plots.plot_law(fit, x, y, path, holdout=check),
        "broken": lambda path: plots.plot_law(broken, broken_x, broken_y, path),
        "two_variable": lambda path: plots.plot_two_variable(*overtrain[:4], path, holdout=overtrain[4]),
        "data_constrained": lambda path: plots.plot_data_constrained(constrained, n, d, unique_d, dc_loss, path),
        "frontier": lambda path: plots.plot_frontier(frontier_fit, run, compute, loss, path, n_params=sizes, holdout=frontier_check),
    }
    for (name, plot), suffix in itertools.product(draw.items(), (".png", ".svg")):
        path = plot(tmp_path / f"{name}{suffix}")
        head = path.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if suffix == ".png" else (b"<svg" in head or b"<?xml" in head), name
        assert path.stat().st_size > 10_000, name
    with pytest.raises(FitInputError, match="expected a file name ending in one of"):
        plots.plot_law(fit, x, y, tmp_path / "law.jpg")


def artist(ax, label):
    """The one artist of the axes (collection, line or errorbar container) with this legend label."""
    found = [a for a in [*ax.collections, *ax.lines, *ax.containers] if a.get_label() == label]
    assert len(found) == 1, (label, [a.get_label() for a in [*ax.collections, *ax.lines, *ax.containers]])
    return found[0]


def colorbars(figure):
    """The figure's Colorbar objects (matplotlib keeps each on its axes as _colorbar)."""
    return [ax._colorbar for ax in figure.axes if getattr(ax, "_colorbar", None) is not None]


def band_edges(band, size):
    """Lower and upper edges of a fill_between polygon over `size` x values (start, lower edge, upper edge backwards, close)."""
    vertices = band.get_paths()[0].vertices
    return vertices[1 : size + 1], vertices[size + 2 : 2 * size + 2][::-1]


def prediction_bars(container):
    """x, predicted, low, high of an errorbar container drawn with yerr."""
    x, y = (np.asarray(v) for v in container.lines[0].get_data())
    segments = np.array(container.lines[2][0].get_segments())
    return x, y, segments[:, 0, 1], segments[:, 1, 1]


def test_holdout_law_draws_the_fit_without_the_held_out_points_and_marks_them(power):
    fit, x, y, check = power
    (ax,) = plots.figure_law(fit, x, y, holdout=check).axes
    held = artist(ax, plots.HELD_OUT_LABEL).get_offsets()
    assert sorted(held[:, 0]) == pytest.approx(x[-3:]) and sorted(held[:, 1]) == pytest.approx(sorted(y[-3:]))
    assert sorted(artist(ax, plots.FITTED_LABEL).get_offsets()[:, 0]) == pytest.approx(x[:-3])
    line = artist(ax, "fit without the 3 held-out points")
    grid, curve = line.get_data()
    assert grid.max() >= x.max()  # drawn as far as the points it predicts
    assert curve == pytest.approx(check.fit.predict(grid), rel=1e-12)
    assert not np.allclose(curve, fit.predict(grid), rtol=1e-6)  # not the fit of every point
    at, predicted, low, high = prediction_bars(artist(ax, plots.PREDICTED_LABEL.format(level=fit.level)))
    assert at == pytest.approx(x[check.held_out]) and at[0] == x.max()
    assert predicted == pytest.approx(check.fit.predict(at), rel=1e-12)
    reference_low, reference_high = check.fit.predict_interval(at)
    assert low == pytest.approx(reference_low, rel=1e-12) and high == pytest.approx(reference_high, rel=1e-12)
    assert np.all(low <= predicted) and np.all(predicted <= high)
    title = ax.get_title(loc="left")
    assert f"L_inf = {check.fit.params['L_inf']:.3g} [" in title and f"alpha = {check.fit.params['alpha']:.3g} [" in title


def slice_lines(ax, prefix):
    """The fitted lines whose label starts with prefix, with the value each is drawn at."""
    lines = [line for line in ax.lines if line.get_label().startswith(prefix)]
    return [(line, float(line.get_label()[len(prefix) :].split()[0])) for line in lines]


def test_two_variable_slices_take_the_colour_of_their_multiplier_from_the_points_norm(overtrain):
    """The over-training runs sit at 3 multipliers M = D/N: one line per M, each in the colour the points of
    that M have, through the colour bar's own norm, drawn from the fit without the held-out rows."""
    fit, n, d, loss, check = overtrain
    figure = plots.figure_two_variable(fit, n, d, loss, holdout=check)
    ax, parity = figure.axes[:2]
    (colorbar,) = colorbars(figure)
    points = artist(ax, plots.FITTED_LABEL)
    assert colorbar.mappable is points and colorbar.ax.get_ylabel().startswith("M = D/N")
    multiplier = d / n
    assert points.norm.vmin == pytest.approx(multiplier.min()) and points.norm.vmax == pytest.approx(multiplier.max())
    assert np.asarray(points.get_array()) == pytest.approx(np.delete(multiplier, check.held_out))
    slices = slice_lines(ax, "fit at M = ")
    assert sorted(value for _, value in slices) == pytest.approx([20.0, 80.0, 320.0], rel=1e-3)
    for line, value in slices:
        assert np.allclose(line.get_color(), points.get_cmap()(points.norm(value)))
        grid, curve = line.get_data()
        assert curve == pytest.approx(check.fit.predict(grid, value * grid), rel=1e-3)
    held = artist(ax, plots.HELD_OUT_LABEL).get_offsets()
    assert sorted(held[:, 0]) == pytest.approx(sorted(n[check.held_out]))
    observed = artist(parity, f"held out, {fit.level:.0%} prediction interval").lines[0].get_ydata()
    assert observed == pytest.approx(loss[check.held_out])


def test_two_variable_slices_by_D_on_a_grid_of_sizes_and_tokens(overtrain):
    """Runs on a grid of N and D (more distinct D/N than D): lines at D values the runs have, coloured by D."""
    fit = overtrain[0]
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e11, 4)))
    figure = plots.figure_two_variable(fit, n, d, fit.predict(n, d))
    ax = figure.axes[0]
    points = artist(ax, plots.FITTED_LABEL)
    assert colorbars(figure)[0].ax.get_ylabel() == "D (tokens)"
    slices = slice_lines(ax, "fit at D = ")
    assert len(slices) == 3
    for line, value in slices:
        exact = d[np.argmin(np.abs(np.log(d / value)))]
        assert value == pytest.approx(exact, rel=1e-2)  # a D the runs have
        assert np.allclose(line.get_color(), points.get_cmap()(points.norm(exact)), atol=0.02)


def test_frontier_band_contains_the_fitted_curve_and_is_the_draws_own(frontier):
    """The band is the bootstrap draws' percentile band; on these runs it surrounds the fitted L(C) at every
    grid point without being widened to reach it (the bug: draws of a lower envelope all above the fit)."""
    fit, run, n, compute, loss, _ = frontier
    figure = plots.figure_frontier(fit, run, compute, loss, n_params=n)
    ax = figure.axes[0]
    line = artist(ax, plots.FRONTIER_FIT_LABEL)
    grid, curve = line.get_data()
    band = artist(ax, plots.BAND_LABEL.format(level=fit.loss_fit.level))  # no "widened" note in the label
    lower, upper = band_edges(band, grid.size)
    assert lower[:, 0] == pytest.approx(grid) and upper[:, 0] == pytest.approx(grid)
    assert np.all(lower[:, 1] <= curve) and np.all(curve <= upper[:, 1])
    assert np.all(lower[:, 1] < upper[:, 1])


def test_a_band_widened_to_reach_the_fit_says_so(power):
    """Draws that all lie above the fit (as a lower envelope's can): the band is widened down to the curve,
    and its legend label counts the grid points where that was done."""
    fit, x, y, _ = power
    shifted = dataclasses.replace(fit, samples=fit.samples + [0.05, 0.0, 0.0])  # every draw's L_inf 0.05 higher
    (ax,) = plots.figure_law(shifted, x, y).axes
    grid, curve = artist(ax, "fit").get_data()
    band = artist(ax, plots.BAND_LABEL.format(level=fit.level) + f" (widened to the fit at {grid.size} of {grid.size} points)")
    lower, upper = band_edges(band, grid.size)
    assert lower[:, 1] == pytest.approx(curve, rel=1e-12) and np.all(upper[:, 1] > curve)


def test_frontier_learning_curves_coloured_by_their_size(frontier):
    fit, run, n, compute, loss, check = frontier
    figure = plots.figure_frontier(fit, run, compute, loss, n_params=n, holdout=check)
    ax = figure.axes[0]
    (colorbar,) = colorbars(figure)
    assert "N (parameters)" in colorbar.ax.get_ylabel()
    norm, cmap = colorbar.norm, colorbar.cmap
    assert norm.vmin == pytest.approx(n.min()) and norm.vmax == pytest.approx(n.max())
    curves = {line.get_gid(): line for line in ax.lines if line.get_gid()}
    assert set(curves) == set(np.unique(run))
    for name, line in curves.items():
        size = n[run == name][0]
        assert np.allclose(line.get_color(), cmap(norm(size)))
        assert line.get_linestyle() == ("--" if name in check.held_out_runs else "-")
    assert list(check.held_out_runs) == [run[np.argmax(n)]]
    size = len(check.compute)
    assert size > plots.MAX_PREDICTION_BARS  # every grid point the held-out run leads: too many bars to read
    label = plots.PREDICTED_LABEL.format(level=fit.loss_fit.level) + f" ({plots.MAX_PREDICTION_BARS} of {size} shown)"
    at, predicted, low, high = prediction_bars(artist(ax, label))
    assert len(at) == plots.MAX_PREDICTION_BARS and np.isin(at, check.compute).all()
    assert at[0] == check.compute[0] and at[-1] == check.compute[-1]
    assert predicted == pytest.approx(check.fit.loss_fit.predict(at), rel=1e-12)
    legend = plots.figure_frontier(fit, run, compute, loss).axes[0].get_legend()
    assert set(np.unique(run)) <= {text.get_text() for text in legend.get_texts()}  # without sizes, runs are named


def test_broken_power_law_marks_its_breaks(rng):
    x = np.geomspace(1e3, 1e9, 20)
    y = (0.5 + 10 * x**-0.1 * (1 + (x / 1e6) ** (1 / 0.3)) ** (-0.4 * 0.3)) * np.exp(rng.normal(0, 0.003, x.size))
    fit = fit_broken_power_law(x, y, n_bootstrap=20)
    (ax,) = plots.figure_law(fit, x, y).axes
    (line,) = [line for line in ax.lines if line.get_label().startswith("break d1")]
    assert line.get_xdata()[0] == pytest.approx(fit.params["d1"])
    assert fit.params["d1"] == pytest.approx(1e6, rel=0.3)


def overlapping_texts(figure):
    """Pairs of visible tick labels on one axis, or axis labels, whose boxes intersect once drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    groups = []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            groups.append([t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()])
    labels = [ax.xaxis.label for ax in figure.axes] + [ax.yaxis.label for ax in figure.axes]
    groups.append([t for t in labels if t.get_text()])
    clashes = []
    for texts in groups:
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
        clashes += [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
    return clashes


def test_no_tick_or_axis_labels_overlap(power, overtrain, frontier):
    fit, x, y, check = power
    frontier_fit, run, n, compute, loss, _ = frontier
    narrow = y[:4]  # loss spanning a fraction of a decade: the case matplotlib labels every minor tick
    figures = [
        plots.figure_law(fit, x, y, holdout=check),
        plots.figure_law(fit, x[:4], narrow),
        plots.figure_two_variable(*overtrain[:4]),
        plots.figure_frontier(frontier_fit, run, compute, loss, n_params=n),
    ]
    for figure in figures:
        assert overlapping_texts(figure) == []
    labels = [t.get_text() for t in figures[1].axes[0].yaxis.get_ticklabels() if t.get_visible() and t.get_text()]
    assert len(labels) >= 3  # the narrow axis still has numbers to read


def test_scaling_figure_draws_the_reducible_loss_as_a_line_of_slope_minus_alpha(power, tmp_path):
    fit, x, y, check = power
    others = {"budget 1e9 tokens (not fitted)": (x[:4], y[:4] + 0.05)}
    figure = plots.figure_scaling(fit, x, y, xlabel="N (parameters)", holdout=check, others=others, names={"x0": "N0"})
    ax, reducible = figure.axes
    assert reducible.get_xscale() == reducible.get_yscale() == "log"
    line = artist(reducible, "fit: (N0/x)^alpha")
    grid, drawn = (np.asarray(v) for v in line.get_data())
    slope = np.diff(np.log(drawn)) / np.diff(np.log(grid))
    np.testing.assert_allclose(slope, -fit.params["alpha"], rtol=1e-9)  # a straight line on log-log axes
    points = artist(reducible, plots.FITTED_LABEL).get_offsets()
    held = np.zeros(len(x), dtype=bool)
    held[check.held_out] = True
    np.testing.assert_allclose(points, np.column_stack([x[~held], y[~held] - fit.params["L_inf"]]))  # observed L - L_inf
    marked = artist(reducible, "held out by the extrapolation check (in this fit)").get_offsets()
    assert sorted(marked[:, 0]) == sorted(x[held])
    hollow = artist(ax, "budget 1e9 tokens (not fitted)").get_offsets()
    np.testing.assert_allclose(hollow, np.column_stack([x[:4], y[:4] + 0.05]))  # every run shown, the unfitted ones too
    assert "N0 = " in ax.get_title(loc="left") and "x0" not in ax.get_title(loc="left")  # the text's names
    for panel in (ax, reducible):
        assert panel.get_xlabel() and "nats/token" in panel.get_ylabel()
        labels = [t.get_text() for t in panel.yaxis.get_ticklabels() if t.get_text() and panel.get_ylim()[0] <= t.get_position()[1] <= panel.get_ylim()[1]]
        assert len(labels) >= 3, labels  # enough ticks to read a value off
    plots.plot_scaling(fit, x, y, tmp_path / "scaling.png", xlabel="N")
    assert (tmp_path / "scaling.png").stat().st_size > 10_000


def test_frontier_colour_bar_has_a_tick_at_each_size(frontier):
    frontier_fit, run, sizes, compute, loss, _ = frontier
    figure = plots.figure_frontier(frontier_fit, run, compute, loss, n_params=sizes)
    (bar,) = colorbars(figure)
    np.testing.assert_allclose(bar.get_ticks(), np.unique(sizes))
    assert [t.get_text() for t in bar.ax.yaxis.get_ticklabels()] == [f"{s:.3g}" for s in np.unique(sizes)]
    assert np.all(np.diff(frontier_fit.frontier.loss) <= 0)  # the envelope drawn never rises


def test_noise_scale_figure_colours_by_size_styles_by_budget_and_draws_the_fit(rng):
    from fastscale.fit.critical_batch import fit_critical_batch_vs_loss

    series, n_params, budgets = {}, {}, {}
    for i, (size, tokens) in enumerate(itertools.product([1e4, 1e5, 1e6], [2e5, 6e5])):
        steps = np.arange(10.0, 200.0, 10.0) * (tokens / 2e5)
        loss = 2.0 + 3.0 / np.sqrt(steps) + 1e2 / size**0.3
        series[f"r{i}"] = np.column_stack([steps, loss, 300.0 / loss**2 * np.exp(rng.normal(0, 0.02, steps.size))])
        n_params[f"r{i}"], budgets[f"r{i}"] = size, tokens
    points = np.concatenate(list(series.values()))
    fit = fit_critical_batch_vs_loss(points[:, 1], points[:, 2], n_bootstrap=0)
    figure = plots.figure_noise_scale(series, n_params, budgets, fit)
    by_step, by_loss = figure.axes[:2]
    lines = {line.get_gid(): line for line in by_step.lines if line.get_gid()}
    assert len({tuple(lines[name].get_color()) for name in series}) == 3  # one colour per size
    for name in series:
        same_size = [other for other in series if n_params[other] == n_params[name]]
        assert {tuple(lines[o].get_color()) for o in same_size} == {tuple(lines[name].get_color())}
        assert lines[name].get_linestyle() == ("-" if budgets[name] == 2e5 else "--")
    fitted = artist(by_loss, "B_crit(L) fit")
    grid, drawn = (np.asarray(v) for v in fitted.get_data())
    np.testing.assert_allclose(drawn, fit.params["B_star"] / grid ** (1 / fit.params["alpha_B"]), rtol=1e-9)
    (bar,) = colorbars(figure)
    np.testing.assert_allclose(bar.get_ticks(), [1e4, 1e5, 1e6])
    assert "(tokens)" in by_step.get_ylabel() and by_step.get_xlabel() == "optimizer step" and "nats/token" in by_loss.get_xlabel()
