r"""Replica theory of the teacher–student perceptron (NumPy/SciPy, float64).

Setting (N → ∞, P = αN): inputs x ~ N(0, I_N), teacher w* on the sphere |w*|² = N, labels
y = sign(w*·x/√N). A student direction w on the same sphere has *stability* Δ = y w·x/√N and
overlap R = w·w*/N; its generalisation error is ε = arccos(R)/π. Three students:

* **Hebb** (w ∝ Σ_μ y_μ x_μ): ε_Hebb(α) = arccos(√(2α/(2α+π)))/π.
* **Maximal stability / max margin** (w maximises κ = min_μ Δ_μ): :func:`eps_max_margin`.
* **Fixed norm λ**: w minimises Σ_μ ℓ(λΔ_μ) on the sphere, ℓ(z) = log(1+e^{−z}) — the logistic
  loss of the *un-normalised* weights λw at norm |λw|/√N = λ. :func:`eps_fixed_norm`.

Derivation of the fixed-norm saddle point
-----------------------------------------
Gibbs measure ∝ exp(−β Σ_μ V(Δ_μ)) on the sphere, V(Δ) = ℓ(λΔ). Replica symmetry with overlaps
q (student–student) and R (student–teacher) gives, per N,

    ln Z / N = extr_{q,R} [ ½ ln(1−q) + (q−R²)/(2(1−q))
                            + α E_{u,z} ln ∫Dξ exp(−β V(y (R u + √(q−R²) z + √(1−q) ξ))) ],

u, z, ξ independent standard Gaussians, u the teacher field, y = sign(u). At zero temperature the
minimiser is unique (the problem is a convex one over the ball |w|² ≤ N whose solution lies on
the sphere, since separable data push the unconstrained minimum to infinity), so q → 1 with
x = lim β(1−q) finite. Laplace's method on ξ (Δ = h₀ + √(x/β) ξ) turns the inner integral into
the Moreau envelope M_x(h₀) = min_Δ [V(Δ) + (Δ−h₀)²/(2x)], and the ground-state energy per N is

    e = extr_{R,x} [ −(1−R²)/(2x) + α E[ M_x(h₀) ] ],   h₀ = y (R u + √(1−R²) z).

The minimiser of the envelope is the proximal point Δ*(h₀) = prox_{xV}(h₀). Write
g = Δ* − h₀ = −x V'(Δ*) ≥ 0 (how far the loss pushes a stability up) and
p' = ∂Δ*/∂h₀ = 1/(1 + x V''(Δ*)). Stationarity in x and R (the latter simplified by Gaussian
integration by parts in z) gives the saddle-point equations

    (E1)   1 − R²  = α E[ g² ]
    (E2)   R       = α E[ g |u| ] + α R E[ 1 − p' ].

Since y u = |u| and y z is again standard normal, h₀ = R|u| + √(1−R²) z is skew-normal; every
expectation is a 1-D integral over h = h₀ with the densities

    p(h) = 2 φ(h) Φ(R h / s),       E[f(h₀)]       = ∫ p(h) f(h) dh,
    q(h) = 2 φ(h) s m(R h / s),     E[f(h₀) |u|]   = ∫ q(h) f(h) dh,

s = √(1−R²), m(t) = t Φ(t) + φ(t). Checks: λ → 0 makes V linear, g constant, p' = 1, and (E1,E2)
give R² = 2α/(2α+π) (Hebb). λ → ∞ sends x → ∞ like e^{λκ}/λ: g → (κ − h)_+ and 1 − p' → 1[h < κ],
which are the maximal-stability equations below.

Numerics. In scaled variables z = λΔ, z₀ = λh and A = ln(xλ²) the proximal equation
z − z₀ = e^A σ(−z) becomes, for τ = ln(z − z₀) (so g = e^τ/λ),

    G(τ) = τ + softplus(z₀ + e^τ) − A = 0,

with G convex and strictly increasing in τ; Newton's method started from an upper bound
(τ ≤ min(A, ln max(A − z₀, 1))) decreases monotonically to the root for every z₀ and every A,
and nothing of size e^A is ever formed, so λ up to 10⁵ (A ≈ λκ ≈ 10⁴–10⁵) is as safe as λ = 10⁻³.
1 − p' = e^τ σ(z)/(1 + e^τ σ(z)). The h-integrals use composite Gauss–Legendre panels on
[−10, 10] refined geometrically around h = 0 (where p has a step of width s when R → 1) and
around the loss's kink h ≈ A/λ (width ~ 1/λ at large λ). The unknowns are solved nested: for
given R, (E1) is monotone in A (safeguarded Newton); then (E2)'s residual changes sign once
in ln ε ∈ (ln 10⁻¹², ln ½) (Brent). Continuation in λ supplies the brackets.

Maximal stability (Gardner 1988; Engel & Van den Broeck, *Statistical Mechanics of Learning*, ch. 4):
the same equations with the hard wall V = 0 for Δ ≥ κ, +∞ otherwise, whose proximal map is
max(h, κ), so g = (κ − h)_+ and 1 − p' = 1[h < κ]:

    1 − R² = α ∫_{−∞}^{κ} p(h)(κ − h)² dh,
    R (1 − α ∫_{−∞}^{κ} p(h) dh) = α ∫_{−∞}^{κ} q(h)(κ − h) dh,

two equations for (R, κ); ε_mm(α)·α → 0.5005 as α → ∞.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import optimize, special

#: integration range of h (the densities are < 1e-21 outside)
_H_MAX = 10.0
#: Gauss–Legendre nodes per panel
_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
#: lower end of the ε bracket (ln ε)
_LOG_EPS_MIN = math.log(1e-12)
_LOG_EPS_MAX = math.log(0.5)


# ------------------------------------------------------------------------------------------------
# closed forms and quadrature helpers


def eps_hebb(alpha: float | np.ndarray) -> float | np.ndarray:
    """Hebb-rule generalisation error ε_Hebb(α) = arccos(√(2α/(2α+π)))/π (fraction; α = P/N > 0)."""
    a = np.asarray(alpha, dtype=float)
    out = np.arccos(np.sqrt(2 * a / (2 * a + np.pi))) / np.pi
    return float(out) if out.ndim == 0 else out


def _panels(features: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss–Legendre nodes/weights on [−10, 10].

    ``features`` = [(centre, width), ...]: panels shrink geometrically (ratio 3) from ~1 down to
    ``width`` around each centre, so a feature of that width anywhere near the centre is resolved.
    Returns (h [n], w [n]).
    """
    bps = set(np.linspace(-_H_MAX, _H_MAX, 21).tolist())
    for c, width in features:
        if not (np.isfinite(c) and np.isfinite(width)) or abs(c) >= _H_MAX:
            continue
        bps.add(float(c))
        d = max(float(width), 1e-9)
        while d < 2.0:
            bps.add(c - d)
            bps.add(c + d)
            d *= 3.0
    b = np.array(sorted(x for x in bps if -_H_MAX <= x <= _H_MAX))
    b = b[np.concatenate([[True], np.diff(b) > 1e-14])]
    lo, hi = b[:-1], b[1:]
    half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
    h = (mid[:, None] + half[:, None] * _GL_X[None, :]).ravel()
    w = (half[:, None] * _GL_W[None, :]).ravel()
    return h, w


