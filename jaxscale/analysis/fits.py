"""The fits of PROTOCOL §6 steps 5, 6, 8, 9 with the official error formulas.

* γ₁ ("first law"): each mean curve P ≥ P[min_p] is normalised at its minimum, u = λ/λ*, v = ε/ε*;
  inside the window x_left ≤ u ≤ x_right, ln v = ln k_i − γ_i ln u by OLS. γ₁ = mean γ_i,
  err γ₁ = √(mean σ_i²) (RMS of the per-curve slope errors — the official definition, *not* divided
  by √N; PROTOCOL §9.8), k₁ = mean k_i.
* γ₂ ("second law"): ln l_0 = ln k₂ + γ₂ ln P by OLS over P[gamma2_start:], err = slope std. error.
* measured exponent: ln ε* = c − γ_meas ln P over all P with a finite optimum (like
  ``scipy.stats.linregress``), err = slope std. error.
* prediction γ₁γ₂ with err = |γ₁γ₂|·√((e₁/γ₁)² + (e₂/γ₂)²) and the consistency
  z = (γ_meas − γ₁γ₂)/√(err_pred² + err_meas²); consistent iff |z| ≤ 2 (two combined sigmas).

Slopes do not depend on the logarithm's base, so everything is fitted in natural logs; k_i =
exp(intercept) equals the notebook's 10^intercept of its log10 fit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxscale.analysis.aggregate import Optima
from jaxscale.analysis.curves import Aggregated
from jaxscale.errors import UsageError

CONSISTENCY_SIGMAS = 2.0
MIN_FIT_POINTS = 3  # a slope error needs n − 2 > 0 degrees of freedom


@dataclasses.dataclass(frozen=True)
class LineFit:
    """OLS fit y = intercept + slope·x. ``stderr`` = √(SSR/(n−2)/S_xx); NaN when n < 3."""

    slope: float
    intercept: float
    stderr: float
    n: int


def ols(x: np.ndarray, y: np.ndarray) -> LineFit:
    """Ordinary least squares of y [n] on x [n] (n ≥ 2, x not constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    intercept = float(ym - slope * xm)
    ssr = float(((y - intercept - slope * x) ** 2).sum())
    stderr = math.sqrt(ssr / (n - 2) / sxx) if n > 2 else math.nan
    return LineFit(slope=slope, intercept=intercept, stderr=stderr, n=n)


def normalised_log_curve(agg: Aggregated, optima: Optima, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(ln u, ln v) [G] of curve i normalised at its minimum; ln v is NaN where v is not finite or ≤ 0."""
    t = agg.log_grid - agg.log_grid[optima.index[i]]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = agg.mean_error[i] / optima.eps_star[i]
        lv = np.where(np.isfinite(v) & (v > 0), np.log(np.where(v > 0, v, 1.0)), np.nan)
    return t, lv


@dataclasses.dataclass(frozen=True)
class Gamma1Fit:
    """First-law fit. Per-P arrays are [nP] (NaN / 0 / False for curves not fitted).

    ``log_u_range``: smallest and largest ln(λ/λ*) among the points fitted (for drawing the fit).
    """

    gamma_1: float
    err_gamma_1: float
    k1: float
    gamma_i: np.ndarray
    err_i: np.ndarray
    k_i: np.ndarray
    n_points: np.ndarray
    used: np.ndarray
    log_u_range: tuple[float, float]


def _log_bound(bound: float | None, default: float) -> float:
    return default if bound is None or math.isnan(bound) else (math.log(bound) if bound > 0 else -math.inf)


def fit_gamma1(agg: Aggregated, optima: Optima, x_left: float | None, x_right: float | None, min_p: int) -> Gamma1Fit:
    """γ₁ over curves i ≥ min_p inside x_left ≤ λ/λ* ≤ x_right (None/NaN = no bound).

    A curve with fewer than 3 points in the window cannot give a slope error and is left out
    (``used`` False, ``n_points`` tells why). Raises UsageError when no curve is left.
    """
    nP = agg.P.size
    lo, hi = _log_bound(x_left, -math.inf), _log_bound(x_right, math.inf)
    gam, err, k = (np.full(nP, np.nan) for _ in range(3))
    npts = np.zeros(nP, dtype=np.int64)
    t_lo, t_hi = math.inf, -math.inf
    for i in range(min_p, nP):
        if optima.index[i] < 0 or not optima.eps_star[i] > 0:
            continue
        t, lv = normalised_log_curve(agg, optima, i)
        keep = np.isfinite(lv) & (t >= lo) & (t <= hi)
        npts[i] = int(keep.sum())
        if npts[i] >= MIN_FIT_POINTS and np.ptp(t[keep]) > 0:
            f = ols(t[keep], lv[keep])
            gam[i], err[i], k[i] = -f.slope, f.stderr, math.exp(f.intercept)
            t_lo, t_hi = min(t_lo, float(t[keep].min())), max(t_hi, float(t[keep].max()))
    used = np.isfinite(gam)
    if not used.any():
        raise UsageError(
            f"the γ1 window [{_fmt(x_left)}, {_fmt(x_right)}] (on λ/λ*) leaves fewer than {MIN_FIT_POINTS} points on "
            f"every curve P >= {agg.P[min_p]:g}; widen --x-left/--x-right, lower --min-p, or use the automatic window "
            f"(--auto-window)"
        )
    return Gamma1Fit(gamma_1=float(gam[used].mean()), err_gamma_1=float(np.sqrt(np.mean(err[used] ** 2))),
                     k1=float(k[used].mean()), gamma_i=gam, err_i=err, k_i=k, n_points=npts, used=used,
                     log_u_range=(t_lo, t_hi))


@dataclasses.dataclass(frozen=True)
class Gamma2Fit:
    """Second-law fit l_0 = k₂ P^γ₂; ``used`` [nP] marks the P values in the regression."""

    gamma_2: float
    err_gamma_2: float
    k2: float
    used: np.ndarray


def fit_gamma2(agg: Aggregated, start: int) -> Gamma2Fit:
    """OLS of ln l_0 on ln P over P[start:] with finite l_0; needs at least 2 P values."""
    used = np.zeros(agg.P.size, dtype=bool)
    used[start:] = np.isfinite(agg.log_l0[start:])
    if used.sum() < 2:
        raise UsageError(
            f"the γ2 fit needs at least 2 P values with a finite λ* from index {start} on, found {int(used.sum())}; "
            f"lower --gamma2-start or add P values"
        )
    f = ols(np.log(agg.P[used]), agg.log_l0[used])
    return Gamma2Fit(gamma_2=f.slope, err_gamma_2=f.stderr, k2=math.exp(f.intercept), used=used)


@dataclasses.dataclass(frozen=True)
class MeasuredFit:
    """ε*(P) = c·P^(−γ_meas) over the P values marked in ``used`` [nP]."""

    gamma_measured: float
    err_gamma_measured: float
    prefactor: float
    used: np.ndarray


def fit_measured(agg: Aggregated, optima: Optima) -> MeasuredFit:
    """Regress ln ε* on ln P over every P with a positive finite optimum (PROTOCOL §6.9)."""
    used = np.isfinite(optima.eps_star) & (optima.eps_star > 0)
    if used.sum() < 2:
        return MeasuredFit(math.nan, math.nan, math.nan, used)
    f = ols(np.log(agg.P[used]), np.log(optima.eps_star[used]))
    return MeasuredFit(gamma_measured=-f.slope, err_gamma_measured=f.stderr, prefactor=math.exp(f.intercept), used=used)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """γ₁γ₂ with its propagated error and the comparison with the measured exponent."""

    gamma_pred: float
    err_gamma_pred: float
    z: float
    consistent: bool | None  # None when the measured exponent or an error is undefined


def predict(g1: Gamma1Fit, g2: Gamma2Fit, measured: MeasuredFit) -> Prediction:
    """γ_pred = γ₁γ₂, its error by first-order propagation, and z of (γ_meas − γ_pred)."""
    pred = g1.gamma_1 * g2.gamma_2
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = math.hypot(g1.err_gamma_1 / g1.gamma_1, g2.err_gamma_2 / g2.gamma_2) if g1.gamma_1 and g2.gamma_2 else math.nan
    err_pred = abs(pred) * rel
    total = math.hypot(err_pred, measured.err_gamma_measured)
    z = (measured.gamma_measured - pred) / total if total > 0 else math.nan
    return Prediction(gamma_pred=pred, err_gamma_pred=err_pred, z=z,
                      consistent=None if math.isnan(z) else bool(abs(z) <= CONSISTENCY_SIGMAS))


def _fmt(bound: float | None) -> str:
    return "none" if bound is None or math.isnan(bound) else f"{bound:g}"
