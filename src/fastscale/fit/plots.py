"""Figures for fitted laws: log-log axes, the data, the fit and its bootstrap band. PNG or SVG by suffix.

matplotlib is imported inside the functions (so `fastscale fit` without plots never loads it), and figures are built with
matplotlib.figure.Figure, never pyplot, so no global backend or window state is touched.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np

from fastscale.fit._checks import FitInputError
from fastscale.io import write_atomically

FORMATS = (".png", ".svg")
BAND_ALPHA = 0.25


def _figure(n_panels: int):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * n_panels, 4.2), layout="constrained")
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


def _draw_law(ax, fit, x, label):
    """The fitted curve over the data's range extended by half a decade each side, with its band."""
    grid = np.geomspace(x.min() / 3, x.max() * 3, 200)
    ax.plot(grid, fit.predict(grid), color="C3", label=label)
    if len(fit.samples):
        low, high = fit.predict_interval(grid)
        ax.fill_between(grid, low, high, color="C3", alpha=BAND_ALPHA, label=f"{fit.level:.0%} bootstrap band")


def plot_law(fit, x, y, path, *, xlabel: str = "x", ylabel: str = "loss (nats/token)") -> Path:
    """Data and a one-variable law (power law, allocation, critical batch) on log-log axes."""
    figure, (ax,) = _figure(1)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ax.scatter(x, y, s=14, color="C0", label="data", zorder=3)
    _draw_law(ax, fit, x, f"{fit.law} fit: " + ", ".join(f"{k}={v:.4g}" for k, v in fit.params.items()))
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.legend(fontsize=8)
    return save_figure(figure, path)


def plot_two_variable(fit, n, d, loss, path, *, dlabel: str = "D (tokens)") -> Path:
    """Loss against N coloured by D with the law at three values of D, and observed against predicted."""
    figure, (ax, parity) = _figure(2)
    n, d, loss = (np.asarray(v, dtype=np.float64) for v in (n, d, loss))
    points = ax.scatter(n, loss, c=np.log10(d), s=12, cmap="viridis", zorder=3)
    figure.colorbar(points, ax=ax, label=f"log10 {dlabel}")
    grid = np.geomspace(n.min() / 2, n.max() * 2, 200)
    for fraction in (0.1, 0.5, 0.9):
        tokens = np.quantile(d, fraction)
        ax.plot(grid, fit.predict(grid, np.full_like(grid, tokens)), lw=1, color="C3", label=f"fit at D = {tokens:.2g}")
    ax.legend(fontsize=8)
    ax.set_xlabel("N (parameters)"), ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{fit.law}: " + ", ".join(f"{k}={v:.4g}" for k, v in list(fit.params.items())[:5]), fontsize=8)
    predicted = fit.predict(n, d)
    parity.set_xscale("linear"), parity.set_yscale("linear")
    parity.scatter(predicted, loss, s=10)
    span = [min(predicted.min(), loss.min()), max(predicted.max(), loss.max())]
    parity.plot(span, span, color="k", lw=0.8)
    parity.set_xlabel("predicted loss"), parity.set_ylabel("observed loss")
    return save_figure(figure, path)


def plot_frontier(frontier_fit, run, compute, loss, path, *, clabel: str = "compute (FLOPs)") -> Path:
    """Learning curves with their lower envelope and L(C); N_opt(C) from the frontier runs."""
    figure, (ax, sizes) = _figure(2)
    run, compute, loss = np.asarray(run), np.asarray(compute, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    for name in np.unique(run):
        rows = run == name
        order = np.argsort(compute[rows])
        ax.plot(compute[rows][order], loss[rows][order], lw=0.8, alpha=0.6)
    frontier = frontier_fit.frontier
    ax.plot(frontier.compute, frontier.loss, color="k", lw=2, label="frontier (lower envelope)")
    _draw_law(ax, frontier_fit.loss_fit, frontier.compute, "L(C) = " + _power_text(frontier_fit.loss_fit.params))
    ax.set_xlabel(clabel), ax.set_ylabel("loss (nats/token)"), ax.legend(fontsize=8)
    sizes.scatter(frontier_fit.optimal_compute, frontier_fit.optimal_n_params, color="C0", zorder=3, label="runs on the frontier")
    allocation = frontier_fit.allocation
    _draw_law(sizes, allocation, frontier_fit.optimal_compute, f"N_opt = (C/{allocation.params['C0']:.3g})^{allocation.params['a']:.3f}")
    sizes.set_xlabel(clabel), sizes.set_ylabel("N_opt (parameters)"), sizes.legend(fontsize=8)
    return save_figure(figure, path)


def _power_text(p):
    return f"{p['L_inf']:.3g} + ({p['x0']:.3g}/C)^{p['alpha']:.3f}"
