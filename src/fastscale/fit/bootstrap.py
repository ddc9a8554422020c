"""Bootstrap draws for every law: blocks of resampled data sets, each refitted from the estimate.

Every law fits log y by (weighted) least squares or Huber loss, so a resampled data set is two [r, n]
arrays: per-row weights and per-row observed log y (`Resamples`). One generator (`bootstrap_blocks`)
serves all laws, so every law's batched refit takes the same block, whichever scheme made it:

- "parametric" (the default): new observations from the fitted noise model. log y = log f(x) + e with
  e ~ Normal(0, sigma^2 / w); each draw first draws its own sigma from the estimate's sampling
  distribution, sigma*^2 = s^2 (n - p) / chi2(n - p) with s^2 = sum w r^2 / (n - p), then fresh noise
  around the fitted curve. Drawing sigma is what makes the intervals cover on the few points a sweep
  has: with sigma held at s, the draws of a linear law are normal where the truth is Student-t with
  n - p degrees of freedom (and on 10 points a 95% interval covers ~91%); with sigma drawn, the
  percentile interval of a linear law is exactly the t interval. Measured coverage per law:
  benchmarks/results/coverage.md. It assumes the points are independent given the law.
- "rows": a nonparametric bootstrap of the rows, or of whole groups of rows (the runs of a sweep, the
  budgets of an IsoFLOP study), which keeps correlated rows together. It makes no assumption about
  the noise, but on a dozen points its percentile intervals are too narrow (a resample holds ~63% of
  the distinct points, and 95% intervals covered 80-88% of the truth in benchmarks/results/coverage.md).
  Laws fitted to points that are not independent (the compute frontier, cut from learning curves) use it.

The counts of the "rows" scheme are drawn by `resample_counts`/`resample_count_chunks`, also used
directly where a study resamples groups itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastscale.fit._checks import FitInputError

DEFAULT_N_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
RESAMPLING = ("parametric", "rows")
DEFAULT_RESAMPLING = "parametric"


@dataclass(frozen=True)
class Resamples:
    """One block of r resampled data sets over the same n rows (read-only views may be broadcast)."""

    weights: np.ndarray  # [r, n] per-row weight of each draw (0: the row is not in the draw)
    log_y: np.ndarray  # [r, n] per-row observed log y of each draw

    def __len__(self) -> int:
        return self.weights.shape[0]


def per_draw(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows of per-draw data [R, n] that the starts `rows` refit, or the one [n] row they share.

    A [n] array, or a [R, n] broadcast view (stride 0 across draws: the observed log y of a "rows"
    bootstrap block, the weights of a "parametric" one), is shared by every draw and returned as one row,
    which numpy broadcasts, instead of being copied into an [S, n] array by fancy indexing."""
    if values.ndim == 1:
        return values
    return values[0] if values.strides[0] == 0 else values[rows]


def check_resampling(resampling: str, groups=None) -> str:
    """The scheme's name, checked; groups of rows can only be resampled whole by the "rows" scheme."""
    if resampling not in RESAMPLING:
        raise FitInputError(f"resampling={resampling!r}: expected one of {RESAMPLING}")
    if groups is not None and resampling != "rows":
        raise FitInputError(f"groups: rows are resampled in groups only with resampling='rows', got resampling={resampling!r}")
    return resampling


def bootstrap_blocks(resampling: str, *, log_y, log_pred, weights, n_params: int, n_bootstrap: int, seed: int, groups=None):
    """Blocks of `Resamples` (n_bootstrap draws in all, a few at a time on large data sets).

    log_y: [n] observed log y; log_pred: [n] the fitted law's log prediction (the centre of the
    parametric draws); weights: [n] the fit's per-row weights (inverse variances of log y, up to one
    common factor); n_params: the law's free parameters (the degrees of freedom of s^2 are n - n_params)."""
    check_resampling(resampling, groups)
    log_y, log_pred, weights = (np.asarray(v, dtype=np.float64) for v in (log_y, log_pred, weights))
    n = len(log_y)
    if resampling == "rows":
        for counts in resample_count_chunks(n, n_bootstrap, seed, groups):
            yield Resamples(counts * weights, np.broadcast_to(log_y, counts.shape))
        return
    yield from _parametric_blocks(log_y, log_pred, weights, n_params, n_bootstrap, seed)


def refit_draws(blocks, refit, n_params: int, cells: int | None = None) -> tuple[np.ndarray, int]:
    """Every draw of `blocks` refitted: refit(weights [r, n], log_y [r, n]) -> (theta [r, P], converged [r]),
    called on parts of at most `cells` draws x rows (None: a whole block at a time), so that a law whose
    refit holds a jacobian per draw keeps it small on large data sets.
    Returns ([n_ok, P] refits that converged, number that did not)."""
    draws, failed = [np.zeros((0, n_params))], 0
    for block in blocks:
        parts = 1 if cells is None else -(-block.weights.size // cells)
        for weights, log_y in zip(np.array_split(block.weights, parts), np.array_split(block.log_y, parts)):
            refits, converged = refit(weights, log_y)
            draws.append(refits[converged])
            failed += int(np.count_nonzero(~converged))
    return np.concatenate(draws), failed


def noise_scale(log_y, log_pred, weights, n_params: int) -> float:
    """s, the fitted noise model's scale: sqrt(sum w r^2 / (n - p)) on log y (0 when n <= p)."""
    residual = np.asarray(log_y, dtype=np.float64) - np.asarray(log_pred, dtype=np.float64)
    dof = len(residual) - n_params
    return float(np.sqrt(np.sum(np.asarray(weights) * residual * residual) / dof)) if dof > 0 else 0.0


def _parametric_blocks(log_y, log_pred, weights, n_params, n_bootstrap, seed):
    rng = np.random.default_rng(seed)
    dof = max(len(log_y) - n_params, 1)
    scale = noise_scale(log_y, log_pred, weights, n_params)
    spread = np.where(weights > 0, 1.0 / np.sqrt(np.where(weights > 0, weights, 1.0)), 0.0)
    per_block = max(1, CHUNK_CELLS // max(len(log_y), 1))
    for start in range(0, n_bootstrap, per_block):
        r = min(per_block, n_bootstrap - start)
        sigma = scale * np.sqrt(dof / rng.chisquare(dof, size=r))
        noise = rng.standard_normal((r, len(log_y))) * spread
        yield Resamples(np.broadcast_to(weights, (r, len(log_y))), log_pred + sigma[:, None] * noise)


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
