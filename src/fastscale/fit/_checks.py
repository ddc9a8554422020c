"""Input checks for the fit layer. Each error names the argument, shows the offending value and says
what was expected, so a bad column in a 10,000-row CSV is found without a debugger."""

from __future__ import annotations

import numpy as np


class FitInputError(ValueError):
    """The data cannot be fitted as given (wrong shape, NaN, non-positive where logs are taken...)."""


def as_values(name: str, values, *, positive: bool = False) -> np.ndarray:
    """A finite 1-D float64 array; with positive=True every entry must be > 0 (logs are taken)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise FitInputError(f"{name}: expected numbers, got {values!r:.80} ({error})") from None
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise FitInputError(f"{name}: expected a 1-D array of numbers, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise FitInputError(
            f"{name}: expected finite numbers, got {array[bad[0]]} at index {bad[0]} ({bad.size} non-finite in all)"
        )
    if positive:
        bad = np.flatnonzero(array <= 0)
        if bad.size:
            raise FitInputError(
                f"{name}: expected values > 0 (logs are taken), got {array[bad[0]]} at index {bad[0]}"
                f" ({bad.size} non-positive in all)"
            )
    return array


def same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise FitInputError(f"expected arrays of one length, got lengths {lengths}")
    return next(iter(lengths.values()))


def enough_points(law: str, n_points: int, n_params: int, *, minimum: int | None = None) -> None:
    """At least one more point than parameters, or the residuals say nothing about the fit."""
    needed = n_params + 1 if minimum is None else minimum
    if n_points < needed:
        raise FitInputError(f"{law}: got {n_points} points, expected at least {needed} to fit {n_params} parameters")


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FitInputError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise FitInputError(f"{name}={value!r}: expected a number in (0, 1)")
    return float(value)
