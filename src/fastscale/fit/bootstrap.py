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


CHUNK_CELLS = 10_000_000  # counts held at once (80 MB): 1,000 resamples of 1e6 rows would be 8 GB


def resample_counts(n_rows: int, n_bootstrap: int, seed: int, groups=None) -> np.ndarray:
    """[n_bootstrap, n_rows] int counts of a nonparametric bootstrap (rows, or groups of rows)."""
    chunks = list(resample_count_chunks(n_rows, n_bootstrap, seed, groups))
    return np.concatenate(chunks) if chunks else np.zeros((0, n_rows), dtype=np.int64)


def resample_count_chunks(n_rows: int, n_bootstrap: int, seed: int, groups=None):
    """The rows of `resample_counts`, the same draws, a few resamples at a time (for large data sets).

    numpy's multinomial draws resamples one after the other, so chunks concatenate to exactly the
    matrix one call would give. groups are checked here, before any draw."""
    if groups is None:
        return _chunks(n_rows, None, n_bootstrap, seed)
    labels, index = np.unique(np.asarray(groups), return_inverse=True)
    if len(index) != n_rows:
        raise FitInputError(f"groups: expected {n_rows} labels (one per row), got {len(index)}")
    return _chunks(len(labels), index, n_bootstrap, seed)


def _chunks(n_units: int, index, n_bootstrap: int, seed: int):
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK_CELLS // max(n_units if index is None else len(index), 1))
    for start in range(0, n_bootstrap, per_chunk):
        counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=min(per_chunk, n_bootstrap - start))
        yield counts if index is None else counts[:, index]
