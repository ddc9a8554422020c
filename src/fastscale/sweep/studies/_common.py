"""What the studies share: option checks, runs grouped by model size, the loss-against-N fit with its
fallback, and interval text for the markdown. numpy and fastscale.fit only (no torch)."""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)


def require(ok: bool, name: str, value, expectation: str) -> None:
    """A study option that cannot work: SweepError naming it, its value and what was expected."""
    from fastscale.sweep.spec import SweepError

    if not ok:
        raise SweepError(f"sweep: study.{name}={value!r}; expected {expectation}")


def checked_options(options: dict, defaults: dict) -> dict:
    """A study's options over its defaults, refusing keys it does not have."""
    unknown = sorted(set(options) - set(defaults))
    require(not unknown, "options", unknown, f"only {sorted(defaults)}")
    return {**defaults, **options}


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def runs_by_size(runs: list[dict]) -> list[tuple[float, list[dict]]]:
    """(N, the runs of that N: its seeds), smallest N first."""
    groups: dict[float, list[dict]] = {}
    for r in runs:
        groups.setdefault(float(r["config"]["n_params"]), []).append(r)
    return sorted(groups.items())


def fit_loss_law(study: str, n, loss, n_bootstrap: int, seed: int) -> dict:
    """fit_power_law's summary of loss against N; a pure power law (L_inf = 0) with the reason in
    "fallback" when the full law cannot be fitted (fewer than 4 sizes); {"error": ...} when neither can.
    A study's report never stops at one fit."""
    from fastscale.fit import FitInputError, fit_power_law

    # alpha on its lower bound (a loss flat or rising in N) sends x0 to inf in the fit and its draws:
    # the flags say so, the overflow warning would only repeat it
    with np.errstate(over="ignore"):
        try:
            return fit_power_law(n, loss, n_bootstrap=n_bootstrap, seed=seed).summary()
        except FitInputError as error:
            reason = str(error)
        try:
            summary = fit_power_law(n, loss, irreducible=False, n_bootstrap=n_bootstrap, seed=seed).summary()
        except FitInputError as error:
            logger.warning("%s study: no fit: %s; pure power law: %s", study, reason, error)
            return {"error": f"{reason}; pure power law: {error}"}
    logger.warning("%s study: pure power law instead: %s", study, reason)
    return {**summary, "fallback": f"pure power law (L_inf = 0): {reason}"}


def interval_text(fit: dict, name: str) -> str:
    """"value [low, high]" of a fit summary's parameter, "value" without an interval, "-" without the parameter."""
    if name not in fit.get("params", {}):
        return "-"
    if name in fit.get("ci", {}):
        low, high = fit["ci"][name]
        return f"{fit['params'][name]:.4g} [{low:.4g}, {high:.4g}]"
    return f"{fit['params'][name]:.4g}"
