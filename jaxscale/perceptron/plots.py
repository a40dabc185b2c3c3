"""The perceptron figure: ε against λ(t) along GD, over the fixed-norm theory curves.

One colour per α: the simulated trajectories (thin lines per seed, markers for the seed mean at
each logged step), the theory ε(λ, α) (solid), the Hebb level ε_Hebb(α) (dashed, the λ → 0
limit), the max-margin level ε_mm(α) (dotted, the λ → ∞ limit) and λ*(α) (star).
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TheoryCurve:
    """ε(λ, α) on a λ grid plus the limits and the optimum (fractions; λ = |w|/√N)."""

    alpha: float
    lam: np.ndarray
    eps: np.ndarray
    eps_hebb: float
    eps_max_margin: float
    lam_star: Optional[float]
    eps_star: Optional[float]


def theory_curves(alphas: Sequence[float], lam_min: float, lam_max: float, points: int) -> list[TheoryCurve]:
    """Theory curves for the figure, one per α, on geomspace(lam_min, lam_max, points)."""
    from jaxscale.perceptron import theory

    out = []
    lam = np.geomspace(lam_min, lam_max, points)
    for a in alphas:
        opt = theory.optimal_norm(a)
        out.append(TheoryCurve(
            alpha=float(a), lam=lam, eps=np.asarray(theory.eps_fixed_norm(lam, a)),
            eps_hebb=float(theory.eps_hebb(a)), eps_max_margin=float(theory.eps_max_margin(a)),
            lam_star=opt.lam_star, eps_star=opt.eps_star,
        ))
    return out


def plot_trajectories(
    curves: Mapping[str, np.ndarray], theory: Sequence[TheoryCurve], out_base: str | Path, *, title: str = "",
) -> list[Path]:
    """Draw the figure and write ``out_base``.png and .pdf; returns the two paths.

    ``curves``: the perceptron's curves.npz arrays (``alpha`` [nP], ``test_error`` and ``log_norm``
    [nP, nS, nT]); ``theory``: one :class:`TheoryCurve` per α, in the same order as ``alpha``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from jaxscale.io import atomic_write_bytes

    alphas = np.asarray(curves["alpha"], float)
    eps = np.asarray(curves["test_error"], float)
    lam = np.exp(np.asarray(curves["log_norm"], float))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(alphas), 1)))

    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=150)
    for i, (a, th) in enumerate(zip(alphas, theory)):
        c = colors[i]
        ax.plot(th.lam, th.eps, color=c, lw=2.0, zorder=3)
        ax.axhline(th.eps_hebb, color=c, lw=1.0, ls="--", alpha=0.8)
        ax.axhline(th.eps_max_margin, color=c, lw=1.0, ls=":", alpha=0.9)
        if th.lam_star is not None:
            ax.plot([th.lam_star], [th.eps_star], marker="*", ms=11, color=c, mec="k", mew=0.6, zorder=5)
        for s in range(eps.shape[1]):
            ok = np.isfinite(lam[i, s]) & np.isfinite(eps[i, s])
            ax.plot(lam[i, s, ok], eps[i, s, ok], color=c, lw=0.6, alpha=0.35, zorder=2)
        # seed mean at each logged step: geometric mean of λ, arithmetic mean of ε
        with np.errstate(invalid="ignore"):
            lm = np.exp(np.nanmean(np.log(lam[i]), axis=0))
            em = np.nanmean(eps[i], axis=0)
        ok = np.isfinite(lm) & np.isfinite(em)
        ax.plot(lm[ok], em[ok], "o", ms=3.2, color=c, mec="k", mew=0.3, zorder=4)

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"norm $\lambda = |w|/\sqrt{N}$")
    ax.set_ylabel(r"generalisation error $\varepsilon = \arccos(R)/\pi$")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    handles = [Line2D([], [], color=colors[i], lw=2.5, label=f"α = {a:g}") for i, a in enumerate(alphas)]
    handles += [
        Line2D([], [], color="gray", lw=2.0, label="theory ε(λ, α)"),
        Line2D([], [], color="gray", marker="o", ls="", mec="k", mew=0.3, label="GD (seed mean; lines: seeds)"),
        Line2D([], [], color="gray", lw=1.0, ls="--", label="Hebb (λ → 0)"),
        Line2D([], [], color="gray", lw=1.0, ls=":", label="max margin (λ → ∞)"),
        Line2D([], [], color="gray", marker="*", ls="", ms=10, mec="k", mew=0.6, label="λ*, ε*"),
    ]
    ax.legend(handles=handles, fontsize=7.5, loc="lower left", ncol=2, framealpha=0.9)
    fig.tight_layout()

    out_base = Path(out_base)
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext)
        paths.append(atomic_write_bytes(out_base.with_suffix("." + ext), buf.getvalue()))
    plt.close(fig)
    return paths
