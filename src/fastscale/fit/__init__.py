"""fastscale.fit: scaling laws fitted to measured runs, with bootstrap intervals and forecasts.

Pure numpy/scipy: importing it never imports torch or DeepSpeed (matplotlib only inside `plots`), so
`fastscale fit` runs on a laptop. The names below load their module (and scipy) on first use, so the
command line's parser, which imports fastscale.fit.command, starts without scipy. Every fit takes plain arrays and returns a frozen result with
`params` (names as in the papers), `intervals` (percentile bootstrap), `samples` (the bootstrap draws),
`residuals` (log observed - log predicted), `converged`, `flags` and `predict` / `predict_interval`.
Laws: power (Henighan et al. 2020; Kaplan et al. 2020), broken (Caballero et al. 2023), chinchilla
(Hoffmann et al. 2022), kaplan (Kaplan et al. 2020), overtrain (Gadre et al. 2024), data_constrained
(Muennighoff et al. 2023), frontier, allocation / isoflop and critical_batch; `holdout` fits without the
largest runs and predicts them (`holdout_largest`, and `holdout_largest_runs` for the frontier).
Units: N is whatever the data counts (Kaplan and Henighan: non-embedding parameters; Hoffmann: all),
C in FLOPs unless stated (`fastscale.units` converts PF-days), losses in nats per token.
"""

_MODULES = {
    "_checks": ("FitInputError",),
    "allocation": ("AllocationFit", "IsoFlopMinima", "ParabolaFit", "fit_allocation", "fit_isoflop"),
    "broken": ("BrokenPowerLawFit", "fit_broken_power_law"),
    "chinchilla": ("ChinchillaFit", "chinchilla_grid", "compute_optimal_allocation", "fit_chinchilla"),
    "critical_batch": ("CriticalBatchFit", "CriticalBatchLossFit", "fit_critical_batch", "fit_critical_batch_vs_loss"),
    "data_constrained": ("DataConstrainedFit", "fit_data_constrained"),
    "frontier": ("Frontier", "FrontierFit", "compute_frontier", "fit_frontier"),
    "holdout": ("FrontierHoldoutCheck", "HoldoutCheck", "holdout_largest", "holdout_largest_runs"),
    "kaplan": ("KaplanNDFit", "KaplanNSFit", "compute_efficient_exponents", "critical_batch_from_loss", "fit_kaplan_nd", "fit_kaplan_ns",
               "minimum_compute", "minimum_steps"),
    "overtrain": ("OvertrainFit", "fit_overtrain"),
    "power": ("PowerLawFit", "fit_power_law"),
    "results": ("Estimate", "FitResult"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
