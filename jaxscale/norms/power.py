"""Largest singular value by warm-started block power iteration, for dense matrices and conv operators.

Pure functions of arrays (jittable, vmappable over seeds). The caller carries a block of ``k``
orthonormal right vectors between calls (the norm state): after a converged start (:func:`lanczos_top`)
one iteration per train step keeps it converged. The estimate ``σ̂ = ‖AᵀA x‖ / ‖A x‖`` (``x`` the top
Ritz vector) is never above σ_max (‖Aᵀ û‖ ≤ σ_max for unit û), never below the Rayleigh estimate
‖A x‖, costs no extra mat-vec and is exact once ``x`` is the top right singular vector: a stale
block can only make it low. An all-zero operator gives 0 and keeps the block (no NaN).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxscale.models.conv import Padding

# TF32 / bf16-pass defaults of GPUs and TPUs would cost σ its float32 accuracy; these products are
# memory-bound mat-vecs, so HIGHEST costs ~nothing.
_HI = lax.Precision.HIGHEST

# Up to this many iterations the loop is unrolled in Python (the in-step case, n_iter = 1 or 2: no
# while-loop in the step's HLO, so XLA can fuse freely); above it, ``lax.fori_loop`` keeps the
# compiled program small (warm-up / reference calls with hundreds of iterations).
_UNROLL_MAX = 4


def _norm(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.vdot(x, x).real)


def _safe_unit(x: jax.Array, fallback: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x / ‖x‖, ‖x‖)``, or ``(fallback, 0)`` when ``‖x‖ = 0`` (keeps the iteration NaN-free)."""
    n = _norm(x)
    ok = n > 0
    return jnp.where(ok, x / jnp.where(ok, n, 1.0), fallback), n


