"""Figures for fitted laws: the data, the fit, its bootstrap band and, with a holdout, the held-out points
and their predictions. PNG or SVG by suffix.

Every figure states its law and the parameters with their intervals (title), labels its axes with units,
draws power laws on log-log axes with tick labels that do not collide, and colours data by a third
variable with one colormap and norm shared by the points, the fitted lines and the colour bar, so a
line's colour says which points it should pass through.

With a holdout (`holdout.holdout_largest`, `holdout.holdout_largest_runs`) the curve drawn is the fit
without the held-out points, the one whose predictions are being judged: the held-out points are
marked (a distinct marker) and their predictions drawn with their bootstrap intervals.

The `figure_*` functions build a matplotlib Figure (tests read its artists); the `plot_*` functions save
it. matplotlib is imported inside the functions (so `fastscale fit` without plots never loads it), and
figures are built with matplotlib.figure.Figure, never pyplot, so no global backend or window state is
touched.
"""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path

import numpy as np

from fastscale.fit._checks import FitInputError
from fastscale.fit.results import _percentiles
from fastscale.io import write_atomically

FORMATS = (".png", ".svg")
BAND_ALPHA = 0.25
FIT_COLOR = "C3"
COLORMAP = "viridis"
SLICE_QUANTILES = (0.1, 0.5, 0.9)
PARAMS_PER_LINE = 3
GRID_POINTS = 200
MAX_PREDICTION_BARS = 8
# Labels used to find the artists again (legend entries, and the tests).
FITTED_LABEL = "data (fitted)"
HELD_OUT_LABEL = "held out (observed)"
PREDICTED_LABEL = "held out: prediction, {level:.0%} interval"
BAND_LABEL = "{level:.0%} bootstrap band"
LOSS_LABEL = "loss (nats/token)"
# L(C) is fitted on or below every frontier point (fit_frontier), so it sits under the frontier it summarizes;
# its bootstrap draws, refitted on resampled runs, lean above it (see figure_frontier).
FRONTIER_FIT_LABEL = "L(C) fit, on or below the frontier"

FORMULAS = {
    "power": "L = L_inf + (x0/x)^alpha",
    "pure power": "L = (x0/x)^alpha",
    "broken": "y = a + b x^-c0 prod_i (1 + (x/d_i)^(1/f_i))^(-c_i f_i)",
    "allocation": "N_opt = (C/C0)^a",
    "critical-batch": "(S/S_min - 1)(E/E_min - 1) = 1",
    "critical-batch-vs-loss": "B_crit = B_star / L^(1/alpha_B)",
    "chinchilla": "L = E + A/N^alpha + B/D^beta",
    "kaplan-nd": "L = [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D",
    "overtrain": "L = E + A/N^alpha + B/D^alpha",
    "data-constrained": "L = E + A/N'^alpha + B/D'^beta",
}


def _figure(n_panels: int):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0 * n_panels, 4.8), layout="constrained")
    figure.get_layout_engine().set(wspace=0.06)  # room between a colour bar's label and the next panel's axis label
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    for ax in axes:
        ax.set_xscale("log"), ax.set_yscale("log"), ax.grid(True, which="both", alpha=0.3)
    return figure, axes


