"""The extrapolation check: fit without the largest runs, predict them, report the error.

A law that will be used to forecast a bigger run should first forecast the biggest runs already made.
For laws fitted to rows (one run per row) the held-out rows are those of largest N (or x). For the
frontier, whose law is fitted to the lower envelope of whole learning curves, the held-out unit is a
run: the runs of the K largest model sizes are left out, the frontier and L(C) are fitted on the rest,
and L(C) is compared with the frontier of all runs where the held-out runs attain it, the compute the
larger models made reachable at a lower loss.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastscale.fit._checks import FitInputError, as_values, positive_int
from fastscale.fit.frontier import FrontierFit, compute_frontier, fit_frontier
from fastscale.fit.results import FitResult


@dataclass(frozen=True)
class HoldoutCheck:
    fit: FitResult  # fitted on the kept rows
    held_out: np.ndarray  # row indices of the held-out rows, most extreme (largest, or lowest) first
    inputs: tuple  # the held-out rows' inputs, one array per input
    observed: np.ndarray
    predicted: np.ndarray
    low: np.ndarray  # bootstrap interval of the prediction (nan without bootstrap draws)
    high: np.ndarray
    relative_error: np.ndarray  # (predicted - observed) / observed

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.relative_error)))


def holdout_largest(
    fit: Callable, inputs: tuple, observed, k: int, *, by: int = 0, lowest: bool = False, per_row: dict | None = None, **fit_options
) -> HoldoutCheck:
    """Hold out the k rows with the largest inputs[by] (N, or x), fit `fit(*inputs, observed, **fit_options)`
    on the rest, and predict the held-out rows. lowest: hold out the smallest instead, for an input that
    extrapolation takes down (a loss: B_crit(L) is forecast for losses below those measured). per_row:
    fit options with one value per row (weights), passed for the kept rows only (None: not given)."""
    y = as_values("observed", observed)
    columns = [np.asarray(column, dtype=np.float64) for column in inputs]
    k = positive_int("holdout_largest", k)
    if k >= len(y):
        raise FitInputError(f"holdout_largest={k}: expected fewer than the {len(y)} rows")
    order = np.argsort(columns[by], kind="stable")
    order = order if lowest else order[::-1]
    held, kept = order[:k], np.sort(order[k:])
    split = {name: np.asarray(values)[kept] for name, values in (per_row or {}).items() if values is not None}
    with _naming_the_holdout(f"holdout_largest={k}: the fit without the {k} held-out rows"):
        result = fit(*(column[kept] for column in columns), y[kept], **split, **fit_options)
    held_inputs = [column[held] for column in columns]
    predicted = result.predict(*held_inputs)
    if len(result.samples):
        low, high = result.predict_interval(*held_inputs)
    else:
        low = high = np.full(k, np.nan)
    return HoldoutCheck(result, held, tuple(held_inputs), y[held], predicted, low, high, (predicted - y[held]) / y[held])


@contextmanager
def _naming_the_holdout(what: str):
    """Data the full fit accepted can be too little once the largest rows are out: say it is the holdout fit."""
    try:
        yield
    except FitInputError as error:
        raise FitInputError(f"{what}: {error}", error.argument) from None


@dataclass(frozen=True)
class FrontierHoldoutCheck:
    fit: FrontierFit  # fitted on the runs kept
    held_out_runs: np.ndarray  # labels of the runs of the k largest sizes
    run: np.ndarray  # per compared point: the held-out run attaining the frontier of all runs there
    compute: np.ndarray  # frontier grid points (of all runs) attained by a held-out run
    observed: np.ndarray  # the frontier of all runs there
    predicted: np.ndarray  # L(C) fitted without the held-out runs
    low: np.ndarray
    high: np.ndarray
    relative_error: np.ndarray

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.relative_error)))


def holdout_largest_runs(run, n_params, compute, loss, k: int, *, n_grid: int = 100, **fit_options) -> FrontierHoldoutCheck:
    """Leave out the runs of the k largest model sizes, fit the frontier (`fit_frontier`) on the rest, and
    predict the frontier of all runs where a held-out run attains it. n_grid: as in `fit_frontier`, whose
    default it repeats, used for both frontiers."""
    labels = np.asarray(run)
    n = as_values("n_params", n_params, positive=True)
    c, y = np.asarray(compute, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    k = positive_int("holdout_largest", k)
    sizes = np.unique(n)
    if k >= len(sizes):
        raise FitInputError(f"holdout_largest={k}: expected fewer than the {len(sizes)} distinct model sizes")
    held_rows = n >= sizes[-k]
    held_runs = np.unique(labels[held_rows])
    full = compute_frontier(labels, n, c, y, n_grid=n_grid)
    attained = np.isin(full.run, held_runs) & full.reached  # where a held-out run reaches the frontier, not where its loss is carried
    if not attained.any():
        raise FitInputError(
            f"holdout_largest={k}: the held-out runs {[str(r) for r in held_runs]} never reach the frontier of all runs, "
            "so there is nothing to predict"
        )
    kept = ~held_rows
    with _naming_the_holdout(f"holdout_largest={k}: the frontier without the runs {[str(r) for r in held_runs]}"):
        result = fit_frontier(labels[kept], n[kept], c[kept], y[kept], n_grid=n_grid, **fit_options)
    at = full.compute[attained]
    predicted = result.loss_fit.predict(at)
    if len(result.loss_fit.samples):
        low, high = result.loss_fit.predict_interval(at)
    else:
        low = high = np.full(len(at), np.nan)
    observed = full.loss[attained]
    return FrontierHoldoutCheck(result, held_runs, full.run[attained], at, observed, predicted, low, high, (predicted - observed) / observed)
