"""Aggregation of per-seed learning curves onto a norm grid (PROTOCOL §6 steps 1–4 and 7).

Procedure (identical to the official notebook for runs whose norm grows during training):

1. drop the logged points where the norm or the test error is not finite (diverged seed, not logged);
2. interpolate each run's test error linearly in log-norm onto the grid, NaN outside the run's range;
3. NaN-mean over seeds at each grid point;
4. per seed, λ* = the norm at the logged epoch with the lowest test error (first occurrence), from the
   raw points; l_0 = the arithmetic mean of λ* over seeds (linear units, computed in log space).

**Non-monotone norms.** The official code calls ``np.interp`` on the time-ordered norm sequence, which
is meaningless when the norm ever decreases (weight decay, early transients; PROTOCOL §9.17). Here a
run is interpolated through its *record points* only: the epochs at which the norm exceeds every
earlier value (its running-maximum envelope). For a monotone run these are all points, so the result
equals the official one; for a non-monotone run the epochs spent below an earlier maximum are left
out of the curve (they still count for λ*). The number of such runs is reported.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxscale.analysis.curves import Aggregated, SeedCurves
from jaxscale.errors import UsageError

DEFAULT_GRID_POINTS = 50


@dataclasses.dataclass(frozen=True)
class GriddedSeeds:
    """Every run interpolated onto one grid: the per-seed input of aggregation and the bootstrap.

    Attributes:
      P: float64 [nP], training-set sizes.
      log_grid: float64 [G], natural log of the grid norms.
      error: float64 [nP, nS, G], interpolated test error (fraction), NaN outside each run's range.
      log_lambda_star: float64 [nP, nS], ln of each run's λ*; NaN if the run has no finite point.
      n_nonmonotone: number of runs whose norm decreased at some logged epoch.
      norm_name, label: carried over from :class:`SeedCurves`.
    """

    P: np.ndarray
    log_grid: np.ndarray
    error: np.ndarray
    log_lambda_star: np.ndarray
    n_nonmonotone: int
    norm_name: str
    label: str


#: every seed's curve is interpolated onto the grid: [nP, nS, n] floats per array
MAX_GRID_POINTS = 10_000


def parse_grid(spec: str) -> np.ndarray:
    """``"a,b,n"`` (log10 bounds, like ``numpy.logspace(a, b, n)``) → ln grid [n]."""
    parts = [s.strip() for s in str(spec).split(",")]
    try:
        if len(parts) != 3:
            raise ValueError
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise UsageError(f"--grid {spec!r} is not 'a,b,n'; give log10 bounds and a point count, e.g. --grid 3.4,9,50") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b and 3 <= n <= MAX_GRID_POINTS):
        raise UsageError(f"--grid {spec!r} needs finite a < b and 3 <= n <= {MAX_GRID_POINTS} (numpy.logspace(a, b, n)); "
                         "e.g. --grid 3.4,9,50")
    return np.linspace(a, b, n) * math.log(10.0)


def default_log_grid(curves: SeedCurves, n: int = DEFAULT_GRID_POINTS) -> np.ndarray:
    """ln grid [n], log-spaced from the smallest to the largest norm over all logged points (of all runs)
    where both the norm and the test error are finite."""
    valid = np.isfinite(curves.log_norm) & np.isfinite(curves.test_error)
    values = curves.log_norm[valid]
    if values.size == 0 or values.min() == values.max():
        raise UsageError(f"{curves.label}: no run has a finite, varying log_{curves.norm_name}; check the run or choose another --norm")
    return np.linspace(values.min(), values.max(), n)


def interpolate_seeds(curves: SeedCurves, log_grid: np.ndarray) -> GriddedSeeds:
    """Interpolate every run onto ``log_grid`` (ln norms) and find each run's λ* (module docstring)."""
    nP, nS, _ = curves.test_error.shape
    error = np.full((nP, nS, log_grid.size), np.nan)
    log_lstar = np.full((nP, nS), np.nan)
    n_nonmono = 0
    for p in range(nP):
        for s in range(nS):
            x, y = curves.log_norm[p, s], curves.test_error[p, s]
            ok = np.isfinite(x) & np.isfinite(y)
            x, y = x[ok], y[ok]
            if x.size == 0:
                continue
            log_lstar[p, s] = x[np.argmin(y)]  # argmin returns the first occurrence, as in the notebook
            previous_max = np.concatenate([[-np.inf], np.maximum.accumulate(x)[:-1]])
            record = x > previous_max
            n_nonmono += int(not record.all())
            error[p, s] = np.interp(log_grid, x[record], y[record], left=np.nan, right=np.nan)
    return GriddedSeeds(P=curves.P.astype(np.float64), log_grid=np.asarray(log_grid, dtype=np.float64), error=error,
                        log_lambda_star=log_lstar, n_nonmonotone=n_nonmono, norm_name=curves.norm_name,
                        label=curves.label)