def save_figure(figure, path) -> Path:
    """Save atomically (fastscale.io.write_atomically), format from the suffix (.png or .svg)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise FitInputError(f"plot path {str(path)!r}: expected a file name ending in one of {FORMATS}")
    image = BytesIO()
    figure.savefig(image, format=path.suffix.lower()[1:], dpi=150)
    write_atomically(path, image.getvalue())
    return path


def _finished(figure):
    for ax in figure.axes:
        if getattr(ax, "_colorbar", None) is None:  # a colour bar keeps the ticks it was given (size_colorbar)
            readable_log_ticks(ax)
    return figure


def readable_log_ticks(ax) -> None:
    """No minor tick labels, and log axes spanning under two decades get major labels at chosen mantissas:
    matplotlib's default labels minor ticks there (2, 3, 4, 6 x 10^k), which collide on a narrow panel,
    or (from ~1.5 decades) only the one or two powers of ten inside, too few to read a value off.
    Under half a decade, mantissas leave one or two labels, so the ticks are linear ones (AutoLocator)."""
    from matplotlib.ticker import AutoLocator, FuncFormatter, LogLocator, NullFormatter

    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale != "log":
            continue
        low, high = sorted(axis.get_view_interval())
        axis.set_minor_formatter(NullFormatter())
        if high / low >= 100:
            continue
        if high / low < 3:
            axis.set_major_locator(AutoLocator())
        else:
            # Under a decade, a y axis has room for every integer mantissa; an x axis, whose labels are wide, for 1, 2, 5.
            dense = axis is ax.yaxis and high / low < 10
            axis.set_major_locator(LogLocator(subs=np.arange(1.0, 10.0) if dense else (1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: _tick_text(value)))


def _tick_text(value: float) -> str:
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:g}"
    exponent = int(np.floor(np.log10(abs(value))))
    mantissa = value / 10.0**exponent
    return f"$10^{{{exponent}}}$" if round(mantissa, 6) == 1 else f"${mantissa:g}\\times10^{{{exponent}}}$"


def _number(value: float) -> str:
    return f"{value:.3g}"


def parameter_text(fit, names=None) -> str:
    """'name = value [low, high]' for every parameter (no interval without bootstrap draws), a few per line.
    names: the names the surrounding text gives parameters (x0 -> N0), so the figure and the text agree."""
    names = names or {}
    items = []
    for name, value in fit.params.items():
        interval = fit.intervals.get(name)
        bounds = f" [{_number(interval[0])}, {_number(interval[1])}]" if interval is not None else ""
        items.append(f"{names.get(name, name)} = {_number(value)}{bounds}")
    lines = ["   ".join(items[i : i + PARAMS_PER_LINE]) for i in range(0, len(items), PARAMS_PER_LINE)]
    return "\n".join(lines)


def _title(ax, fit, what: str = "", names=None) -> None:
    """The law, its parameters with their intervals, and the kinds of its flags (the CLI prints them whole);
    names: parameter names as the surrounding text gives them (x0 -> N0), in the formula too."""
    interval = f" ({fit.level:.0%} bootstrap intervals)" if fit.intervals else ""
    formula = FORMULAS.get(fit.law, "")
    for name, text in (names or {}).items():
        formula = re.sub(rf"\b{re.escape(name)}\b", text, formula)
    lines = [f"{what}{fit.law}: {formula}{interval}", parameter_text(fit, names)]
    kinds = sorted({flag.split(":")[0] for flag in fit.flags})
    if kinds:
        lines.append("flags: " + ", ".join(kinds))
    ax.set_title("\n".join(lines), fontsize=7.5, loc="left")


def _draw_law(ax, fit, x, label):
    """The fitted curve over the data's range extended by half a decade each side, with its band: the
    percentile band of the bootstrap draws, which `predict_interval` widens to reach the curve where the
    draws lie on one side of it; the legend says at how many of the grid points that happened."""
    grid = np.geomspace(x.min() / 3, x.max() * 3, GRID_POINTS)
    ax.plot(grid, fit.predict(grid), color=FIT_COLOR, label=label, zorder=4)
    if not len(fit.samples):
        return
    low, high = fit.predict_interval(grid)
    widened = _widened_points(fit, grid, low, high)
    note = f" (widened to the fit at {widened} of {len(grid)} points)" if widened else ""
    ax.fill_between(grid, low, high, color=FIT_COLOR, alpha=BAND_ALPHA, label=BAND_LABEL.format(level=fit.level) + note)


def _widened_points(fit, grid, low, high) -> int:
    """How many grid points' band differs from the draws' own percentile interval."""
    raw_low, raw_high = _percentiles(fit.sample_values(lambda p: fit._law(p, grid)), fit.level)
    return int(np.count_nonzero((low < raw_low) | (high > raw_high)))


def _held_out_mask(size: int, holdout) -> np.ndarray:
    """True for the points the holdout fit left out (its indices count the points given to the plot)."""
    mask = np.zeros(size, dtype=bool)
    if holdout is not None:
        mask[holdout.held_out] = True
    return mask


def _draw_predictions(ax, x, holdout, level: float) -> None:
    """Predictions of the held-out points at x (in the check's order, most extreme first), with their
    bootstrap intervals as error bars; at most MAX_PREDICTION_BARS of them, evenly spread (a frontier
    holdout predicts every grid point a held-out run leads, dozens of bars that would merge), the
    legend saying how many are shown."""
    shown = np.unique(np.linspace(0, len(x) - 1, min(len(x), MAX_PREDICTION_BARS)).round().astype(np.int64))
    predicted = np.asarray(holdout.predicted, dtype=np.float64)[shown]
    low, high = (np.asarray(bound, dtype=np.float64)[shown] for bound in (holdout.low, holdout.high))
    known = np.isfinite(low) & np.isfinite(high)
    errors = np.where(known, [predicted - low, high - predicted], 0.0)
    label = PREDICTED_LABEL.format(level=level) + (f" ({len(shown)} of {len(x)} shown)" if len(shown) < len(x) else "")
    ax.errorbar(np.asarray(x)[shown], predicted, yerr=errors, fmt="x", color="k", ms=7, capsize=3, zorder=6, label=label)


def _mark_breaks(ax, fit) -> None:
    """A broken power law's breaks d_i: a dashed line at the estimate, shaded over its interval."""
    for name in (p for p in fit.params if p.startswith("d")):
        value = fit.params[name]
        ax.axvline(value, color="0.3", ls="--", lw=1, label=f"break {name} = {_number(value)}", zorder=2)
        if name in fit.intervals:
            ax.axvspan(*fit.intervals[name], color="0.5", alpha=0.12, zorder=1)


def figure_law(fit, x, y, *, xlabel: str = "x", ylabel: str = LOSS_LABEL, holdout=None):
    """Data and a one-variable law (power law, broken power law, allocation, critical batch) on log-log axes.
    holdout: a `holdout_largest` check on these x, y; the curve drawn is then its fit, without the held-out points."""
    figure, (ax,) = _figure(1)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    held = _held_out_mask(len(x), holdout)
    drawn = fit if holdout is None else holdout.fit
    ax.scatter(x[~held], y[~held], s=16, color="C0", label=FITTED_LABEL, zorder=3)
    k = int(held.sum())
    label = "fit" if holdout is None else f"fit without the {k} held-out point{'s' * (k != 1)}"
    _draw_law(ax, drawn, x, label)
    if held.any():
        ax.scatter(x[held], y[held], s=40, marker="D", facecolors="none", edgecolors="C1", linewidths=1.5, label=HELD_OUT_LABEL, zorder=5)
        _draw_predictions(ax, x[holdout.held_out], holdout, drawn.level)
    if drawn.law == "broken":
        _mark_breaks(ax, drawn)
    _title(ax, drawn)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.legend(fontsize=7)
    return _finished(figure)


def plot_law(fit, x, y, path, *, xlabel: str = "x", ylabel: str = LOSS_LABEL, holdout=None) -> Path:
    """`figure_law`, saved to path."""
    return save_figure(figure_law(fit, x, y, xlabel=xlabel, ylabel=ylabel, holdout=holdout), path)


def _log_norm(values):
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=float(np.min(values)), vmax=float(np.max(values)))


