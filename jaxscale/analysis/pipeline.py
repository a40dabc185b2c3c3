"""The fitting pipeline on one aggregated ensemble: optima → window → γ₁, γ₂, measured, prediction.

:func:`fit_all` is what both inputs go through (run directories after aggregation, reference files
directly) and what the bootstrap repeats on every resample.
"""

from __future__ import annotations

import dataclasses

from jaxscale.analysis.aggregate import Optima, curve_optima
from jaxscale.analysis.curves import Aggregated
from jaxscale.analysis.fits import (Gamma1Fit, Gamma2Fit, MeasuredFit, Prediction, fit_gamma1, fit_gamma2,
                                    fit_measured, predict)
from jaxscale.analysis.window import (DEFAULT_ALPHA, DEFAULT_MARGIN, DEFAULT_MIN_POINTS, NoWindowError, Window,
                                      choose_window, fallback_window)
from jaxscale.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Settings:
    """Fit settings.

    Attributes:
      window: a fixed :class:`Window`, or ``None`` to choose it automatically (``jaxscale.analysis.window``).
      min_p: γ₁ uses curves P[min_p:] (an index into P, like the paper's ``min_P``).
      gamma2_start: γ₂ uses P[gamma2_start:] (an index).
      min_points, alpha, margin: parameters of the automatic window rule.
    """

    window: Window | None = None
    min_p: int = 0
    gamma2_start: int = 0
    min_points: int = DEFAULT_MIN_POINTS
    alpha: float = DEFAULT_ALPHA
    margin: float = DEFAULT_MARGIN


@dataclasses.dataclass(frozen=True)
class Fit:
    """Everything fitted on one aggregated ensemble."""

    optima: Optima
    window: Window
    gamma1: Gamma1Fit
    gamma2: Gamma2Fit
    measured: MeasuredFit
    prediction: Prediction


def fit_all(agg: Aggregated, settings: Settings) -> Fit:
    """Window (given or automatic), γ₁, γ₂, measured exponent and prediction on one ensemble."""
    nP = agg.P.size
    for name, value in (("--min-p", settings.min_p), ("--gamma2-start", settings.gamma2_start)):
        if not 0 <= value < nP:
            raise UsageError(f"{name} {value} is out of range; it is an index into the {nP} P values, give 0..{nP - 1}")
    optima = curve_optima(agg)
    if not (optima.index >= 0).any():
        raise UsageError(f"{agg.label}: no P has a finite test-error minimum on the grid; check that --grid covers the runs' norms")
    window = settings.window
    if window is None:
        try:
            window = choose_window(agg, optima, settings.min_p, min_points=settings.min_points, alpha=settings.alpha,
                                   margin=settings.margin)
        except NoWindowError:
            window = fallback_window(agg)
    g1 = fit_gamma1(agg, optima, window.x_left, window.x_right, settings.min_p)
    g2 = fit_gamma2(agg, settings.gamma2_start)
    measured = fit_measured(agg, optima)
    return Fit(optima=optima, window=window, gamma1=g1, gamma2=g2, measured=measured, prediction=predict(g1, g2, measured))
