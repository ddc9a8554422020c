"""fastscale.sweep: grids of trainer runs with a resumable results index, and the scaling-law report."""

from fastscale.sweep.index import ResultsIndex
from fastscale.sweep.runner import run_sweep
from fastscale.sweep.spec import PRESETS, SweepError, SweepSpec

__all__ = ["PRESETS", "ResultsIndex", "SweepError", "SweepSpec", "run_sweep"]