def _m(t: np.ndarray) -> np.ndarray:
    """m(t) = tΦ(t) + φ(t) = E[(Z + t)_+], stable for t → −∞ (via erfcx)."""
    t = np.asarray(t, float)
    phi = np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    out = np.empty_like(t)
    pos = t >= 0
    out[pos] = t[pos] * special.ndtr(t[pos]) + phi[pos]
    tn = t[~pos]
    # Φ(t) = ½ erfcx(−t/√2) e^{−t²/2}; factor φ(t) out to avoid the cancellation of tΦ + φ
    out[~pos] = phi[~pos] * (1.0 + tn * math.sqrt(math.pi / 2) * special.erfcx(-tn / math.sqrt(2)))
    return np.maximum(out, 0.0)


def _densities(R: float, s: float, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p(h), q(h) of the module docstring (skew-normal density, and its |u|-weighted version).

    ``s`` = √(1−R²) is passed separately: near R = 1 it must come from sin(πε), not from 1 − R².
    """
    phi = np.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)
    if s == 0.0:
        p = 2 * phi * (h > 0)
        q = 2 * phi * np.maximum(h, 0.0)
    else:
        p = 2 * phi * special.ndtr(R * h / s)
        q = 2 * phi * s * _m(R * h / s)
    return p, q


def _Rs(le: float) -> tuple[float, float]:
    """(R, s) = (cos πε, sin πε) for ε = e^le, accurate even when ε is tiny."""
    e = math.exp(le)
    return math.cos(math.pi * e), math.sin(math.pi * e)


# ------------------------------------------------------------------------------------------------
# maximal stability


@dataclasses.dataclass(frozen=True)
class MaxMarginSolution:
    """Saddle point of the maximal-stability perceptron: α, overlap R, margin κ, ε = arccos(R)/π."""

    alpha: float
    R: float
    kappa: float
    eps: float


def _mm_kappa(R: float, s: float, alpha: float) -> float:
    """κ solving (E1) of the max-margin problem for given (R, s) (monotone in κ)."""
    target = s * s / alpha

    def f(kappa: float) -> float:
        h, w = _panels([(0.0, max(s, 1e-9)), (kappa, 1.0)])
        p, _ = _densities(R, s, h)
        g = np.maximum(kappa - h, 0.0)
        return float(np.sum(w * p * g * g)) - target

    lo, hi = -1.0, 1.0
    while f(lo) > 0:
        lo = 2 * lo - 1
    while f(hi) < 0:
        hi = 2 * hi + 1
    return optimize.brentq(f, lo, hi, xtol=1e-15, rtol=1e-14, maxiter=200)


def _mm_e2(R: float, s: float, kappa: float, alpha: float) -> float:
    h, w = _panels([(0.0, max(s, 1e-9)), (kappa, 1.0)])
    p, q = _densities(R, s, h)
    below = h < kappa
    g = np.where(below, kappa - h, 0.0)
    return alpha * float(np.sum(w * q * g)) + alpha * R * float(np.sum(w * p * below)) - R


def max_margin_solution(alpha: float) -> MaxMarginSolution:
    """Solve the maximal-stability saddle point at α > 0 (see the module docstring)."""
    alpha = _check_alpha(alpha)

    def resid(le: float) -> float:
        R, s = _Rs(le)
        return _mm_e2(R, s, _mm_kappa(R, s, alpha), alpha)

    le = optimize.brentq(resid, _LOG_EPS_MIN, _LOG_EPS_MAX - 1e-12, xtol=1e-13, rtol=1e-13, maxiter=200)
    R, s = _Rs(le)
    return MaxMarginSolution(alpha=alpha, R=R, kappa=_mm_kappa(R, s, alpha), eps=math.exp(le))


def eps_max_margin(alpha: float | Iterable[float]) -> float | np.ndarray:
    """Generalisation error (fraction) of the maximal-stability perceptron at α (scalar or array)."""
    if np.ndim(alpha) == 0:
        return max_margin_solution(float(alpha)).eps
    return np.array([max_margin_solution(float(a)).eps for a in np.asarray(alpha, float).ravel()])


# ------------------------------------------------------------------------------------------------
# fixed norm


def _prox_tau(z0: np.ndarray, A: float, iters: int = 200) -> np.ndarray:
    """Root τ(z₀) of G(τ) = τ + softplus(z₀ + e^τ) − A (see the module docstring). Shapes as z0.

    Newton from the upper bound τ_u = min(A, ln max(A − z₀, 1)) (G(τ_u) ≥ 0): G is convex and
    increasing, so the iterates decrease monotonically to the root; clipping at τ_u keeps that
    true even for a warm start below the root.
    """
    tau_u = np.minimum(A, np.log(np.maximum(A - z0, 1.0)))
    t = tau_u.copy()
    for _ in range(iters):
        et = np.exp(t)
        z = z0 + et
        G = t + np.logaddexp(0.0, z) - A
        Gp = 1.0 + et * special.expit(z)
        step = G / Gp
        t = np.minimum(t - step, tau_u)
        # quadratic convergence: after a step of 1e-9 the error is ~1e-18, below rounding of G
        if np.max(np.abs(step) / (1.0 + np.abs(t))) < 1e-9:
            break
    return t


@dataclasses.dataclass(frozen=True)
class FixedNormSolution:
    """Saddle point of the fixed-norm problem at (λ, α).

    Attributes: ``R`` overlap with the teacher; ``A`` = ln(xλ²) with x = lim β(1−q);
    ``eps`` = arccos(R)/π; ``kappa`` = A/λ (→ the max margin as λ → ∞); ``residual`` max |E1|, |E2|.
    """

    lam: float
    alpha: float
    R: float
    A: float
    eps: float
    residual: float

    @property
    def kappa(self) -> float:
        return self.A / self.lam


def _fn_terms(R: float, s: float, A: float, lam: float) -> tuple[float, float, float, float]:
    """(E[g²], E[g²p'], E[g|u|], E[1−p']) at (R, s, A, λ) by composite quadrature."""
    kink = max(A - 1.0, 0.0) / lam
    h, w = _panels([(0.0, max(s, 1e-9)), (kink, 1.0 / lam)])
    p, q = _densities(R, s, h)
    t = _prox_tau(lam * h, A)
    et = np.exp(t)
    z = lam * h + et
    c = et * special.expit(z)
    one_minus_pp = c / (1.0 + c)
    g = et / lam
    g2 = g * g
    return (
        float(np.sum(w * p * g2)),
        float(np.sum(w * p * g2 * (1.0 - one_minus_pp))),
        float(np.sum(w * q * g)),
        float(np.sum(w * p * one_minus_pp)),
    )


def _fn_solve_A(R: float, s: float, lam: float, alpha: float, A0: float) -> float:
    """A solving (E1) for given R: ln(α E[g²]) = ln(s²); increasing in A with slope 2E[g²p']/E[g²] ∈ (0, 2]."""
    target = math.log(s * s / alpha)

    def f(A: float) -> tuple[float, float]:
        g2, g2pp, _, _ = _fn_terms(R, s, A, lam)
        if g2 <= 0.0:
            return -math.inf, 2.0
        return math.log(g2) - target, 2.0 * g2pp / g2

    # safeguarded Newton: f is increasing, so every evaluation narrows a bracket (lo, hi); a
    # Newton step that leaves it is replaced by bisection (both ends are then finite)
    lo, hi = -math.inf, math.inf
    A = A0
    for _ in range(300):
        fa, da = f(A)
        if fa == 0.0:
            return A
        if fa < 0:
            lo = A
        else:
            hi = A
        if np.isfinite(fa) and da > 0:
            step = -fa / da
            step = math.copysign(min(abs(step), 10.0 + abs(A)), step)
        else:
            step = 10.0 + abs(A)
        if abs(step) < 1e-13 * (1.0 + abs(A)):
            return A + step
        An = A + step
        if not (lo < An < hi):
            An = 0.5 * (lo + hi)
        if (hi - lo) < 1e-13 * (1.0 + abs(A)):
            return An
        A = An
    raise RuntimeError(f"fixed-norm theory: (E1) did not converge at lam={lam}, R={R}")


def _fn_e2(R: float, s: float, A: float, lam: float, alpha: float) -> float:
    _, _, gu, ompp = _fn_terms(R, s, A, lam)
    return alpha * gu + alpha * R * ompp - R


def fixed_norm_solution(
    lam: float, alpha: float, guess: Optional[FixedNormSolution] = None
) -> FixedNormSolution:
    """Solve (E1, E2) at one (λ, α); ``guess`` (e.g. the solution at a nearby λ) speeds it up."""
    lam = float(lam)
    alpha = _check_alpha(alpha)
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be positive and finite, got {lam}")
    if guess is not None:
        # A ≈ ln(2cλ) at small λ, ≈ λκ at large λ: carry κ = A/λ or the offset, whichever applies
        ratio = lam / guess.lam
        A_prev = guess.A * ratio if guess.A > 2.0 else guess.A + math.log(ratio)
        le0 = math.log(guess.eps)
    else:
        le0 = math.log(0.5 * (eps_hebb(alpha) + 0.5 / (1.0 + alpha)))
        A_prev = math.log(lam) if lam < 1 else lam * 0.5
    state = {"A": A_prev}

    def resid(le: float) -> float:
        R, s = _Rs(le)
        A = _fn_solve_A(R, s, lam, alpha, state["A"])
        state["A"] = A
        return _fn_e2(R, s, A, lam, alpha)

    # (E2)'s residual goes from −1 (ε → 0) to αE[g|u|] > 0 (ε = ½): bracket ln ε around the
    # guess, widening geometrically
    width = 0.05 if guess is not None else 0.5
    lo, hi = max(le0 - width, _LOG_EPS_MIN), min(le0 + width, _LOG_EPS_MAX - 1e-12)
    flo, fhi = resid(lo), resid(hi)
    while flo > 0 and lo > _LOG_EPS_MIN:
        hi, fhi = lo, flo
        width *= 3
        lo = max(le0 - width, _LOG_EPS_MIN)
        flo = resid(lo)
    while fhi < 0 and hi < _LOG_EPS_MAX - 1e-12:
        lo, flo = hi, fhi
        width *= 3
        hi = min(le0 + width, _LOG_EPS_MAX - 1e-12)
        fhi = resid(hi)
    if not (flo <= 0 <= fhi):
        raise RuntimeError(f"fixed-norm theory: no sign change of (E2) at lam={lam}, alpha={alpha}")
    le = optimize.brentq(resid, lo, hi, xtol=1e-14, rtol=1e-13, maxiter=200)
    R, s = _Rs(le)
    A = _fn_solve_A(R, s, lam, alpha, state["A"])
    g2, _, _, _ = _fn_terms(R, s, A, lam)
    res = max(abs(alpha * g2 - s * s), abs(_fn_e2(R, s, A, lam, alpha)))
    return FixedNormSolution(lam=lam, alpha=alpha, R=R, A=A, eps=math.exp(le), residual=res)


def fixed_norm_path(lams: Iterable[float], alpha: float) -> list[FixedNormSolution]:
    """Solutions along a set of λ (any order), solved in increasing λ with continuation."""
    lams = np.asarray(list(lams), float)
    order = np.argsort(lams)
    out: list[Optional[FixedNormSolution]] = [None] * len(lams)
    prev = None
    for i in order:
        prev = fixed_norm_solution(float(lams[i]), alpha, guess=prev)
        out[i] = prev
    return out  # type: ignore[return-value]


def eps_fixed_norm(lam: float | Iterable[float], alpha: float) -> float | np.ndarray:
    """ε(λ, α) (fraction) of the sphere-constrained logistic minimiser at norm λ = |w|/√N.

    ``lam``: scalar or array of norms (solved with continuation in λ); returns the same shape.
    """
    if np.ndim(lam) == 0:
        return fixed_norm_solution(float(lam), alpha).eps
    lam_arr = np.asarray(lam, float)
    sols = fixed_norm_path(lam_arr.ravel(), alpha)
    return np.array([s.eps for s in sols]).reshape(lam_arr.shape)


@dataclasses.dataclass(frozen=True)
class OptimalNorm:
    """λ*(α) = argmin_λ ε(λ, α) on [lam_min, lam_max] and ε* = ε(λ*, α); both None when the
    minimum sits at the edge of the range (no finite optimum found there)."""

    alpha: float
    lam_star: Optional[float]
    eps_star: Optional[float]


def optimal_norm(alpha: float, lam_min: float = 1e-3, lam_max: float = 1e5, n_grid: int = 41) -> OptimalNorm:
    """Minimise ε(λ, α) over ln λ: a log-grid scan with continuation, then Brent on the bracket."""
    alpha = _check_alpha(alpha)
    grid = np.geomspace(lam_min, lam_max, n_grid)
    sols = fixed_norm_path(grid, alpha)
    eps = np.array([s.eps for s in sols])
    k = int(np.argmin(eps))
    if k == 0 or k == len(grid) - 1:
        return OptimalNorm(alpha=alpha, lam_star=None, eps_star=None)
    guess = {"sol": sols[k]}

    def f(ll: float) -> float:
        sol = fixed_norm_solution(math.exp(ll), alpha, guess=guess["sol"])
        return sol.eps

    res = optimize.minimize_scalar(
        f, bracket=(math.log(grid[k - 1]), math.log(grid[k]), math.log(grid[k + 1])),
        method="brent", options={"xtol": 1e-8},
    )
    return OptimalNorm(alpha=alpha, lam_star=float(math.exp(res.x)), eps_star=float(res.fun))


# ------------------------------------------------------------------------------------------------
# population loss (the perceptron's test_loss)


def population_logistic_loss(lam: np.ndarray, R: np.ndarray) -> np.ndarray:
    """E_x[ℓ(λ y ŵ·x/√N)] for a student of norm λ and teacher overlap R (nats).

    The stability of a fresh pattern is λh with h skew-normal (density p above), so the loss is
    ∫ p(h) log(1+e^{−λh}) dh. ``lam``, ``R``: broadcastable arrays; NaN in, NaN out.
    """
    lam_b, R_b = np.broadcast_arrays(np.asarray(lam, float), np.asarray(R, float))
    out = np.full(lam_b.shape, np.nan)
    for idx in np.ndindex(lam_b.shape):
        la, r = lam_b[idx], R_b[idx]
        if not (np.isfinite(la) and np.isfinite(r)) or la < 0:
            continue
        r = float(np.clip(r, -1.0, 1.0))
        s = math.sqrt(max(1 - r * r, 0.0))
        h, w = _panels([(0.0, max(s, 1e-9)), (0.0, 1.0 / max(la, 1e-9))])
        p, _ = _densities(r, s, h)
        out[idx] = float(np.sum(w * p * np.logaddexp(0.0, -la * h)))
    return out


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    return alpha