def _slices(values) -> np.ndarray:
    """The values the fitted lines are drawn at: quantiles of the data, snapped to values the data hold,
    so each line has points of its own colour to pass through."""
    _, first = np.unique(np.round(np.log10(values), 3), return_index=True)  # as _distinct counts them
    values = np.asarray(values)[first]
    return np.unique([values[int(round(q * (len(values) - 1)))] for q in SLICE_QUANTILES])


def _draw_two_variable_data(ax, x, loss, colour_values, norm, held):
    from matplotlib import colormaps

    cmap = colormaps[COLORMAP]
    points = ax.scatter(x[~held], loss[~held], c=colour_values[~held], cmap=cmap, norm=norm, s=14, zorder=3, label=FITTED_LABEL)
    if held.any():
        ax.scatter(x[held], loss[held], s=44, marker="D", facecolors="none", edgecolors=cmap(norm(colour_values[held])), linewidths=1.5,
                   label=HELD_OUT_LABEL, zorder=5)
    return points, cmap


def _parity(ax, fit, inputs, loss, held, holdout) -> None:
    """Observed against predicted by the drawn fit; held-out points with their prediction intervals."""
    ax.set_xscale("linear"), ax.set_yscale("linear")
    predicted = fit.predict(*inputs)
    ax.scatter(predicted[~held], loss[~held], s=10, color="C0", label=FITTED_LABEL)
    if held.any():
        low, high = np.asarray(holdout.low), np.asarray(holdout.high)
        known = np.isfinite(low) & np.isfinite(high)
        errors = np.where(known, [holdout.predicted - low, high - holdout.predicted], 0.0)
        ax.errorbar(holdout.predicted, holdout.observed, xerr=errors, fmt="D", mfc="none", color="C1", ms=6, capsize=3,
                    label=f"held out, {fit.level:.0%} prediction interval")
    span = [min(predicted.min(), loss.min()), max(predicted.max(), loss.max())]
    ax.plot(span, span, color="k", lw=0.8, label="observed = predicted")
    ax.set_xlabel(f"predicted {LOSS_LABEL}"), ax.set_ylabel(f"observed {LOSS_LABEL}"), ax.legend(fontsize=7)


