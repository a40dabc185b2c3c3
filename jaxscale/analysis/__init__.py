"""Fits of the two dynamical scaling laws on learning curves (pure NumPy/SciPy; matplotlib for figures only).

Flow (one pipeline for both kinds of input)::

    run dir / curves.npz  --load_input-->  SeedCurves  --interpolate_seeds-->  GriddedSeeds
                                                                                   | aggregate
    reference .npz  --load_input------------------------------------------>  Aggregated
                                                                                   | fit_all
    optima -> window (given | choose_window) -> γ₁ (fit_gamma1), γ₂ (fit_gamma2),   v
    measured ε*(P) exponent (fit_measured), γ₁γ₂ and the consistency z (predict) -> Fit

    runs: bootstrap over seeds (GriddedSeeds -> aggregate -> fit_all, repeated) -> intervals
    report.to_dict / summary_text / markdown_report, plots.make_figures, cli (jaxscale analyze)

Modules: ``curves`` (inputs), ``aggregate`` (PROTOCOL §6 steps 1–4, 7), ``fits`` (steps 5, 6, 8, 9),
``window`` (automatic γ₁ window), ``pipeline`` (``fit_all``), ``bootstrap``, ``driver`` (``analyze``),
``report``, ``plots``, ``cli`` (``jaxscale analyze``), ``synthetic`` (curves with known exponents).
"""

from jaxscale.analysis.aggregate import (GriddedSeeds, Optima, aggregate, curve_optima, default_log_grid,
                                         interpolate_seeds, parse_grid)
from jaxscale.analysis.bootstrap import BootstrapResult, bootstrap
from jaxscale.analysis.curves import Aggregated, AnalysisInput, FileSettings, SeedCurves, load_input
from jaxscale.analysis.driver import Analysis, analyze
from jaxscale.analysis.fits import (Gamma1Fit, Gamma2Fit, LineFit, MeasuredFit, Prediction, fit_gamma1, fit_gamma2,
                                    fit_measured, ols, predict)
from jaxscale.analysis.pipeline import Fit, Settings, fit_all
from jaxscale.analysis.synthetic import make_synthetic_curves
from jaxscale.analysis.window import Window, choose_window

__all__ = [
    "Aggregated", "Analysis", "AnalysisInput", "BootstrapResult", "FileSettings", "Fit", "Gamma1Fit", "Gamma2Fit",
    "GriddedSeeds", "LineFit", "MeasuredFit", "Optima", "Prediction", "SeedCurves", "Settings", "Window",
    "aggregate", "analyze", "bootstrap", "choose_window", "curve_optima", "default_log_grid", "fit_all",
    "fit_gamma1", "fit_gamma2", "fit_measured", "interpolate_seeds", "load_input", "make_synthetic_curves", "ols",
    "parse_grid", "predict",
]
