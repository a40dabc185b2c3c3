"""Bootstrap over seeds: confidence intervals that the official analysis does not give.

Each replicate draws, independently for every P, nS seeds with replacement, re-aggregates them
(NaN-mean curve, l_0 and optima), re-chooses the window if it is automatic, and refits everything
(:func:`jaxscale.analysis.pipeline.fit_all`). The interpolation of each run onto the grid does not depend
on which seeds are drawn, so it is done once and reused; the grid itself stays the one of the full
ensemble. Intervals are percentile intervals of the replicates that could be fitted; replicates where
the pipeline fails (e.g. too few points left in a given window) are counted in ``n_failed`` and left
out. So are, counted in ``n_window_mismatch``, replicates where the automatic window rule ends
differently from the full ensemble (finds a window where the full ensemble fell back to every point
left of the optimum, or the reverse): their γ₁ estimates a different quantity, and mixing the two
kinds would give intervals that describe neither.

**Intervals: expanded percentile.** Plain percentile intervals are too narrow with few resampled
units (the bootstrap variance of a mean of n seeds is (n−1)/n of the real one, and the tails are
normal instead of Student-t); with the 5–30 seeds of typical ensembles they undercover. Following
Hesterberg (2015, "What teachers should know about the bootstrap", The American Statistician 69:4),
the nominal level 1−α is reached by reading the percentiles at α'/2 and 1−α'/2 with
Φ⁻¹(α'/2) = −√(n/(n−1))·t_{n−1, 1−α/2}, n = the number of seeds (the smallest count over P).
For n = 12 and 95 % that reads the 1.1 % and 98.9 % percentiles.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from jaxscale.analysis.aggregate import GriddedSeeds, aggregate
from jaxscale.analysis.pipeline import Settings, fit_all
from jaxscale.errors import UsageError

QUANTITIES = ("gamma_1", "gamma_2", "gamma_pred", "gamma_measured")
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """Replicates [n] per quantity (NaN = failed replicate) and their intervals.

    ``n_seeds``: seeds per P that were resampled (smallest count over P), which sets the expansion.
    """

    n: int
    seed: int
    n_seeds: int
    samples: dict[str, np.ndarray]
    n_failed: int
    n_window_mismatch: int

    def tail(self, level: float = LEVEL) -> float:
        """Lower percentile (as a fraction) read for a nominal two-sided ``level`` (module docstring)."""
        k = self.n_seeds
        if k < 2:
            return (1 - level) / 2
        return float(stats.norm.cdf(-np.sqrt(k / (k - 1)) * stats.t.ppf((1 + level) / 2, k - 1)))

    def interval(self, name: str, level: float = LEVEL) -> tuple[float, float]:
        """Expanded percentile interval of the finite replicates of ``name``; (NaN, NaN) if there are none."""
        x = self.samples[name][np.isfinite(self.samples[name])]
        if x.size == 0:
            return float("nan"), float("nan")
        a = self.tail(level)
        lo, hi = np.quantile(x, [a, 1 - a])
        return float(lo), float(hi)

    def std(self, name: str) -> float:
        x = self.samples[name][np.isfinite(self.samples[name])]
        return float(x.std(ddof=1)) if x.size > 1 else float("nan")


def bootstrap(gridded: GriddedSeeds, settings: Settings, n: int, seed: int, *,
              fallback: bool = False, progress=None) -> BootstrapResult:
    """``n`` seed-resampling replicates of the whole fitting pipeline, deterministic given ``seed``.

    ``fallback``: whether the full ensemble's automatic window fell back (module docstring).
    ``progress``: called as ``progress(done, n)`` after every replicate.
    """
    rng = np.random.default_rng(seed)
    nP, nS = gridded.error.shape[:2]
    samples = {q: np.full(n, np.nan) for q in QUANTITIES}
    failed = mismatch = 0
    for b in range(n):
        if progress is not None:
            progress(b, n)
        index = rng.integers(0, nS, size=(nP, nS))
        try:
            fit = fit_all(aggregate(gridded, index), settings)
        except UsageError:  # e.g. no point of a curve left in the window in this replicate: counted, not fatal
            failed += 1
            continue
        if fit.window.fallback != fallback:
            mismatch += 1
            continue
        samples["gamma_1"][b] = fit.gamma1.gamma_1
        samples["gamma_2"][b] = fit.gamma2.gamma_2
        samples["gamma_pred"][b] = fit.prediction.gamma_pred
        samples["gamma_measured"][b] = fit.measured.gamma_measured
    n_seeds = int(np.isfinite(gridded.log_lambda_star).sum(axis=1).min())
    return BootstrapResult(n=n, seed=seed, n_seeds=n_seeds, samples=samples, n_failed=failed,
                           n_window_mismatch=mismatch)