def _eigh_fixed_signs(m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``jnp.linalg.eigh`` with every eigenvector's sign fixed (largest-magnitude entry positive).

    LAPACK's signs are arbitrary and differed between the batched (``vmap``) and one-at-a-time
    calls, which made the carried vectors — not the norms — depend on the ensemble strategy."""
    evals, evecs = jnp.linalg.eigh(m)
    idx = jnp.argmax(jnp.abs(evecs), axis=0)
    sign = jnp.sign(jnp.take_along_axis(evecs, idx[None, :], axis=0))
    return evals, evecs * jnp.where(sign == 0, 1.0, sign).astype(evecs.dtype)


@jax.custom_batching.custom_vmap
def _orthonormal_rows(x: jax.Array) -> jax.Array:
    """Orthonormal basis ``[k, n]`` of the rows of ``x [k, n]``: row ``j`` spans rows ``0..j`` (best guess
    first); Householder QR stays orthonormal (no NaN) for rank-deficient ``x``.

    Never batched on CPU: several *batched* LAPACK QRs in one program (what ``vmap`` over seeds
    makes of a train step's per-layer QRs) deadlocked XLA:CPU in jax 0.10.2 (6 QRs of ``[8, 32768, 4]``
    in one jitted function hung on the 2nd call). The vmap rule maps the unbatched QR there; on GPU/TPU
    it stays one batched QR (S tiny QRs per layer per step would be launch-bound)."""
    return _qr_rows(x)


def _qr_rows(x: jax.Array) -> jax.Array:
    q, _ = jnp.linalg.qr(jnp.swapaxes(x, -1, -2))
    return jnp.swapaxes(q, -1, -2)


def _map_qr_over_batch(backend: str | None = None) -> bool:
    """Whether batched QRs must be split into a loop of unbatched ones (XLA:CPU only)."""
    return (backend or jax.default_backend()) == "cpu"


@_orthonormal_rows.def_vmap
def _orthonormal_rows_vmap(axis_size, in_batched, x):
    del axis_size, in_batched
    if _map_qr_over_batch():
        return lax.map(_orthonormal_rows, x), True
    return _qr_rows(x), True


def block_power_iteration(apply: Callable, apply_t: Callable, v: jax.Array, n_iter: int) -> tuple[jax.Array, jax.Array]:
    """``n_iter`` (static) block power iterations with Rayleigh–Ritz: ``(sigma [], v_new [k, *shape])``.

    Why a block: the top singular values of a trained layer are nearly degenerate and cross as the
    weights move; one carried vector then follows the *previous* top direction and σ lags by up to
    10 % for tens of steps, while a block keeps the top-``k`` subspace converged. One iteration on
    ``V [k, n]`` (``M = AᵀA``; ``apply``/``apply_t`` map blocks ``[k, *shape]`` ↔ ``[k, *out_shape]``)::

        U = A V;  U Uᵀ = Y diag(θ) Yᵀ (k×k eigh);  U ← Yᵀ U;  W = Aᵀ U
        σ̂ = ‖W₀‖ / ‖U₀‖ (module docstring);  V ← orth(W)  (Householder QR, top Ritz row first)
    """
    k = v.shape[0]

    def one(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        u = apply(v)
        uf = u.reshape(k, -1)
        theta, y = _eigh_fixed_signs(jnp.matmul(uf, uf.T, precision=_HI))
        y = y[:, ::-1]  # eigh sorts ascending: put the top Ritz pair first
        u_rot = jnp.tensordot(y.T, u, axes=1, precision=_HI)
        w = apply_t(u_rot)
        wf = w.reshape(k, -1)
        u_top = _norm(u_rot[0])
        sigma = jnp.where(u_top > 0, _norm(wf[0]) / jnp.where(u_top > 0, u_top, 1.0), 0.0)
        v_new = _orthonormal_rows(wf).reshape(v.shape)
        # an all-zero operator (θ = 0): keep the block, so it recovers once A is non-zero
        return sigma.astype(v.dtype), jnp.where(theta[-1] > 0, v_new, v)

    if n_iter <= _UNROLL_MAX:
        sigma = jnp.zeros((), v.dtype)
        for _ in range(n_iter):
            sigma, v = one(v)
        return sigma, v

    return lax.fori_loop(0, n_iter, lambda _, carry: one(carry[1]), (jnp.zeros((), v.dtype), v))


def dense_operator(kmat: jax.Array) -> tuple[Callable, Callable]:
    """``(x -> W x, y -> Wᵀ y)`` for ``W = kmatᵀ``, ``kmat [fan_in, fan_out]`` (a flax kernel reshaped
    to ``(kh·kw·C_in, C_out)``: a row permutation of PyTorch's flattening, same singular values), on
    one vector or a block ``[k, ·]``. The kernel is read once per application whatever ``k`` is, and
    only the small block is transposed."""
    return lambda x: jnp.matmul(x, kmat, precision=_HI), lambda y: jnp.matmul(kmat, y.T, precision=_HI).T


def conv_operator(kernel: jax.Array, input_shape: tuple, stride: tuple, padding: Padding) -> tuple[Callable, Callable]:
    """``(x -> A x, y -> Aᵀ y)`` for the bias-free conv ``A`` (``kernel [kh, kw, C_in, C_out]``, explicit
    zero ``padding``) on ``input_shape`` ``[H, W, C_in]`` or a block ``[k, H, W, C_in]``; ``Aᵀ`` is
    ``jax.linear_transpose``'s transposed conv, so no operator matrix is formed."""

    def apply(x: jax.Array) -> jax.Array:
        y = lax.conv_general_dilated(x.reshape((-1,) + x.shape[-3:]), kernel, window_strides=tuple(stride),
                                     padding=tuple(tuple(p) for p in padding),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HI)
        return y.reshape(x.shape[:-3] + y.shape[1:])

    transpose = jax.linear_transpose(apply, jax.ShapeDtypeStruct(tuple(input_shape), kernel.dtype))
    return apply, lambda y: transpose(y)[0]


def lanczos_top(apply: Callable, apply_t: Callable, v0: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Top singular value and right vectors by ``k`` (static) Golub-Kahan-Lanczos steps: ``(sigma [],
    v [b, *shape])``, orthonormal rows, top Ritz vector first.

    Why: at initialisation the top singular values are nearly degenerate (σ₂/σ₁ = 0.9995 for the
    CIFAR CNN's 512×32768 layer), where power iteration still has 1e-3 error after 300 iterations;
    64 Lanczos steps reach ~1e-7. Row 0 of ``v0 [b, *shape]`` starts the recurrence; all rows complete
    the block when the Krylov space (capped at ``min(n, m + 1)``) is smaller than ``b``. Full
    reorthogonalisation keeps float32 bases orthogonal; the Ritz value never exceeds σ_max (up to
    ~1e-7 rounding). Cost: ``k`` applications of ``A`` and ``Aᵀ`` plus ≈ ``4·k²·(n + m)`` flops and
    ``k·(n + m)`` floats (n, m = input, output sizes).
    """
    n_vecs = v0.shape[0]
    in_shape = v0.shape[1:]
    out_shape = jax.eval_shape(apply, v0[0]).shape
    n, m = math.prod(in_shape), math.prod(out_shape)
    # The V-space Krylov basis needs m + 1 vectors when n > m: v0's component outside the row
    # space takes one of them. Beyond that the spaces are exhausted (only rounding noise is left).
    k = max(1, min(k, n, m + 1))
    dt = v0.dtype

    def a(x: jax.Array) -> jax.Array:
        return apply(x.reshape(in_shape)).reshape(-1)

    def a_t(y: jax.Array) -> jax.Array:
        return apply_t(y.reshape(out_shape)).reshape(-1)

    def project_out(x: jax.Array, basis: jax.Array) -> jax.Array:
        # rows of `basis` not filled yet are zero and project out nothing
        return x - jnp.matmul(jnp.matmul(basis, x, precision=_HI), basis, precision=_HI)

    def reorth(x: jax.Array, basis: jax.Array) -> jax.Array:
        # Two Gram-Schmidt passes ("twice is enough"). If the second pass still removes much of
        # what the first left, x lies numerically in span(basis): the Krylov space is exhausted.
        # Normalising that rounding residue would inject non-orthogonal junk that grows without
        # bound, so it is zeroed instead; every later step then stays exactly zero.
        x1 = project_out(x, basis)
        x2 = project_out(x1, basis)
        return jnp.where(_norm(x2) >= 0.5 * _norm(x1), x2, jnp.zeros_like(x2))

    zero = jnp.zeros((), dt)

    def body(j, carry):
        vs, us, alphas, betas, v, u_prev, beta_prev = carry
        vs = vs.at[j].set(v)
        u, alpha = _safe_unit(reorth(a(v) - beta_prev * u_prev, us), zero)
        us = us.at[j].set(u)
        w, beta = _safe_unit(reorth(a_t(u) - alpha * v, vs), zero)
        return vs, us, alphas.at[j].set(alpha), betas.at[j].set(beta), w, u, beta

    v_start, _ = _safe_unit(v0[0].reshape(-1), zero)
    init = (jnp.zeros((k, n), dt), jnp.zeros((k, m), dt), jnp.zeros((k,), dt), jnp.zeros((k,), dt),
            v_start, jnp.zeros((m,), dt), zero)
    vs, _, alphas, betas, *_ = lax.fori_loop(0, k, body, init)
    b = jnp.diag(alphas) + jnp.diag(betas[:-1], 1)
    # Top right singular pairs of B from the symmetric eigenproblem of BᵀB (k×k): XLA's CPU SVD
    # with vectors returned NaN for a 256×256 B with 16-fold repeated singular values (a ViT patch
    # embedding), while eigh is robust; squaring costs nothing in relative accuracy at the top.
    evals, evecs = _eigh_fixed_signs(jnp.matmul(b.T, b, precision=_HI))
    sigma = jnp.sqrt(jnp.maximum(evals[-1], 0.0))
    # Top Ritz vectors, best first, completed by the start block when the Krylov space is smaller
    # than the block; QR makes them exactly orthonormal whatever breakdown left.
    ritz = jnp.matmul(evecs[:, ::-1][:, :min(n_vecs, k)].T, vs, precision=_HI)
    cand = jnp.concatenate([ritz, v0.reshape(n_vecs, -1)], axis=0)
    return sigma, _orthonormal_rows(cand)[:n_vecs].reshape(v0.shape)