def aggregate(gridded: GriddedSeeds, seed_index: np.ndarray | None = None) -> Aggregated:
    """Seed-average the gridded runs (PROTOCOL §6 steps 3–4).

    Args:
      gridded: the interpolated runs.
      seed_index: optional int [nP, m] — which seeds (with repetition) to average for each P; the
        bootstrap passes resampled indices. ``None`` = all seeds once.
    """
    err, lls = gridded.error, gridded.log_lambda_star
    if seed_index is not None:
        err = np.take_along_axis(err, seed_index[:, :, None], axis=1)
        lls = np.take_along_axis(lls, seed_index, axis=1)
    finite = np.isfinite(err)
    count = finite.sum(axis=1)
    total = np.where(finite, err, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return Aggregated(P=gridded.P, log_grid=gridded.log_grid, mean_error=mean, log_l0=log_mean_exp(lls),
                      n_seeds=np.isfinite(lls).sum(axis=1), norm_name=gridded.norm_name, label=gridded.label)


def log_mean_exp(log_values: np.ndarray) -> np.ndarray:
    """ln(mean(exp(v))) over the last axis ignoring NaN; NaN where a row has no finite value.

    The arithmetic mean of λ* in linear units, computed without overflow (ViT norms reach e^180).
    """
    finite = np.isfinite(log_values)
    n = finite.sum(axis=-1)
    top = np.max(np.where(finite, log_values, -np.inf), axis=-1)
    safe_top = np.where(n > 0, top, 0.0)
    total = np.where(finite, np.exp(np.where(finite, log_values, 0.0) - safe_top[..., None]), 0.0).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, safe_top + np.log(total) - np.log(np.maximum(n, 1)), np.nan)


@dataclasses.dataclass(frozen=True)
class Optima:
    """Per-P optimum of the mean curve (PROTOCOL §6 step 7).

    Attributes:
      index: int64 [nP], grid index k* of the first minimum; -1 where the curve is all NaN.
      eps_star: float64 [nP], ε*(P) = min_k mean_error (fraction); NaN where index is -1.
      log_lambda_star: float64 [nP], ln of the grid norm at the minimum; NaN where index is -1.
    """

    index: np.ndarray
    eps_star: np.ndarray
    log_lambda_star: np.ndarray


def curve_optima(agg: Aggregated) -> Optima:
    """Minimum of each mean curve (NaN-ignoring, first occurrence, like ``np.nanargmin``)."""
    has = np.isfinite(agg.mean_error).any(axis=1)
    k = np.argmin(np.where(np.isfinite(agg.mean_error), agg.mean_error, np.inf), axis=1)
    rows = np.arange(agg.P.size)
    eps = np.where(has, agg.mean_error[rows, k], np.nan)
    return Optima(index=np.where(has, k, -1), eps_star=eps, log_lambda_star=np.where(has, agg.log_grid[k], np.nan))