def figure_two_variable(fit, n, d, loss, *, holdout=None):
    """Loss against N coloured by D, the law at three values of D (each line in the colour of its D, from the
    points' colormap and norm), and observed against predicted. When the runs hold fewer distinct tokens per
    parameter M = D/N than distinct D (an over-training sweep at a few multipliers, Gadre et al. 2024), the
    colour and the lines are by M instead, so each line follows the runs of one multiplier.
    holdout: a `holdout_largest` check on these rows; its fit is drawn and the held-out rows are marked and predicted."""
    figure, (ax, parity) = _figure(2)
    n, d, loss = (np.asarray(v, dtype=np.float64) for v in (n, d, loss))
    held = _held_out_mask(len(n), holdout)
    drawn = fit if holdout is None else holdout.fit
    by_multiplier = _distinct(d / n) < _distinct(d)
    colour = d / n if by_multiplier else d
    norm = _log_norm(colour)
    points, cmap = _draw_two_variable_data(ax, n, loss, colour, norm, held)
    figure.colorbar(points, ax=ax, label="M = D/N (tokens per parameter)" if by_multiplier else "D (tokens)")
    grid = np.geomspace(n.min() / 2, n.max() * 2, 200)
    for value in _slices(colour):
        tokens = value * grid if by_multiplier else np.full_like(grid, value)
        label = f"fit at M = {value:.3g} tokens/parameter" if by_multiplier else f"fit at D = {value:.3g} tokens"
        ax.plot(grid, drawn.predict(grid, tokens), lw=1.8, color=cmap(norm(value)), label=label)
    if held.any():
        _draw_predictions(ax, n[holdout.held_out], holdout, drawn.level)
    ax.legend(fontsize=7)
    ax.set_xlabel("N (parameters)"), ax.set_ylabel(LOSS_LABEL)
    _title(ax, drawn)
    _parity(parity, drawn, (n, d), loss, held, holdout)
    return _finished(figure)


def _distinct(values) -> int:
    """Distinct values to 3 significant digits (a multiplier computed as D/N carries rounding)."""
    return len(np.unique(np.round(np.log10(values), 3)))


def plot_two_variable(fit, n, d, loss, path, *, holdout=None) -> Path:
    """`figure_two_variable`, saved to path."""
    return save_figure(figure_two_variable(fit, n, d, loss, holdout=holdout), path)


def figure_data_constrained(fit, n, d, unique_d, loss, *, holdout=None):
    """Loss against D coloured by N, the law at three model sizes for the median unique data U_D (each line in
    the colour of its N; the bend past the dotted line is repeated data losing value), and observed
    against predicted for every run, whatever its U_D."""
    figure, (ax, parity) = _figure(2)
    n, d, unique_d, loss = (np.asarray(v, dtype=np.float64) for v in (n, d, unique_d, loss))
    held = _held_out_mask(len(n), holdout)
    drawn = fit if holdout is None else holdout.fit
    norm = _log_norm(n)
    points, cmap = _draw_two_variable_data(ax, d, loss, n, norm, held)
    figure.colorbar(points, ax=ax, label="N (parameters)")
    unique = float(np.median(unique_d))
    grid = np.geomspace(unique, d.max() * 2, 200)  # the law holds from one epoch on (D >= U_D)
    for size in _slices(n):
        prediction = drawn.predict(np.full_like(grid, size), grid, np.full_like(grid, unique))
        ax.plot(grid, prediction, lw=1.8, color=cmap(norm(size)), label=f"fit at N = {size:.3g}, U_D = {unique:.3g}")
    ax.axvline(unique, color="0.3", ls=":", lw=1, label=f"one epoch of U_D = {unique:.3g} tokens")
    if held.any():
        _draw_predictions(ax, d[holdout.held_out], holdout, drawn.level)
    ax.legend(fontsize=7)
    ax.set_xlabel("D (tokens, repeated epochs included)"), ax.set_ylabel(LOSS_LABEL)
    _title(ax, drawn)
    _parity(parity, drawn, (n, d, unique_d), loss, held, holdout)
    return _finished(figure)


