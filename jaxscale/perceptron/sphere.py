r"""The sphere-constrained logistic minimiser, found numerically (JAX), to validate the theory.

For one teacher–student instance (the same data as :mod:`jaxscale.perceptron.simulate`) and a norm
λ, minimise the mean loss f(u) = (1/P) Σ_μ log(1 + exp(−λ y_μ u·x_μ)) over unit vectors u (the
student v = λu has norm λ). The problem is convex over the ball |u| ≤ 1 and, the data being
separable, its minimiser lies on the sphere, so it is unique and any descent method finds it.

Method: Riemannian Newton on the sphere, in float32, vmapped over instances, applied to F = ln f
(same minimiser; accurate in float32 when f is tiny at large λ). With the Euclidean gradient g_E
and Hessian H_E of F, the multiplier μ = u·g_E, the Riemannian gradient
g = (I − uuᵀ) g_E and Hessian (I − uuᵀ) H_E (I − uuᵀ) − μ (I − uuᵀ) (μ ≤ 0 near the solution, so
it is positive definite there); the step ξ ⊥ u solves [Hess + uuᵀ] ξ = −g and is retracted by
u ← (u + tξ)/|u + tξ| with t the largest of 1, ½, ¼, … satisfying Armijo's condition. The start is
the Hebb direction Σ y x/|Σ y x| (the exact solution as λ → 0), or, along an increasing list of
λ, the solution at the previous λ (continuation: at λ ≳ 30 a cold start from Hebb stalls in
float32). Converges quadratically; the returned Riemannian gradient norm tells how well.

Variance reduction. The instance-to-instance spread of ε is mostly driven by a few data statistics
whose means are known exactly; they are used as control variates (regression estimator):

* c₁ = mean_μ |u_μ| − √(2/π), with u_μ = w*·x_μ/√N the teacher fields;
* c₂ = mean_μ u_μ² − 1;
* c₃ = |J_⊥|²/(P(N−1)) − 1, with J_⊥ the part of the Hebb vector Σ_μ y_μ x_μ orthogonal to w*
  (J_⊥ ~ N(0, P I_{N−1}) exactly, because y depends on x only through u);
* c₄ = tr(W²)/N − (N + P + 1)/P, with W = XᵀX/P (the Wishart moment E tr(W²) = N(N+P+1)/P).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxscale.perceptron.simulate import _log_loss, _loss_ratio, make_instances

#: backtracking step sizes tried by the line search (largest first)
_STEPS = tuple(0.5**k for k in range(24))


def _parts(u, X, y, lam):
    """F = ln f, its Euclidean gradient [N] and Hessian [N, N] at v = λu, f the mean loss.

    Working with ln f (log-sum-exp of log ℓ) keeps float32 accurate at large λ, where f ~ e^{−λκ}
    is tiny and f's own gradient falls below rounding long before u has converged.
    With p = softmax(log ℓ(z)), r₁ = ℓ'/ℓ, r₂ = ℓ''/ℓ:
    ∇F = λ Xᵀ(p r₁ y) and ∇²F = λ² Xᵀ diag(p r₂) X − ∇F ∇Fᵀ.
    """
    z = lam * y * (X @ u)
    ll = _log_loss(z)
    F = jax.nn.logsumexp(ll) - jnp.log(X.shape[0])
    p = jax.nn.softmax(ll)
    r1 = _loss_ratio(z)
    r2 = jnp.exp(jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z) - ll)
    g = lam * ((p * r1 * y) @ X)
    H = (lam * lam) * (X.T * (p * r2)) @ X - jnp.outer(g, g)
    return F, g, H


def _value(u, X, y, lam):
    return jax.nn.logsumexp(_log_loss(lam * y * (X @ u))) - jnp.log(X.shape[0])


def minimise_on_sphere(X, y, lam, u0=None, iters: int = 30, tol: float = 1e-9):
    """Unit vector u minimising the mean logistic loss of λu on one instance.

    X [P, N] float32, y [P] ±1, lam scalar, u0 [N] start (None: the Hebb direction; at large λ
    start from the solution at a smaller λ). Stops when the Newton decrement −gᵀξ (twice the
    predicted decrease of ln f) falls below ``tol`` — then u is within ~√tol of the optimum, i.e.
    ε within ~1e-5 — when a step makes no progress in float32, or after ``iters`` iterations.
    Returns (u [N], |Riemannian gradient| at u, iterations used). vmap it over instances.
    """
    N = X.shape[1]
    if u0 is None:
        u0 = y @ X
    u0 = u0 / jnp.linalg.norm(u0)
    eye = jnp.eye(N, dtype=X.dtype)
    steps = jnp.asarray(_STEPS, X.dtype)

    def newton(state):
        it, u, _, _ = state
        f, gE, HE = _parts(u, X, y, lam)
        mu = jnp.dot(u, gE)
        g = gE - mu * u
        Pj = eye - jnp.outer(u, u)
        hess = Pj @ HE @ Pj - mu * Pj + jnp.outer(u, u)
        xi = jnp.linalg.solve(hess, -g)
        xi = xi - jnp.dot(xi, u) * u
        slope = jnp.dot(g, xi)
        # fall back to steepest descent if the Newton direction is not a descent direction
        newton_ok = slope < 0
        xi = jnp.where(newton_ok, xi, -g)
        slope = jnp.where(newton_ok, slope, -jnp.dot(g, g))
        cand = u[None, :] + steps[:, None] * xi[None, :]
        cand = cand / jnp.linalg.norm(cand, axis=1, keepdims=True)
        fc = jax.vmap(_value, in_axes=(0, None, None, None))(cand, X, y, lam)
        # Armijo on F = ln f, with a little slack for float32 rounding of F itself
        ok = fc <= f + 1e-4 * steps * slope + 1e-6 * jnp.abs(f)
        # first (largest) step meeting Armijo; else the best candidate if it improves f at all
        k = jnp.where(jnp.any(ok), jnp.argmax(ok), jnp.argmin(fc))
        improved = fc[k] <= f
        u_new = jnp.where(improved, cand[k], u)
        dec = jnp.where(newton_ok, -slope, jnp.inf)
        return it + 1, u_new, dec, improved & jnp.any(u_new != u)

    def cond(state):
        it, _, dec, moved = state
        return (it < iters) & (dec > tol) & moved

    it, u, _, _ = lax.while_loop(cond, newton, (jnp.int32(0), u0, jnp.asarray(jnp.inf, X.dtype), jnp.bool_(True)))
    _, gE, _ = _parts(u, X, y, lam)
    g = gE - jnp.dot(u, gE) * u
    return u, jnp.linalg.norm(g), it


def control_variates(X, y, w_star):
    """[4] control variates (c₁..c₄ of the module docstring, each of exact mean 0) of one instance."""
    P, N = X.shape
    u = X @ w_star / jnp.sqrt(N)
    c1 = jnp.mean(jnp.abs(u)) - math.sqrt(2 / math.pi)
    c2 = jnp.mean(u * u) - 1.0
    J = y @ X
    what = w_star / jnp.linalg.norm(w_star)
    J_perp = J - jnp.dot(J, what) * what
    c3 = jnp.dot(J_perp, J_perp) / (P * (N - 1)) - 1.0
    W = (X.T @ X) / P
    c4 = jnp.sum(W * W) / N - (N + P + 1) / P
    return jnp.stack([c1, c2, c3, c4])


@dataclasses.dataclass(frozen=True)
class SphereEstimate:
    """ε of the sphere minimiser at one λ over M instances.

    eps: per-instance ε [M]; mean, se: plain estimate and its standard error; cv_mean, cv_se: the
    control-variate estimate and its standard error; max_grad: worst Riemannian gradient norm.
    """

    lam: float
    eps: np.ndarray
    mean: float
    se: float
    cv_mean: float
    cv_se: float
    max_grad: float


def cv_estimate(y: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """Regression (control-variate) estimate of E[y] with controls c [M, k] of known mean 0.

    Fits y ≈ a + c·b by least squares; a is the estimate, its standard error the residual standard
    deviation (M − k − 1 degrees of freedom) over √M.
    """
    y = np.asarray(y, float)
    c = np.asarray(c, float)
    M, k = c.shape
    A = np.concatenate([np.ones((M, 1)), c - 0.0], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    dof = max(M - k - 1, 1)
    # the intercept's standard error from the OLS covariance (accounts for the fitted b)
    cov = np.linalg.inv(A.T @ A) * (resid @ resid) / dof
    return float(coef[0]), float(math.sqrt(cov[0, 0]))


def sphere_eps(
    alpha: float, lams: Sequence[float], *, N: int, instances: int, seed_start: int = 10_000, iters: int = 30,
    batch: int = 32,
) -> list[SphereEstimate]:
    """ε of the sphere-constrained minimiser at each λ, over ``instances`` seeds (vmapped in batches).

    Instances use seeds seed_start, seed_start+1, … (the simulate generator, P = round(αN)).
    """
    P = int(round(alpha * N))
    solve = jax.jit(jax.vmap(functools.partial(minimise_on_sphere, iters=iters), in_axes=(0, 0, None, 0)))
    cvs = jax.jit(jax.vmap(control_variates))
    lam_sorted = sorted(float(l) for l in lams)
    eps = {lam: [] for lam in lam_sorted}
    grads = {lam: [] for lam in lam_sorted}
    controls = []
    for b0 in range(0, instances, batch):
        seeds = np.arange(seed_start + b0, seed_start + min(b0 + batch, instances))
        data = make_instances(seeds, N, P)
        controls.append(np.asarray(cvs(data.X, data.y, data.w_star), float))
        u = jnp.einsum("sp,spn->sn", data.y, data.X)  # Hebb start, then continuation in λ
        for lam in lam_sorted:
            u, gn, _ = solve(data.X, data.y, jnp.float32(lam), u)
            R = np.asarray(jnp.sum(u * data.w_star, axis=1) / jnp.linalg.norm(data.w_star, axis=1), float)
            eps[lam].append(np.arccos(np.clip(R, -1, 1)) / np.pi)
            grads[lam].append(np.asarray(gn, float))
    c = np.concatenate(controls)
    out = []
    for lam in [float(l) for l in lams]:
        e = np.concatenate(eps[lam])
        m, s = cv_estimate(e, c)
        out.append(SphereEstimate(
            lam=lam, eps=e, mean=float(e.mean()), se=float(e.std(ddof=1) / math.sqrt(len(e))),
            cv_mean=m, cv_se=s, max_grad=float(np.concatenate(grads[lam]).max()),
        ))
    return out


@dataclasses.dataclass(frozen=True)
class ValidationRow:
    """Theory vs the sphere minimiser at one λ, extrapolated to N → ∞ from two sizes.

    per_size: {N: (cv mean, cv se)}; extrap, extrap_se: (N₂ε₂ − N₁ε₁)/(N₂ − N₁) and its standard
    error (removes the O(1/N) finite-size bias); z = (extrap − theory)/extrap_se.
    """

    lam: float
    theory: float
    per_size: dict
    extrap: float
    extrap_se: float
    z: float
    max_grad: float


def validate_fixed_norm(
    alpha: float, lams: Sequence[float], *, sizes: tuple[int, int] = (100, 200),
    instances: tuple[int, int] = (128, 64), seed_start: int = 10_000, batch: int = 64,
) -> list[ValidationRow]:
    """Compare ε(λ, α) of :mod:`jaxscale.perceptron.theory` with the numerical sphere minimiser.

    At each of two sizes N₁ < N₂ the mean ε over independent instances (disjoint seed ranges) is
    estimated with control variates; the two are extrapolated linearly in 1/N. The leading
    finite-size effect is O(1/N) (at N = 200, α = 5 it is −5e-4 at λ = 0.1, 10× the control-variate
    standard error, so it must be removed, not hidden in the error bar).
    """
    from jaxscale.perceptron.theory import eps_fixed_norm

    (N1, N2), (M1, M2) = sizes, instances
    est1 = sphere_eps(alpha, lams, N=N1, instances=M1, seed_start=seed_start, batch=batch)
    est2 = sphere_eps(alpha, lams, N=N2, instances=M2, seed_start=seed_start + M1, batch=batch)
    th = np.atleast_1d(eps_fixed_norm(np.asarray(lams, float), alpha))
    rows = []
    for lam, e_th, a, b in zip(lams, th, est1, est2):
        ex = (N2 * b.cv_mean - N1 * a.cv_mean) / (N2 - N1)
        se = math.sqrt((N2 * b.cv_se) ** 2 + (N1 * a.cv_se) ** 2) / (N2 - N1)
        rows.append(ValidationRow(
            lam=float(lam), theory=float(e_th), per_size={N1: (a.cv_mean, a.cv_se), N2: (b.cv_mean, b.cv_se)},
            extrap=ex, extrap_se=se, z=(ex - e_th) / se, max_grad=max(a.max_grad, b.max_grad),
        ))
    return rows
