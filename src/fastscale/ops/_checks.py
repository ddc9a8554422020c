"""Input checks shared by the public ops. Each error names the argument, its value and what was expected."""

from __future__ import annotations

import torch


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {sorted(allowed)}")


def check_tensor(name: str, value, *, ndim: int | None = None, min_ndim: int | None = None, dtypes=None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name}: dtype {value.dtype} is not supported; expected one of {[str(d) for d in dtypes]}")


def check_same(attribute: str, reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    """All tensors in `others` (None is skipped) share `attribute` ('device' or 'dtype') with reference."""
    expected = getattr(reference, attribute)
    for name, tensor in others.items():
        if tensor is not None and getattr(tensor, attribute) != expected:
            raise ValueError(
                f"{name}: {attribute} {getattr(tensor, attribute)} differs from {reference_name}'s {expected}"
            )


def check_number(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{name}={value!r}: expected a finite number")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high or value in (float("inf"), float("-inf")):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name}={value!r}: expected a value in {'(' if low_open else '['}{lo}, {hi}]")