def plot_data_constrained(fit, n, d, unique_d, loss, path, *, holdout=None) -> Path:
    """`figure_data_constrained`, saved to path."""
    return save_figure(figure_data_constrained(fit, n, d, unique_d, loss, holdout=holdout), path)


def _draw_learning_curves(figure, ax, run, compute, loss, n_params, held_runs):
    """One line per run, coloured by its model size N (colour bar), dashed for held-out runs; without
    n_params, each run named in the legend instead."""
    from matplotlib import colormaps

    cmap = colormaps[COLORMAP]
    sizes = None if n_params is None else np.asarray(n_params, dtype=np.float64)
    norm = None if sizes is None else _log_norm(sizes)
    for i, name in enumerate(np.unique(run)):
        rows = run == name
        order = np.argsort(compute[rows])
        held = name in held_runs
        color = f"C{i % 10}" if sizes is None else cmap(norm(np.median(sizes[rows])))
        label = str(name) if sizes is None else None
        ax.plot(compute[rows][order], loss[rows][order], lw=1.0, alpha=0.85, color=color, ls="--" if held else "-", label=label, gid=str(name))
    if sizes is not None:
        from matplotlib.cm import ScalarMappable

        size_colorbar(figure, ScalarMappable(norm=norm, cmap=cmap), ax, sizes, "N (parameters) of each learning curve")
    if len(held_runs):
        ax.plot([], [], color="0.4", ls="--", label="held-out runs (not fitted)")


