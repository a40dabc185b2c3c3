"""From a loaded input to a finished analysis: grid → interpolation → aggregation → fits → bootstrap.

Run directories and reference files meet in :class:`~jaxscale.analysis.curves.Aggregated`; after that
there is one pipeline (:func:`jaxscale.analysis.pipeline.fit_all`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxscale.analysis.aggregate import aggregate, default_log_grid, interpolate_seeds
from jaxscale.analysis.bootstrap import BootstrapResult, bootstrap
from jaxscale.analysis.curves import Aggregated, AnalysisInput
from jaxscale.analysis.pipeline import Fit, Settings, fit_all
from jaxscale.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Input, the aggregated curves, the fits and (runs only) the bootstrap."""

    input: AnalysisInput
    settings: Settings
    aggregated: Aggregated
    fit: Fit
    bootstrap: BootstrapResult | None
    grid_source: str  # "file" (reference), "--grid" or "default" (runs: DEFAULT_GRID_POINTS over all norms)
    n_nonmonotone: int  # runs whose norm decreased at some logged epoch (see aggregate's docstring)
    notes: tuple[str, ...] = ()


def analyze(inp: AnalysisInput, settings: Settings, *, log_grid: np.ndarray | None = None, n_bootstrap: int = 0,
            seed: int = 0, progress=None) -> Analysis:
    """Run the analysis; ``log_grid`` (ln norms) and ``n_bootstrap`` > 0 need per-seed curves.
    ``progress(done, total)`` follows the bootstrap replicates."""
    if inp.seeds is None:
        if log_grid is not None:
            raise UsageError("--grid applies to run directories; a reference file is already on its grid, drop --grid")
        if n_bootstrap > 0:
            raise UsageError("--bootstrap needs per-seed curves; a reference file holds only seed means, use --bootstrap 0")
        fit = fit_all(inp.aggregated, settings)
        return Analysis(inp, settings, inp.aggregated, fit, None, "file", 0)
    grid = default_log_grid(inp.seeds) if log_grid is None else log_grid
    gridded = interpolate_seeds(inp.seeds, grid)
    agg = aggregate(gridded)
    fit = fit_all(agg, settings)
    boot, notes = None, ()
    if n_bootstrap > 0 and inp.seeds.seeds.size > 1:
        boot = bootstrap(gridded, settings, n_bootstrap, seed, fallback=fit.window.fallback, progress=progress)
    elif n_bootstrap > 0:
        notes = ("bootstrap skipped: the run has a single seed, there is nothing to resample",)
    return Analysis(inp, settings, agg, fit, boot, "default" if log_grid is None else "--grid", gridded.n_nonmonotone,
                    notes)
