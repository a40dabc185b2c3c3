"""Largest singular value by warm-started power iteration, for dense matrices and conv operators.

Everything here is a pure function of arrays: jittable, ``jax.vmap``-able over a leading seed axis,
no hidden state. The caller carries the right singular vector ``v`` from one call to the next (the
norm state), so that after the first few calls one iteration per training step keeps it converged.

One iteration with a unit vector ``v``::

    u = A v,  û = u / ‖u‖,  w = Aᵀ û,  σ̂ = ‖w‖,  v ← w / ‖w‖

``σ̂ = ‖AᵀA v‖ / ‖A v‖`` is the estimate returned. It is never above the true σ_max (‖Aᵀ û‖ ≤ σ_max
for any unit û), never below the Rayleigh estimate ‖A v‖ (Cauchy-Schwarz), costs no extra
mat-vec, and equals σ_max exactly once ``v`` is the top right singular vector. So a stale vector
can only make the estimate *low*, never blow it up ("monotone-safe").

Degenerate inputs: if ``A v = 0`` (an all-zero layer, or ``v`` in the null space) the estimate is 0
and ``v`` is kept unchanged instead of becoming NaN; the measures floor σ = 0 at 1e-12 as the
official code does.

Warm start from scratch: at initialisation the weights are random and their top singular values
are nearly degenerate (σ₂/σ₁ = 0.9995 for the CIFAR CNN's 512×32768 layer), where power iteration
needs thousands of iterations (relative error still 1e-3 after 300). :func:`lanczos_top`
(Golub-Kahan-Lanczos bidiagonalisation with full reorthogonalisation) reaches ~1e-7 there with 64
steps (128 mat-vecs); it is used once to converge a fresh state (and for large reference
operators), after which one power iteration per training step keeps the vector converged as the
weights drift.

Precision: mat-vecs and convolutions request ``lax.Precision.HIGHEST`` so that accelerators that
default to reduced-precision float32 matmuls (TF32 on recent NVIDIA GPUs, bf16 passes on TPU) still
give float32-accurate σ. These products are memory-bound (a mat-*vec*), so this costs ~nothing.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST

# Up to this many iterations the loop is unrolled in Python (the in-step case, n_iter = 1 or 2: no
# while-loop in the step's HLO, so XLA can fuse freely); above it, ``lax.fori_loop`` keeps the
# compiled program small (warm-up / reference calls with hundreds of iterations).
_UNROLL_MAX = 4


def _norm(x: jax.Array) -> jax.Array:
    """Euclidean norm of an array of any shape (flattened), as a scalar."""
    return jnp.sqrt(jnp.vdot(x, x).real)


def _safe_unit(x: jax.Array, fallback: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x / ‖x‖, ‖x‖)``, or ``(fallback, 0)`` when ``‖x‖ = 0`` (keeps the iteration NaN-free)."""
    n = _norm(x)
    ok = n > 0
    return jnp.where(ok, x / jnp.where(ok, n, 1.0), fallback), n


