"""The extrapolation check: fit without the largest runs, predict them, report the error.

A law that will be used to forecast a bigger run should first forecast the biggest runs already made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastscale.fit._checks import FitInputError, as_values, positive_int
from fastscale.fit.results import FitResult


@dataclass(frozen=True)
class HoldoutCheck:
    fit: FitResult  # fitted on the kept rows
    held_out: np.ndarray  # row indices of the held-out rows, largest first
    inputs: tuple  # the held-out rows' inputs, one array per input
    observed: np.ndarray
    predicted: np.ndarray
    low: np.ndarray  # bootstrap interval of the prediction (nan without bootstrap draws)
    high: np.ndarray
    relative_error: np.ndarray  # (predicted - observed) / observed

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.relative_error)))


def holdout_largest(fit: Callable, inputs: tuple, observed, k: int, *, by: int = 0, **fit_options) -> HoldoutCheck:
    """Hold out the k rows with the largest inputs[by] (N, or x), fit `fit(*inputs, observed, **fit_options)`
    on the rest, and predict the held-out rows."""
    y = as_values("observed", observed)
    columns = [np.asarray(column, dtype=np.float64) for column in inputs]
    k = positive_int("holdout_largest", k)
    if k >= len(y):
        raise FitInputError(f"holdout_largest={k}: expected fewer than the {len(y)} rows")
    order = np.argsort(columns[by], kind="stable")[::-1]
    held, kept = order[:k], np.sort(order[k:])
    result = fit(*(column[kept] for column in columns), y[kept], **fit_options)
    held_inputs = [column[held] for column in columns]
    predicted = result.predict(*held_inputs)
    if len(result.samples):
        low, high = result.predict_interval(*held_inputs)
    else:
        low = high = np.full(k, np.nan)
    return HoldoutCheck(result, held, tuple(held_inputs), y[held], predicted, low, high, (predicted - y[held]) / y[held])
