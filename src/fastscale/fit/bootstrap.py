"""Bootstrap resampling as count matrices: row s says how often each data row appears in resample s.

Counts act as per-row weights in every objective, so one resampling scheme serves all laws, including
the batched Chinchilla refits (all resamples in one vectorized L-BFGS run). Resampling whole groups
(the runs of a sweep, the budgets of an IsoFLOP study) keeps correlated rows together.
"""

from __future__ import annotations

import numpy as np

from fastscale.fit._checks import FitInputError

DEFAULT_N_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95


def resample_counts(n_rows: int, n_bootstrap: int, seed: int, groups=None) -> np.ndarray:
    """[n_bootstrap, n_rows] int counts of a nonparametric bootstrap (rows, or groups of rows)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=n_bootstrap)
    labels, index = np.unique(np.asarray(groups), return_inverse=True)
    if len(index) != n_rows:
        raise FitInputError(f"groups: expected {n_rows} labels (one per row), got {len(index)}")
    group_counts = rng.multinomial(len(labels), np.full(len(labels), 1.0 / len(labels)), size=n_bootstrap)
    return group_counts[:, index]