def power_iteration(
    apply: Callable[[jax.Array], jax.Array],
    apply_t: Callable[[jax.Array], jax.Array],
    v: jax.Array,
    n_iter: int,
) -> tuple[jax.Array, jax.Array]:
    """Warm-started power iteration for the top singular value of a linear operator ``A``.

    Args:
      apply: ``x -> A x`` (input shape = ``v.shape``).
      apply_t: ``y -> Aᵀ y`` (input shape = output shape of ``apply``).
      v: unit (or any non-zero) right vector from the previous call, any shape.
      n_iter: number of iterations (static Python int ≥ 1); each costs one ``apply`` + one
        ``apply_t``.

    Returns:
      ``(sigma, v_new)``: scalar estimate of σ_max(A) (a lower bound, exact at convergence) and the
      updated unit right vector, same shape and dtype as ``v``.
    """

    def one(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        u_hat, _ = _safe_unit(apply(v), jnp.zeros((), v.dtype))
        w = apply_t(u_hat)
        v_new, sigma = _safe_unit(w, v)
        return sigma, v_new

    if n_iter <= _UNROLL_MAX:
        sigma = jnp.zeros((), v.dtype)
        for _ in range(n_iter):
            sigma, v = one(v)
        return sigma, v

    def body(_, carry):
        return one(carry[1])

    return lax.fori_loop(0, n_iter, body, (jnp.zeros((), v.dtype), v))


def dense_operator(
    kmat: jax.Array,
) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """``(x -> W x, y -> Wᵀ y)`` for ``W = kmatᵀ``, ``kmat`` in flax layout ``(fan_in, fan_out)``.

    The flax kernel is used as stored: ``W v = v @ kmat`` and ``Wᵀ u = kmat @ u``, so no transposed
    copy of a large kernel is ever made. A conv kernel ``(kh, kw, C_in, C_out)`` enters as its free
    (contiguous) reshape ``(kh·kw·C_in, C_out)``: a row permutation of the PyTorch-flattened
    ``(C_out, C_in·kh·kw)`` matrix's transpose, hence the same singular values.
    """
    return (
        lambda x: jnp.matmul(x, kmat, precision=_HI),
        lambda y: jnp.matmul(kmat, y, precision=_HI),
    )


def dense_power_iteration(
    kmat: jax.Array, v: jax.Array, n_iter: int
) -> tuple[jax.Array, jax.Array]:
    """σ_max of ``W = kmatᵀ`` by power iteration (see :func:`dense_operator` for the layout).

    Args:
      kmat: ``[fan_in, fan_out]``.
      v: ``[fan_in]`` right vector (in ``kmat``'s row order).
      n_iter: static number of iterations ≥ 1.

    Returns:
      ``(sigma [], v_new [fan_in])``.
    """
    apply, apply_t = dense_operator(kmat)
    return power_iteration(apply, apply_t, v, n_iter)


def conv_apply(
    kernel: jax.Array,
    x: jax.Array,
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """The linear map of a bias-free conv layer on one image.

    Args:
      kernel: flax layout ``[kh, kw, C_in, C_out]``.
      x: one input feature map ``[H, W, C_in]`` (NHWC without the batch axis).
      stride: ``(sh, sw)``.
      padding: explicit ``((top, bottom), (left, right))`` zero padding.

    Returns:
      ``[H_out, W_out, C_out]``.
    """
    y = lax.conv_general_dilated(
        x[None],
        kernel,
        window_strides=tuple(stride),
        padding=tuple(tuple(p) for p in padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HI,
    )
    return y[0]


def conv_operator(
    kernel: jax.Array,
    input_shape: tuple[int, int, int],
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """``(x -> A x, y -> Aᵀ y)`` for the conv ``A`` on ``[H, W, C_in] = input_shape`` feature maps.

    ``Aᵀ`` comes from ``jax.linear_transpose`` (a transposed / input-dilated conv), so no explicit
    operator matrix is ever formed.
    """

    def apply(x: jax.Array) -> jax.Array:
        return conv_apply(kernel, x, stride, padding)

    transpose = jax.linear_transpose(apply, jax.ShapeDtypeStruct(tuple(input_shape), kernel.dtype))

    def apply_t(y: jax.Array) -> jax.Array:
        return transpose(y)[0]

    return apply, apply_t


def conv_power_iteration(
    kernel: jax.Array,
    v: jax.Array,
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    n_iter: int,
) -> tuple[jax.Array, jax.Array]:
    """True operator norm (σ_max) of a convolution on its actual input shape, by power iteration.

    Args:
      kernel: ``[kh, kw, C_in, C_out]``.
      v: ``[H, W, C_in]`` right vector from the previous call.
      stride, padding: as in :func:`conv_apply`.
      n_iter: static number of iterations ≥ 1.

    Returns:
      ``(sigma [], v_new [H, W, C_in])``.
    """
    apply, apply_t = conv_operator(kernel, v.shape, stride, padding)
    return power_iteration(apply, apply_t, v, n_iter)


def lanczos_top(
    apply: Callable[[jax.Array], jax.Array],
    apply_t: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    k: int,
) -> tuple[jax.Array, jax.Array]:
    """Top singular value/right vector by ``k`` steps of Golub-Kahan-Lanczos bidiagonalisation.

    Builds orthonormal bases ``V = [v_1..v_k]`` (input space, from ``v0``) and ``U = [u_1..u_k]``
    with ``A V = U B``, ``B`` upper bidiagonal (diagonal α_j, super-diagonal β_j); the Ritz pair
    of ``B``'s top singular triplet gives ``σ`` and ``v = V y``. Full reorthogonalisation (applied
    twice, "twice is enough") keeps float32 bases orthogonal. Breakdown (an exhausted Krylov space)
    leaves zero vectors instead of NaN. The Ritz value never exceeds σ_max (interlacing).

    Cost: ``k`` applications of ``A`` and of ``Aᵀ``, plus ≈ ``4·k²·(n + m)`` flops to keep the
    bases orthogonal; memory ``k·(n + m)`` floats for the bases (n, m = input, output sizes).

    Args:
      apply, apply_t: as in :func:`power_iteration`.
      v0: start vector (any non-zero, any shape), e.g. the carried state.
      k: Krylov dimension (static); capped at ``min(n, m + 1)``.

    Returns:
      ``(sigma [], v [v0.shape] unit)``.
    """
    in_shape = v0.shape
    out_shape = jax.eval_shape(apply, v0).shape
    n, m = math.prod(in_shape), math.prod(out_shape)
    # The V-space Krylov basis needs m + 1 vectors when n > m: v0's component outside the row
    # space takes one of them. Beyond that the spaces are exhausted (only rounding noise is left).
    k = max(1, min(k, n, m + 1))
    dt = v0.dtype

    def a(x: jax.Array) -> jax.Array:
        return apply(x.reshape(in_shape)).reshape(-1)

    def a_t(y: jax.Array) -> jax.Array:
        return apply_t(y.reshape(out_shape)).reshape(-1)

    def reorth(x: jax.Array, basis: jax.Array) -> jax.Array:
        # rows of `basis` not filled yet are zero and project out nothing
        for _ in range(2):
            x = x - jnp.matmul(jnp.matmul(basis, x, precision=_HI), basis, precision=_HI)
        return x

    zero = jnp.zeros((), dt)

    def body(j, carry):
        vs, us, alphas, betas, v, u_prev, beta_prev = carry
        vs = vs.at[j].set(v)
        u, alpha = _safe_unit(reorth(a(v) - beta_prev * u_prev, us), zero)
        us = us.at[j].set(u)
        w, beta = _safe_unit(reorth(a_t(u) - alpha * v, vs), zero)
        return vs, us, alphas.at[j].set(alpha), betas.at[j].set(beta), w, u, beta

    v_start, _ = _safe_unit(v0.reshape(-1), zero)
    init = (
        jnp.zeros((k, n), dt),
        jnp.zeros((k, m), dt),
        jnp.zeros((k,), dt),
        jnp.zeros((k,), dt),
        v_start,
        jnp.zeros((m,), dt),
        zero,
    )
    vs, _, alphas, betas, *_ = lax.fori_loop(0, k, body, init)
    b = jnp.diag(alphas) + jnp.diag(betas[:-1], 1)
    _, svals, vh = jnp.linalg.svd(b)
    ritz, _ = _safe_unit(jnp.matmul(vh[0], vs, precision=_HI), v_start)
    return svals[0], ritz.reshape(in_shape)
