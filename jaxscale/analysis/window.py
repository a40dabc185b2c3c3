"""The γ₁ fit window [x_left, x_right] on the normalised axis u = λ/λ*: given, or chosen automatically.

When no window satisfies the rule below, :func:`choose_window` raises :class:`NoWindowError` and the
pipeline falls back to every point left of the optimum, flagging the result (``Window.fallback``).

**Automatic rule** (deterministic; used when no bound is given and the input stores none):

On a log-spaced grid with step Δ (in ln λ), point j steps left of a curve's minimum sits at
ln u = −jΔ on every curve, so a window is a range of offsets j1 ≤ j ≤ j2 (j1 ≥ 1: the minimum itself
is never in the window). A window is *acceptable* when

1. every curve of the fit (P ≥ P[min_p]) has at least ``min_points`` (≥ 5) finite points in it,
2. every curve falls towards its optimum there (positive fitted slope of ln v against −ln u), and
3. a straight line in log-log fits every curve as well as a cubic does, up to noise: the pooled
   lack-of-fit F-test of "one line per curve" against "one cubic per curve" (ln v against ln u)
   does not reject at level ``alpha``, and
4. the fitted fall of ln ε across the window is at least ``MIN_DROP_FRACTION`` (10 %) of the curves'
   whole fall from their highest point to the optimum (means over curves): a nearly flat stretch,
   such as the plateau at chance level early in training, is straight but is not the first law.

Among acceptable windows the one chosen is the power law over the **largest drop of the error**:
the largest mean, over curves, of the fitted decrease of ln ε across the curve's points in the window
(ties: nearest the optimum). Measuring the drop rather than the width in λ avoids the long, nearly
flat approach to the optimum that ViT-like curves show over many decades of λ. On the paper's ResNet
CIFAR-10, ResNet MNIST and ViT CIFAR-10 curves the γ₁ found this way is within 10 % of the authors'
hand-tuned fits (a test checks it); on other curves it may differ or find no window.

The window found is then **trimmed** by ``margin`` (10 %) of its width at each end (at least one grid
step, never below ``min_points`` per curve): a lack-of-fit test is weakest at a window's ends, where
the flattening into the optimum or the saturation at chance level starts, and the widest window that
passes tends to end exactly there. The test's noise level is the cubics' residual scatter, so nothing
else is tuned to the data: on smooth curves slight curvature is rejected, on noisy curves wider
windows pass and the error bars (and the bootstrap, which re-chooses the window on every replicate)
carry the scatter. On grids much finer than the logged epochs the interpolated curves are piecewise
linear, the test rejects readily and no window may qualify: use a coarser --grid or give the bounds.

The reported bounds sit half a grid step outside the extreme points kept, u ∈ [e^{−(j2+½)Δ}, e^{−(j1−½)Δ}],
so refitting with those bounds selects the same points. Long grids are searched on every s-th offset,
s = ⌈J/64⌉ (J = the largest offset), to bound the cost.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import special

from jaxscale.analysis.aggregate import Optima
from jaxscale.analysis.curves import Aggregated
from jaxscale.analysis.fits import normalised_log_curve
from jaxscale.errors import UsageError

DEFAULT_MIN_POINTS = 5
DEFAULT_ALPHA = 0.05
DEFAULT_MARGIN = 0.1
MAX_CANDIDATE_BOUNDS = 64
MIN_DROP_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class Window:
    """A γ₁ window on u = λ/λ*. ``None`` bound = no bound.

    ``p_value`` (automatic windows only): the lack-of-fit test's p-value on the chosen window.
    ``fallback``: no window passed the rule; the fit uses every point left of the optimum instead.
    """

    x_left: float | None
    x_right: float | None
    automatic: bool
    p_value: float | None = None
    fallback: bool = False


class NoWindowError(UsageError):
    """No window satisfies the automatic rule."""


def fallback_window(agg: Aggregated) -> Window:
    """Every point left of the optimum (the optimum itself excluded): what is left when the rule finds
    nothing, so that a run still gets its figures and report — flagged, and to be read as rough."""
    step = _uniform_step(agg.log_grid)
    return Window(x_left=None, x_right=math.exp(-0.5 * step), automatic=True, fallback=True)


def choose_window(agg: Aggregated, optima: Optima, min_p: int, *, min_points: int = DEFAULT_MIN_POINTS,
                  alpha: float = DEFAULT_ALPHA, margin: float = DEFAULT_MARGIN) -> Window:
    """Pick the γ₁ window by the rule in the module docstring.

    Raises NoWindowError (a UsageError) when no window qualifies, UsageError when the grid is not
    log-spaced or no curve of the fit has a minimum.
    """
    min_points = max(int(min_points), 5)  # the cubic needs 5 points per curve to leave a residual
    step = _uniform_step(agg.log_grid)
    curves = [i for i in range(min_p, agg.P.size) if optima.index[i] >= 0]
    if not curves:
        raise UsageError("no curve P >= P[min_p] has a finite minimum; lower --min-p or check the grid (--grid)")
    J = int(max(optima.index[i] for i in curves)) + 1
    y = np.full((len(curves), J), np.nan)  # ln v at offset j left of each minimum
    for row, i in enumerate(curves):
        _, lv = normalised_log_curve(agg, optima, i)
        k = optima.index[i]
        y[row, : k + 1] = lv[k::-1]

    stride = max(1, math.ceil(J / MAX_CANDIDATE_BOUNDS))
    bounds = np.arange(1, J, stride)
    j1, j2 = (a.reshape(-1) for a in np.meshgrid(bounds, bounds, indexing="ij"))
    finite = np.isfinite(y)
    cum = np.concatenate([np.zeros((len(curves), 1)), np.cumsum(finite, axis=1)], axis=1)
    covered = (j2 - j1 + 1 >= min_points) & ((cum[:, j2 + 1] - cum[:, j1]).min(axis=0) >= min_points)
    if not covered.any():
        raise NoWindowError(_no_window_msg(agg, min_p, min_points, alpha))
    # each curve's first and last point inside each window; windows shrink onto the data they hold
    offsets = np.arange(J)
    next_finite = np.minimum.accumulate(np.where(finite, offsets, J)[:, ::-1], axis=1)[:, ::-1]
    prev_finite = np.maximum.accumulate(np.where(finite, offsets, -1), axis=1)
    first, last = next_finite[:, j1[covered]], prev_finite[:, j2[covered]]  # [curves, windows]
    pairs = np.unique(np.stack([first.min(axis=0), last.max(axis=0)], axis=1), axis=0)
    j1, j2 = pairs[:, 0], pairs[:, 1]
    first, last = next_finite[:, j1].T, prev_finite[:, j2].T  # [windows, curves]
    n, rss_line, gain, slope = _window_fits(y, j1, j2)  # each [windows, curves]
    rise = slope * (last - first)  # fitted increase of ln v across each curve's own points
    df1, df2 = 2 * len(curves), n.sum(axis=1) - 4 * len(curves)
    with np.errstate(divide="ignore", invalid="ignore"):
        f_stat = (gain.sum(axis=1) / df1) / ((rss_line - gain).sum(axis=1) / df2)
    # 0/0 (noise-free straight data: both fits exact) counts as a perfect fit
    p_value = np.where(np.isnan(f_stat), 1.0, special.fdtrc(df1, df2, np.nan_to_num(f_stat, nan=0.0)))
    total_fall = np.nanmax(y, axis=1).mean()  # mean over curves of ln(max ε / ε*)
    good = (rise > 0).all(axis=1) & (p_value >= alpha) & (rise.mean(axis=1) >= MIN_DROP_FRACTION * total_fall)
    if not good.any():
        raise NoWindowError(_no_window_msg(agg, min_p, min_points, alpha))
    drop = np.where(good, rise.mean(axis=1), -np.inf)
    best = np.flatnonzero(drop == drop.max())
    pick = best[np.argmin(j1[best])]
    lo, hi = _trim(finite, int(j1[pick]), int(j2[pick]), min_points, margin)
    return Window(x_left=math.exp(-(hi + 0.5) * step), x_right=math.exp(-(lo - 0.5) * step),
                  automatic=True, p_value=float(p_value[pick]))


def _trim(finite: np.ndarray, j1: int, j2: int, min_points: int, margin: float) -> tuple[int, int]:
    """Shrink j1..j2 by ⌈margin·(j2 − j1)⌉ offsets at each end, less if a curve would drop below min_points."""
    for cut in range(math.ceil(margin * (j2 - j1)), 0, -1):
        if finite[:, j1 + cut: j2 - cut + 1].sum(axis=1).min() >= min_points:
            return j1 + cut, j2 - cut
    return j1, j2


def _window_fits(y: np.ndarray, j1: np.ndarray, j2: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-curve line and cubic least squares of y [C, J] against the offset, in every window j1..j2.

    Returns, each [windows, C]: n (finite points), RSS of the line, the RSS reduction of the cubic
    over the line, and the line's slope in y per offset. The abscissa is rescaled to s ∈ [−1, 1]
    inside each window (well-conditioned moments); the cubic's normal equations are solved by blocks
    (line part, then the Schur complement of the s², s³ part), all 2×2 and in closed form, because
    this runs for every window of every bootstrap replicate.
    """
    offsets = np.arange(y.shape[1])
    mid, half = 0.5 * (j1 + j2), 0.5 * (j2 - j1)
    inside = ((offsets[None, :] >= j1[:, None]) & (offsets[None, :] <= j2[:, None])).astype(np.float64)  # [W, J]
    s = (offsets[None, :] - mid[:, None]) / half[:, None]
    w = np.isfinite(y).astype(np.float64)  # [C, J]
    yw = np.where(np.isfinite(y), y, 0.0)
    # moments Σ s^k (k ≤ 6) and Σ y·s^k (k ≤ 3) per window and curve: one [W, J] @ [J, C] product each
    S, B, power = [], [], inside
    for k in range(7):
        S.append(power @ w.T)
        if k < 4:
            B.append(power @ yw.T)
        power = power * s
    syy = inside @ (yw * yw).T
    det1 = S[0] * S[2] - S[1] ** 2
    c0 = (S[2] * B[0] - S[1] * B[1]) / det1
    c1 = (S[0] * B[1] - S[1] * B[0]) / det1
    rss_line = np.maximum(syy - c0 * B[0] - c1 * B[1], 0.0)
    # residual of (Σ y s², Σ y s³) after the line, and the Schur complement M of the line block
    r0 = B[2] - S[2] * c0 - S[3] * c1
    r1 = B[3] - S[3] * c0 - S[4] * c1
    x00, x01 = (S[2] * S[2] - S[1] * S[3]) / det1, (S[2] * S[3] - S[1] * S[4]) / det1
    x10, x11 = (S[0] * S[3] - S[1] * S[2]) / det1, (S[0] * S[4] - S[1] * S[3]) / det1
    m00 = S[4] - S[2] * x00 - S[3] * x10
    m01 = S[5] - S[2] * x01 - S[3] * x11
    m11 = S[6] - S[3] * x01 - S[4] * x11
    gain = (m11 * r0 * r0 - 2 * m01 * r0 * r1 + m00 * r1 * r1) / (m00 * m11 - m01 * m01)
    gain = np.clip(gain, 0.0, rss_line)
    return S[0], rss_line, gain, c1 / half[:, None]


def _uniform_step(log_grid: np.ndarray) -> float:
    d = np.diff(log_grid)
    if d.size == 0 or not np.all(d > 0) or np.ptp(d) > 1e-6 * d.mean():
        raise UsageError("the automatic γ1 window needs a log-spaced norm grid; give --x-left/--x-right or a --grid a,b,n")
    return float(d.mean())


def _no_window_msg(agg: Aggregated, min_p: int, min_points: int, alpha: float) -> str:
    return (
        f"no automatic γ1 window: no range left of the optima has >= {min_points} points on every curve P >= "
        f"{agg.P[min_p]:g} where a log-log line fits (lack-of-fit p >= {alpha:g}); give --x-left/--x-right, "
        f"raise --min-p, or use a finer --grid"
    )