def figure_frontier(frontier_fit, run, compute, loss, *, n_params=None, clabel: str = "compute (FLOPs)", holdout=None):
    """Learning curves (coloured by N, a colour bar with a tick at each size) with their lower envelope
    (monotone: the lowest loss with at most C, `frontier.compute_frontier`) and L(C); N_opt(C) from the
    frontier runs.
    holdout: a `holdout_largest_runs` check on these rows: the frontier and laws drawn are those fitted
    without the held-out runs, whose curves are dashed, and L(C)'s predictions are drawn where they
    reach the frontier of all runs.

    L(C)'s band is the percentile band of its bootstrap refits and often lies mostly above the curve: a
    resample that leaves out a run drops that run's stretch of frontier, and with it the constraint that
    held the curve down there, so refits rise where runs are missing. The curve itself lies under the true
    frontier: on synthetic Chinchilla learning curves (6 sizes, 25 points each, 8 seeds) the closed-form
    frontier min_N L(N, C/6N) was above the fitted L(C) at 98%, 99% and 100% of the grid for 0.1%, 0.3%
    and 1% loss noise, and inside the band at 92%, 75% and 50% of it. So the band leans the way the truth
    lies, but does not reach it on noisy curves. Where every draw lies on one side of the curve the band is
    widened to reach it, and its legend label says at how many grid points."""
    figure, (ax, sizes) = _figure(2)
    run, compute, loss = np.asarray(run), np.asarray(compute, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    drawn = frontier_fit if holdout is None else holdout.fit
    held_runs = () if holdout is None else tuple(holdout.held_out_runs)
    _draw_learning_curves(figure, ax, run, compute, loss, n_params, held_runs)
    frontier = drawn.frontier
    what = "frontier (lower envelope)" if holdout is None else "frontier of the runs fitted"
    ax.plot(frontier.compute, frontier.loss, color="k", lw=2, label=what)
    _draw_law(ax, drawn.loss_fit, frontier.compute, FRONTIER_FIT_LABEL)
    if holdout is not None:
        ax.scatter(holdout.compute, holdout.observed, s=40, marker="D", facecolors="none", edgecolors="C1", linewidths=1.5,
                   label="frontier of all runs, reached by held-out runs", zorder=5)
        _draw_predictions(ax, holdout.compute, holdout, drawn.loss_fit.level)
    ax.set_xlabel(clabel), ax.set_ylabel(LOSS_LABEL), ax.legend(fontsize=7)
    _title(ax, drawn.loss_fit, "L(C), ", names={"x0": "C0"})
    sizes.scatter(drawn.optimal_compute, drawn.optimal_n_params, color="C0", zorder=3, label="runs on the frontier")
    _draw_law(sizes, drawn.allocation, drawn.optimal_compute, "N_opt(C) fit")
    sizes.set_xlabel(clabel), sizes.set_ylabel("N_opt (parameters)"), sizes.legend(fontsize=7)
    _title(sizes, drawn.allocation)
    return _finished(figure)


def plot_frontier(frontier_fit, run, compute, loss, path, *, n_params=None, clabel: str = "compute (FLOPs)", holdout=None) -> Path:
    """`figure_frontier`, saved to path."""
    return save_figure(figure_frontier(frontier_fit, run, compute, loss, n_params=n_params, clabel=clabel, holdout=holdout), path)


def figure_scaling(fit, x, y, *, xlabel: str, ylabel: str = LOSS_LABEL, holdout=None, others=None, names=None):
    """A power law with an irreducible term as the papers draw it: the loss L against x, and the reducible
    loss L - L_inf on log-log axes, where L = L_inf + (x0/x)^alpha is a straight line of slope -alpha.

    fit: the law the text reports, drawn in both panels with its band. holdout: a `holdout_largest` check
    on these x, y: the held-out points are marked in both panels, and on the left the prediction of the
    fit without them, with its interval. others: label -> (x, y) of runs not fitted (shorter budgets),
    drawn hollow so every run is on the figure. names: parameter names of the text (x0 -> N0).
    Points at or below L_inf have no reducible loss on a log axis: the right panel's legend counts them."""
    figure, (ax, reducible) = _figure(2)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    held = _held_out_mask(len(x), holdout)
    l_inf = fit.params.get("L_inf", 0.0)
    for panel, values, law in ((ax, y, fit.predict), (reducible, y - l_inf, fit.reducible)):
        panel.scatter(x[~held], values[~held], s=18, color="C0", label=FITTED_LABEL, zorder=3)
        if held.any():
            panel.scatter(x[held], values[held], s=46, marker="D", facecolors="none", edgecolors="C1", linewidths=1.6,
                          label="held out by the extrapolation check (in this fit)", zorder=5)
        for i, (label, (other_x, other_y)) in enumerate((others or {}).items()):
            other_x, other_y = np.asarray(other_x, dtype=np.float64), np.asarray(other_y, dtype=np.float64)
            shown = other_y if panel is ax else other_y - l_inf
            panel.scatter(other_x, shown, s=22, marker="os^v"[i % 4], facecolors="none", edgecolors=f"C{i + 2}", linewidths=1.2, label=label, zorder=3)
    _draw_law(ax, fit, x, "fit")
    ax.axhline(l_inf, color="0.4", ls=":", lw=1, label=f"L_inf = {_number(l_inf)}")
    grid = np.geomspace(x.min() / 3, x.max() * 3, GRID_POINTS)
    line = fit.reducible(grid)
    reducible.plot(grid, line, color=FIT_COLOR, zorder=4, label=f"fit: ({(names or {}).get('x0', 'x0')}/x)^alpha")
    # the band's lower edge reaches L_inf (0 on this axis) where the draws' asymptotes lie above the fit's:
    # the axis stops at half the smallest reducible loss drawn, not at the band's edge
    floor = 0.5 * min(line.min(), *(y - l_inf)[y > l_inf])
    if len(fit.samples):
        low, high = fit.predict_interval(grid)  # the band of L, less the fitted L_inf: the uncertainty of the curve drawn on the left
        reducible.fill_between(grid, np.maximum(low - l_inf, floor), np.maximum(high - l_inf, floor), color=FIT_COLOR, alpha=BAND_ALPHA,
                               label=BAND_LABEL.format(level=fit.level) + " of L, less L_inf")
    reducible.set_ylim(bottom=floor)
    # a band of an undetermined law can span decades above the data: the axes stop a little above the
    # points and the curve, so the data stay readable (the band runs off the top, and the flags say why)
    shown = [y, fit.predict(grid), *(np.asarray(other_y, dtype=np.float64) for _, other_y in (others or {}).values())]
    _cap_top(ax, max(float(np.max(v)) for v in shown), 1.5)
    _cap_top(reducible, max(float(np.max(v - l_inf)) for v in shown), 3.0)
    if holdout is not None:
        _draw_predictions(ax, x[holdout.held_out], holdout, holdout.fit.level)
    below = int(np.sum(y <= l_inf))
    if below:
        reducible.plot([], [], " ", label=f"{below} point{'s' * (below != 1)} at or below L_inf (not drawn)")
    _title(ax, fit, names=names)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.legend(fontsize=7)
    reducible.set_title("reducible loss L - L_inf on log-log axes: the power law is a straight line", fontsize=7.5, loc="left")
    reducible.set_xlabel(xlabel), reducible.set_ylabel(f"L - L_inf ({ylabel.split('(')[-1].rstrip(')') if '(' in ylabel else 'nats/token'})")
    reducible.legend(fontsize=7)
    return _finished(figure)


def _cap_top(ax, highest: float, factor: float) -> None:
    top = highest * factor
    if ax.get_ylim()[1] > top:
        ax.set_ylim(top=top)


def plot_scaling(fit, x, y, path, **options) -> Path:
    """`figure_scaling`, saved to path."""
    return save_figure(figure_scaling(fit, x, y, **options), path)


def size_colorbar(figure, mappable, ax, sizes, label: str):
    """A colour bar for model sizes with a tick at each size (a log colour bar over two decades otherwise
    labels one or two powers of ten, which says nothing about which colour is which run)."""
    bar = figure.colorbar(mappable, ax=ax, label=label)
    ticks = np.unique(np.asarray(sizes, dtype=np.float64))
    bar.set_ticks(ticks, labels=[f"{value:.3g}" for value in ticks])
    bar.ax.minorticks_off()
    return bar


LINE_STYLES = ("-", "--", ":", "-.")


def figure_noise_scale(series: dict, n_params: dict, budgets: dict, fit=None, *, budget_unit: str = "tokens"):
    """The gradient noise scale B_simple of each run against its step (left) and against its smoothed
    training loss (right), coloured by model size N (a colour bar with a tick per size) and styled by
    token budget (legend), with B_crit(L) = B_star / L^(1/alpha_B) drawn on the right where fitted.

    series: run -> array of rows (step, loss, noise scale); n_params, budgets: run -> N, run -> budget."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.lines import Line2D

    figure, (by_step, by_loss) = _figure(2)
    cmap, norm = colormaps[COLORMAP], _log_norm(list(n_params.values()))
    styles = {budget: LINE_STYLES[i % len(LINE_STYLES)] for i, budget in enumerate(sorted(set(budgets.values())))}
    for name, s in series.items():
        look = {"color": cmap(norm(n_params[name])), "ls": styles[budgets[name]], "lw": 1.1, "alpha": 0.9, "gid": name}
        by_step.plot(s[:, 0], s[:, 2], **look)
        by_loss.plot(s[:, 1], s[:, 2], **look)
    handles = [Line2D([], [], color="0.3", ls=style, label=f"budget {budget:.3g} {budget_unit}") for budget, style in styles.items()]
    if fit is not None:
        loss = np.concatenate([s[:, 1] for s in series.values()])
        grid = np.geomspace(loss.min(), loss.max(), GRID_POINTS)
        (line,) = by_loss.plot(grid, fit.predict(grid), color=FIT_COLOR, lw=2.2, label="B_crit(L) fit", zorder=5)
        handles.append(line)
        _title(by_loss, fit)
    by_step.legend(handles=handles[: len(styles)], fontsize=7)
    by_loss.legend(handles=handles, fontsize=7)
    by_step.set_xlabel("optimizer step"), by_step.set_ylabel("gradient noise scale B_simple (tokens)")
    by_loss.set_xlabel(f"smoothed training {LOSS_LABEL}"), by_loss.set_ylabel("gradient noise scale B_simple (tokens)")
    by_step.set_title("per run: colour = N, line style = token budget", fontsize=7.5, loc="left")
    size_colorbar(figure, ScalarMappable(norm=norm, cmap=cmap), by_loss, list(n_params.values()), "N (non-embedding parameters)")
    return _finished(figure)


def plot_noise_scale(series: dict, n_params: dict, budgets: dict, path, fit=None, **options) -> Path:
    """`figure_noise_scale`, saved to path."""
    return save_figure(figure_noise_scale(series, n_params, budgets, fit, **options), path)
