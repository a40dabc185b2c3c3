"""The four figures of an analysis, each written as PNG and PDF.

matplotlib is imported inside :func:`make_figures` (the rest of the analysis does not need it) and
figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, so no pyplot state or global
backend switch is involved.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from jaxscale.analysis.driver import Analysis
from jaxscale.io import atomic_write_bytes

FIGURE_FILES = {  # title (used in report.md) → file stem
    "Test error vs norm": "curves",
    "Collapse and the first law (γ₁)": "collapse",
    "Optimal norm vs P (γ₂)": "lambda_star",
    "Optimal test error vs P: measured vs predicted": "eps_star",
}


def make_figures(an: Analysis, outdir: str | Path) -> dict[str, str]:
    """Write the four figures into ``outdir`` (PNG + PDF each); return {title: PNG file name}."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    outdir = Path(outdir)
    P = an.aggregated.P
    norm = LogNorm(vmin=P.min(), vmax=P.max()) if P.min() < P.max() else None
    colours = _colours(P, norm)
    builders = {"curves": _curves, "collapse": _collapse, "lambda_star": _lambda_star, "eps_star": _eps_star}
    written = {}
    for title, stem in FIGURE_FILES.items():
        fig = Figure(figsize=(6.4, 4.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        builders[stem](an, ax, colours)
        _readable_log_ticks(ax)
        if stem in ("curves", "collapse") and norm is not None:
            from matplotlib.cm import ScalarMappable

            bar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax)
            bar.set_label("training-set size P (samples)")
            _p_ticks(bar, P)
        for ext in ("png", "pdf"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=150)
            atomic_write_bytes(outdir / f"{stem}.{ext}", buf.getvalue())
        written[title] = f"{stem}.png"
    return written


def _colours(P: np.ndarray, norm) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(float(norm(p))) if norm is not None else cmap(0.5) for p in P]


def _norm_label(an: Analysis) -> str:
    return f"norm λ ({an.aggregated.norm_name}, dimensionless)"


def _curves(an: Analysis, ax, colours) -> None:
    agg, opt = an.aggregated, an.fit.optima
    x = _exp(agg.log_grid)
    for i in range(agg.P.size):
        ax.plot(x, agg.mean_error[i], color=colours[i], lw=1.2)
    has = opt.index >= 0
    ax.scatter(_exp(opt.log_lambda_star[has]), opt.eps_star[has], c=[colours[i] for i in np.flatnonzero(has)],
               edgecolors="black", zorder=3, s=28, label="minimum ε* of each mean curve")
    ax.set(xscale="log", yscale="log", xlabel=_norm_label(an), ylabel="test error ε (fraction)",
           title=f"{agg.label}: seed-averaged test error vs norm")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, which="major", alpha=0.3)


def _collapse(an: Analysis, ax, colours) -> None:
    agg, fit, st = an.aggregated, an.fit, an.settings
    g1, win = fit.gamma1, fit.window
    for i in range(agg.P.size):
        k = fit.optima.index[i]
        if k < 0:
            continue
        u = _exp(agg.log_grid - agg.log_grid[k])
        v = agg.mean_error[i] / fit.optima.eps_star[i]
        fitted = g1.used[i]
        ax.plot(u, v, color=colours[i], lw=1.4 if fitted else 0.7, alpha=1.0 if fitted else 0.35)
    # the shaded window is the given one; an open side is drawn up to the outermost fitted point
    lo = math.log(win.x_left) if win.x_left else g1.log_u_range[0]
    hi = math.log(win.x_right) if win.x_right else g1.log_u_range[1]
    how = "fallback, rough" if win.fallback else ("automatic" if win.automatic else "given")
    ax.axvspan(math.exp(lo), math.exp(hi), color="tab:orange", alpha=0.15, label=f"γ₁ fit window ({how})")
    t = np.linspace(*g1.log_u_range, 50)  # the fit line covers the fitted points only
    ax.plot(np.exp(t), g1.k1 * np.exp(-g1.gamma_1 * t), color="black", lw=2.0, ls="--",
            label=rf"$k_1(\lambda/\lambda^*)^{{-\gamma_1}}$, γ₁ = {g1.gamma_1:.4g} ± {_fmt(g1.err_gamma_1)}")
    ax.set(xscale="log", yscale="log", xlabel="normalised norm λ/λ* (λ* = λ at the minimum of each mean curve)",
           ylabel="normalised test error ε/ε*",
           title=f"{agg.label}: collapse, curves P ≥ {agg.P[st.min_p]:g} fitted (bold)")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, which="major", alpha=0.3)


