"""The compute-efficient frontier from learning curves (Henighan et al. 2020, sec. 2.1; Kaplan et al. 2020).

Every run contributes its learning curve, loss against compute spent so far. The frontier is the lower
envelope over runs: at each compute C, the lowest loss any run reached with at most C (curves are
interpolated linearly in log-log between logged points, and a run only counts inside the compute range
it covered). "At most C" makes it monotone: where the best run so far ends and the next runs are still
above its last loss, the frontier stays at that loss (more compute can always train that run and stop),
instead of jumping up to the runs still going. On noisy curves a lower envelope is biased low (it follows
each run's downward fluctuations), the more so the more runs and points it takes the minimum over: feed it
held-out losses (each point the same held-out rows) or smoothed training losses, never raw batch losses.
Each run's first steps (warmup, the first fast drop) are no part of a power law: `early_rows` marks
them, the same way for the sweep report and `fastscale fit --law frontier --drop-warmup`.
L(C) = L_inf + (C0/C)^alpha is fitted so it lies on or below the frontier, on a log-spaced compute
grid so densely logged runs do not dominate; N_opt(C) = (C/C0)^a is fitted with one point per run that
touches the frontier, at the geometric centre of the compute range where it is the best run.
The bootstrap of L(C) resamples the runs on the frontier (resampling="rows" with each run's stretch of
frontier as one group), whatever scheme the caller asks for: the frontier's points are cut from
learning curves, so neighbouring points share a run and its noise (and the envelope's grid sets how
many points there are, not the data), and a parametric draw of independent noise per grid point would
treat a hundred interpolated points as a hundred measurements. N_opt(C) has one point per frontier run,
independent of one another, and is drawn with the caller's `resampling`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastscale.fit._checks import FitInputError, as_values, positive_int, same_length
from fastscale.fit.allocation import AllocationFit, fit_allocation
from fastscale.fit.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOTSTRAP, DEFAULT_RESAMPLING, check_resampling
from fastscale.fit.power import PowerLawFit, fit_power_law

MIN_FRONTIER_RUNS = 3


@dataclass(frozen=True)
class Frontier:
    """The lower envelope of loss against compute on a log-spaced grid."""

    compute: np.ndarray  # [G] grid, units of the input compute
    loss: np.ndarray  # [G] lowest loss at each grid compute
    run: np.ndarray  # [G] label of the run that attains it
    n_params: np.ndarray  # [G] its model size
    reached: np.ndarray  # [G] True where that run reaches the loss at this compute; False where it is carried from less compute


@dataclass(frozen=True)
class FrontierFit:
    frontier: Frontier
    loss_fit: PowerLawFit  # L(C) on or below the frontier; x0 is C0 in the units of the input compute
    allocation: AllocationFit  # N_opt(C) = (C/C0)^a from the runs touching the frontier
    optimal_compute: np.ndarray  # per frontier run: geometric centre of its stretch of frontier
    optimal_n_params: np.ndarray  # per frontier run: its size
    max_above_frontier: float  # largest log(L_fit / L_frontier) on the grid; ~0 when the fit lies below

    @property
    def flags(self) -> tuple:
        return self.loss_fit.flags + self.allocation.flags


def compute_frontier(run, n_params, compute, loss, *, n_grid: int = 100) -> Frontier:
    """Lower envelope of the learning curves (rows: one logged point of one run) on n_grid log-spaced
    computes: at each, the lowest loss reached with at most that compute (non-increasing)."""
    labels = np.asarray(run)
    n = as_values("n_params", n_params, positive=True)
    c = as_values("compute", compute, positive=True)
    y = as_values("loss", loss, positive=True)
    same_length(run=labels, n_params=n, compute=c, loss=y)
    runs = np.unique(labels)
    if len(runs) < MIN_FRONTIER_RUNS:
        raise FitInputError(f"run: got {len(runs)} runs, expected at least {MIN_FRONTIER_RUNS} learning curves for a frontier")
    if c.min() == c.max():
        raise FitInputError(f"compute has 1 distinct value ({len(c)} rows: {c[0]:.6g}); a frontier needs learning curves over a range of compute", "compute")
    grid = np.geomspace(c.min(), c.max(), positive_int("n_grid", n_grid, minimum=2))
    curves = np.full((len(runs), len(grid)), np.inf)
    sizes = np.empty(len(runs))
    for i, name in enumerate(runs):
        rows = labels == name
        order = np.argsort(c[rows])
        log_c, log_y = np.log(c[rows][order]), np.log(y[rows][order])
        inside = (grid >= c[rows].min() * (1 - 1e-12)) & (grid <= c[rows].max() * (1 + 1e-12))
        curves[i, inside] = np.exp(np.interp(np.log(grid[inside]), log_c, log_y))
        sizes[i] = np.median(n[rows])
    best = np.argmin(curves, axis=0)
    lowest = curves[best, np.arange(len(grid))]
    # the lowest loss with at most this compute: where it rises, the earlier grid point's run keeps it
    reached = lowest <= np.minimum.accumulate(lowest)
    attained = np.maximum.accumulate(np.where(reached, np.arange(len(grid)), 0))
    best = best[attained]
    return Frontier(grid, lowest[attained], runs[best], sizes[best], reached)


def early_rows(run, compute, fraction: float) -> np.ndarray:
    """True for each run's rows at compute <= fraction x that run's largest compute: its first steps
    (compute grows in proportion to steps within a run), which a frontier fit leaves out."""
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
        raise FitInputError(f"drop_warmup={fraction!r}: expected a fraction of each run's compute in [0, 1)", "drop_warmup")
    labels, c = np.asarray(run), np.asarray(compute, dtype=np.float64)
    final = {name: c[labels == name].max() for name in np.unique(labels)}
    return c <= fraction * np.array([final[name] for name in labels])


def fit_frontier(
    run,
    n_params,
    compute,
    loss,
    *,
    n_grid: int = 100,
    irreducible: bool = True,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    resampling: str = DEFAULT_RESAMPLING,
) -> FrontierFit:
    """Frontier, L(C) on or below it (bootstrap: its runs resampled, see the module docstring), and
    N_opt(C) from the runs that touch it (bootstrap: `resampling`)."""
    check_resampling(resampling)
    frontier = compute_frontier(run, n_params, compute, loss, n_grid=n_grid)
    loss_fit = fit_power_law(
        frontier.compute,
        frontier.loss,
        irreducible=irreducible,
        lower_envelope=True,
        resampling="rows",
        groups=frontier.run,
        n_bootstrap=n_bootstrap,
        level=level,
        seed=seed,
    )
    winners = np.unique(frontier.run)
    if len(winners) < MIN_FRONTIER_RUNS:
        raise FitInputError(
            f"run: {len(winners)} runs touch the frontier ({list(winners)}), expected at least {MIN_FRONTIER_RUNS} to fit N_opt(C)"
        )
    centre = np.array([np.exp(np.log(frontier.compute[frontier.run == w]).mean()) for w in winners])
    size = np.array([frontier.n_params[frontier.run == w][0] for w in winners])
    allocation = fit_allocation(centre, size, n_bootstrap=n_bootstrap, level=level, seed=seed, resampling=resampling)
    above = float(np.max(np.log(loss_fit.predict(frontier.compute) / frontier.loss)))
    return FrontierFit(frontier, loss_fit, allocation, centre, size, above)
