"""fastscale.fit: scaling laws fitted to measured runs, with bootstrap intervals and forecasts.

Pure numpy/scipy: importing it never imports torch or DeepSpeed (matplotlib only inside `plots`), so
`fastscale fit` runs on a laptop. Every fit takes plain arrays and returns a frozen result with
`params` (names as in the papers), `intervals` (percentile bootstrap), `samples` (the bootstrap draws),
`residuals` (log observed - log predicted), `converged`, `flags` and `predict` / `predict_interval`.
Laws: power (Henighan et al. 2020; Kaplan et al. 2020), broken (Caballero et al. 2023), chinchilla
(Hoffmann et al. 2022), kaplan (Kaplan et al. 2020), overtrain (Gadre et al. 2024), data_constrained
(Muennighoff et al. 2023), frontier, allocation / isoflop and critical_batch; `holdout` fits without the
largest runs and predicts them (`holdout_largest`, and `holdout_largest_runs` for the frontier).
Units: N is whatever the data counts (Kaplan and Henighan: non-embedding parameters; Hoffmann: all),
C in FLOPs unless stated (`fastscale.units` converts PF-days), losses in nats per token.
"""

from fastscale.fit._checks import FitInputError
from fastscale.fit.allocation import AllocationFit, IsoFlopMinima, ParabolaFit, fit_allocation, fit_isoflop
from fastscale.fit.broken import BrokenPowerLawFit, fit_broken_power_law
from fastscale.fit.chinchilla import ChinchillaFit, chinchilla_grid, compute_optimal_allocation, fit_chinchilla
from fastscale.fit.critical_batch import CriticalBatchFit, CriticalBatchLossFit, fit_critical_batch, fit_critical_batch_vs_loss
from fastscale.fit.data_constrained import DataConstrainedFit, fit_data_constrained
from fastscale.fit.frontier import Frontier, FrontierFit, compute_frontier, fit_frontier
from fastscale.fit.holdout import FrontierHoldoutCheck, HoldoutCheck, holdout_largest, holdout_largest_runs
from fastscale.fit.kaplan import (
    KaplanNDFit,
    KaplanNSFit,
    compute_efficient_exponents,
    critical_batch_from_loss,
    fit_kaplan_nd,
    fit_kaplan_ns,
    minimum_compute,
    minimum_steps,
)
from fastscale.fit.overtrain import OvertrainFit, fit_overtrain
from fastscale.fit.power import PowerLawFit, fit_power_law
from fastscale.fit.results import Estimate, FitResult

__all__ = [
    "AllocationFit",
    "BrokenPowerLawFit",
    "ChinchillaFit",
    "CriticalBatchFit",
    "CriticalBatchLossFit",
    "DataConstrainedFit",
    "Estimate",
    "FitInputError",
    "FitResult",
    "Frontier",
    "FrontierFit",
    "FrontierHoldoutCheck",
    "HoldoutCheck",
    "IsoFlopMinima",
    "ParabolaFit",
    "KaplanNDFit",
    "KaplanNSFit",
    "OvertrainFit",
    "PowerLawFit",
    "chinchilla_grid",
    "compute_efficient_exponents",
    "compute_optimal_allocation",
    "compute_frontier",
    "critical_batch_from_loss",
    "fit_allocation",
    "fit_broken_power_law",
    "fit_chinchilla",
    "fit_critical_batch",
    "fit_critical_batch_vs_loss",
    "fit_data_constrained",
    "fit_frontier",
    "fit_isoflop",
    "fit_kaplan_nd",
    "fit_kaplan_ns",
    "fit_overtrain",
    "fit_power_law",
    "holdout_largest",
    "holdout_largest_runs",
    "minimum_compute",
    "minimum_steps",
]