def _lambda_star(an: Analysis, ax, colours) -> None:
    agg, fit = an.aggregated, an.fit
    g2 = fit.gamma2
    l0 = _exp(agg.log_l0)
    ax.scatter(agg.P[g2.used], l0[g2.used], color="tab:blue", zorder=3, label="l₀ = mean over seeds of λ* (fitted)")
    out = ~g2.used & np.isfinite(agg.log_l0)
    if out.any():
        ax.scatter(agg.P[out], l0[out], facecolors="none", edgecolors="tab:blue", zorder=3, label="l₀ (not fitted)")
    has = fit.optima.index >= 0
    ax.scatter(agg.P[has], _exp(fit.optima.log_lambda_star[has]), marker="x", color="tab:gray",
               label="λ* of the mean curve (grid point)")
    p = np.geomspace(agg.P[g2.used].min(), agg.P[g2.used].max(), 50)
    ax.plot(p, g2.k2 * p**g2.gamma_2, color="black", lw=1.5,
            label=rf"$k_2 P^{{\gamma_2}}$, γ₂ = {g2.gamma_2:.4g} ± {_fmt(g2.err_gamma_2)}")
    ax.set(xscale="log", yscale="log", xlabel="training-set size P (samples)", ylabel=f"optimal {_norm_label(an)}",
           title=f"{agg.label}: optimal norm grows with P")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, which="major", alpha=0.3)


def _eps_star(an: Analysis, ax, colours) -> None:
    agg, fit = an.aggregated, an.fit
    meas, pred = fit.measured, fit.prediction
    used = meas.used
    P, eps = agg.P[used], fit.optima.eps_star[used]
    ax.scatter(P, eps, color="tab:red", zorder=3, label="ε* measured (minimum of the mean curve)")
    p = np.geomspace(P.min(), P.max(), 50)
    # the prediction fixes only the slope: its line goes through the data (least squares in log space),
    # pivoting at the geometric mean of P, and the band shows γ₁γ₂ ± its error
    pivot = math.exp(np.mean(np.log(P)))
    level = math.exp(np.mean(np.log(eps) + pred.gamma_pred * np.log(P / pivot)))
    line = level * (p / pivot) ** -pred.gamma_pred
    if math.isfinite(pred.err_gamma_pred):
        lo = level * (p / pivot) ** -(pred.gamma_pred - pred.err_gamma_pred)
        hi = level * (p / pivot) ** -(pred.gamma_pred + pred.err_gamma_pred)
        ax.fill_between(p, np.minimum(lo, hi), np.maximum(lo, hi), color="gray", alpha=0.25, lw=0,
                        label="prediction ± its error")
    ax.plot(p, line, color="black", lw=1.5,
            label=rf"predicted $P^{{-\gamma_1\gamma_2}}$, γ₁γ₂ = {pred.gamma_pred:.4g} ± {_fmt(pred.err_gamma_pred)}")
    if math.isfinite(meas.gamma_measured):
        ax.plot(p, meas.prefactor * p**-meas.gamma_measured, color="tab:red", lw=1.5, ls="--",
                label=f"fit to ε*: exponent {meas.gamma_measured:.4g} ± {_fmt(meas.err_gamma_measured)}")
    verdict = "n/a" if pred.consistent is None else (f"consistent, z = {pred.z:+.2f}" if pred.consistent
                                                     else f"inconsistent, z = {pred.z:+.2f}")
    ax.set(xscale="log", yscale="log", xlabel="training-set size P (samples)", ylabel="optimal test error ε* (fraction)",
           title=f"{agg.label}: ε*(P), measured vs predicted ({verdict})")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)


def _p_ticks(bar, P: np.ndarray) -> None:
    """Colour-bar ticks at the P values themselves, thinned so that labels do not collide."""
    from matplotlib.ticker import NullLocator

    span = math.log10(P.max() / P.min())
    kept = [P[0]]
    for p in P[1:]:
        if math.log10(p / kept[-1]) >= span / 12:
            kept.append(p)
    bar.set_ticks(kept, labels=[f"{p:g}" for p in kept])
    bar.ax.yaxis.set_minor_locator(NullLocator())


def _readable_log_ticks(ax) -> None:
    """On a log axis spanning under two decades label the ticks as plain numbers (0.4, 0.5, …)
    instead of matplotlib's 4×10⁻¹ mantissa notation, with as many labels as fit."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    def plain(value: float, _pos: int) -> str:
        return f"{value:.0f}" if value >= 1000 else f"{value:.3g}"

    def sparse(value: float, pos: int) -> str:  # minor ticks of a 1–2 decade axis: only 2, 3 and 5
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return plain(value, pos) if mantissa in (2, 3, 5) else ""

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or not lo > 0 or hi / lo >= 100:
            continue
        if hi / lo < 4:  # under ~half a decade the decade ticks leave one or two labels: use round numbers
            axis.set_major_locator(MaxNLocator(nbins=6))
            axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(plain))
        axis.set_minor_formatter(FuncFormatter(plain if hi / lo < 12 else sparse))


def _exp(log_values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # beyond e^709 the value is not drawable anyway
        return np.exp(log_values)


def _fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2g}"
