"""fastscale.fit: scaling laws fitted to measured runs, with bootstrap intervals and forecasts.

Pure numpy/scipy: importing it never imports torch or DeepSpeed, so `fastscale fit` runs on a laptop.
Every fit takes plain arrays and returns a frozen result with `params`, `intervals` (percentile
bootstrap), `residuals` (log observed - log predicted), `converged`, `flags` and `predict`.
Units: N is whatever the data counts (Kaplan and Henighan: non-embedding parameters; Hoffmann: all),
C in FLOPs unless stated (see `units` for PF-days), losses in nats per token.
"""

from fastscale.fit._checks import FitInputError
from fastscale.fit.allocation import AllocationFit, IsoFlopMinima, fit_allocation, fit_isoflop
from fastscale.fit.chinchilla import ChinchillaFit, chinchilla_grid, fit_chinchilla
from fastscale.fit.power import PowerLawFit, fit_power_law
from fastscale.fit.results import Estimate, FitResult

__all__ = [
    "AllocationFit",
    "ChinchillaFit",
    "Estimate",
    "FitInputError",
    "FitResult",
    "IsoFlopMinima",
    "PowerLawFit",
    "chinchilla_grid",
    "fit_allocation",
    "fit_chinchilla",
    "fit_isoflop",
    "fit_power_law",
]
