"""Input checks for the fit layer. Each error names the argument, shows the offending value and says
what was expected, so a bad column in a 10,000-row CSV is found without a debugger.

What the data can determine is counted in DISTINCT values, because a repeated row adds no information
about the shape of a law (seven runs at one N say nothing about how loss falls with N). `enough_data`
states the rules; each law passes its parameter count and the variables it depends on.
"""

from __future__ import annotations

import numpy as np

SAMPLE_ROWS = 4096  # rows enough_data counts first (distinct values among them are distinct in the data)


class FitInputError(ValueError):
    """The data cannot be fitted as given (wrong shape, NaN, non-positive where logs are taken...).

    argument: the fit function's argument the error is about, when there is one, so a caller that
    filled it from a table column (the CLI) can name the column too."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


def as_values(name: str, values, *, positive: bool = False) -> np.ndarray:
    """A finite 1-D float64 array; with positive=True every entry must be > 0 (logs are taken)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise FitInputError(f"{name}: expected numbers, got {values!r:.80} ({error})", name) from None
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise FitInputError(f"{name}: expected a 1-D array of numbers, got shape {array.shape}", name)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise FitInputError(
            f"{name}: expected finite numbers, got {array[bad[0]]} at index {bad[0]} ({bad.size} non-finite in all)", name
        )
    if positive:
        bad = np.flatnonzero(array <= 0)
        if bad.size:
            raise FitInputError(
                f"{name}: expected values > 0 (logs are taken), got {array[bad[0]]} at index {bad[0]}"
                f" ({bad.size} non-positive in all)",
                name,
            )
    return array


def same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise FitInputError(f"expected arrays of one length, got lengths {lengths}")
    return next(iter(lengths.values()))


def enough_data(law: str, n_params: int, per_variable: int, /, **variables: np.ndarray) -> None:
    """Refuse data that cannot determine the law. The rules, for a law with P free parameters:

    - every variable has >= per_variable distinct values. A law's terms in one variable have a scale
      and an exponent, and along that variable the other terms add a constant: three numbers, which
      fewer distinct values cannot separate. One-variable laws pass P + 1 (see the next rule).
    - the variables together take >= P + 1 distinct points (rows with equal inputs count once): P to
      determine the parameters and one more so the residuals can disagree with the law.

    Rows with equal inputs and different outputs are replicates: they inform the noise, not the law.
    Counting is cheap on large data: a variable passes as soon as SAMPLE_ROWS of its rows, spread over
    the data, hold enough distinct values, and the points pass when one variable alone has P + 1
    (distinct points are at least the distinct values of any one variable). Only data near the limits
    are counted in full, to name what is missing.
    """
    rows = len(next(iter(variables.values())))
    if rows < n_params + 1:
        raise FitInputError(f"{law}: got {rows} points, expected at least {n_params + 1} to fit {n_params} parameters")
    spread = np.linspace(0, rows - 1, min(rows, SAMPLE_ROWS)).astype(np.int64)
    sampled = {name: len(np.unique(values[spread])) for name, values in variables.items()}
    for name, values in variables.items():
        if sampled[name] >= per_variable:
            continue
        distinct = np.unique(values)
        if len(distinct) < per_variable:
            shown = ", ".join(f"{v:.6g}" for v in distinct)
            raise FitInputError(
                f"{name} has {len(distinct)} distinct value{'s' * (len(distinct) != 1)} ({rows} rows: {shown}); "
                f"{law} needs >= {per_variable} distinct values of {name} to determine how it depends on {name}",
                name,
            )
    if max(sampled.values()) >= n_params + 1:
        return
    points = len(np.unique(np.stack(list(variables.values()), axis=1), axis=0))
    if points < n_params + 1:
        names = ", ".join(variables)
        raise FitInputError(
            f"({names}) takes {points} distinct values in {rows} rows; {law} needs >= {n_params + 1} distinct points "
            f"to fit {n_params} parameters with a residual left"
        )


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FitInputError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise FitInputError(f"{name}={value!r}: expected a number in (0, 1)")
    return float(value)
