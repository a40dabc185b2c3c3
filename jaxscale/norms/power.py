"""Largest singular value by warm-started block power iteration, for dense matrices and conv operators.

Everything here is a pure function of arrays: jittable, ``jax.vmap``-able over a leading seed axis,
no hidden state. The caller carries a block of ``k`` orthonormal right vectors from one call to the
next (the norm state), so that after a converged start one iteration per training step keeps it
converged. ``k = 1`` is plain power iteration.

The estimate ``σ̂ = ‖AᵀA x‖ / ‖A x‖`` (``x`` the top Ritz vector of the block) is never above the
true σ_max (‖Aᵀ û‖ ≤ σ_max for any unit û), never below the Rayleigh estimate ‖A x‖
(Cauchy-Schwarz), costs no extra mat-vec, and equals σ_max exactly once ``x`` is the top right
singular vector. So a stale block can only make the estimate *low*, never blow it up.

Degenerate inputs: if ``A V = 0`` (an all-zero layer, or ``V`` in the null space) the estimate is 0
and the block is kept unchanged instead of becoming NaN; the measures floor σ = 0 at 1e-12 as the
official code does.

Converged start: at initialisation the weights are random and their top singular values are
nearly degenerate (σ₂/σ₁ = 0.9995 for the CIFAR CNN's 512×32768 layer), where power iteration
needs thousands of iterations (relative error still 1e-3 after 300). :func:`lanczos_top`
(Golub-Kahan-Lanczos bidiagonalisation with full reorthogonalisation) reaches ~1e-7 there with 64
steps (128 mat-vecs); it converges a fresh block (and re-converges it at every logged read).

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

from jaxscale.models.conv import Padding

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
    """Orthonormal basis ``[k, n]`` of the rows of ``x [k, n]`` (Householder QR, row order kept).

    Row ``j`` of the result spans rows ``0..j`` of ``x``, so the best guess (row 0) stays first.
    Householder QR returns an orthonormal basis even when ``x`` is rank-deficient, so no NaN appears.

    Never batched on CPU: several *batched* LAPACK QRs in one program (what ``vmap`` over seeds
    makes of the per-layer QRs of a train step) deadlocked XLA:CPU in jax 0.10.2 (every runtime
    thread parked; reproduced with 6 QRs of ``[8, 32768, 4]`` in one jitted function, hanging on the
    2nd call). The vmap rule below maps the unbatched QR over the batch there (``lax.map``); on
    GPU/TPU it stays one batched QR (a loop of S tiny QRs per layer per step would be launch-bound).
    """
    return _qr_rows(x)


def _qr_rows(x: jax.Array) -> jax.Array:
    """Q of the rows of ``x [..., k, n]`` (any leading batch dims) -> ``[..., k, n]``."""
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


def block_power_iteration(
    apply: Callable[[jax.Array], jax.Array],
    apply_t: Callable[[jax.Array], jax.Array],
    v: jax.Array,
    n_iter: int,
) -> tuple[jax.Array, jax.Array]:
    """Warm-started block (subspace) power iteration with Rayleigh–Ritz, for σ_max of ``A``.

    Why a block: along training the top singular values of a layer are nearly degenerate
    (σ₂/σ₁ ≈ 1) and cross as the weights move; a single carried vector then follows the
    *previous* top direction and σ lags by up to 10 % for tens of steps. A block of ``k``
    orthonormal vectors keeps the whole top-``k`` subspace converged, and the small Rayleigh–Ritz
    step picks the current top direction inside it at every call.

    One iteration, block ``V [k, n]`` with orthonormal rows (``M = AᵀA``)::

        U = A V                      (k applications of A, batched: a dense kernel is read once)
        G = U Uᵀ = V M Vᵀ,  G = Y diag(θ) Yᵀ     (k×k eigh, θ descending: Rayleigh–Ritz)
        U ← Yᵀ U,  W = Aᵀ U = Yᵀ M V           (Ritz-rotated; one batched application of Aᵀ)
        σ̂ = ‖W₀‖ / ‖U₀‖ = ‖M x‖ / ‖A x‖,  x = top Ritz vector Yᵀ₀ V
        V ← orth(W)                  (Householder QR, top row first)

    ``σ̂`` is the single-vector estimate (module docstring) of the top Ritz vector: at least the
    top Ritz value √θ₀, exact once span(V) contains the top right singular vector. ``k = 1`` is
    plain power iteration (up to the sign of ``v``).

    Args:
      apply: ``X -> A X`` on a batch (input ``[k, *shape]`` → ``[k, *out_shape]``).
      apply_t: ``Y -> Aᵀ Y`` on a batch (``[k, *out_shape]`` → ``[k, *shape]``).
      v: ``[k, *shape]`` block from the previous call (orthonormal rows once flattened, or any
        full-rank block).
      n_iter: static number of iterations ≥ 1.

    Returns:
      ``(sigma [], v_new [k, *shape])``: the estimate and the new orthonormal block, rows ordered
      by decreasing Ritz value (row 0 = best top-vector guess).
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


Operator = tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]


def dense_operator(kmat: jax.Array) -> Operator:
    """``(x -> W x, y -> Wᵀ y)`` for ``W = kmatᵀ``, ``kmat`` in flax layout ``(fan_in, fan_out)``.

    Both act on one vector (``[fan_in]``, ``[fan_out]``) or on a block of row vectors (``[k, ·]``).
    The flax kernel is used as stored: ``W v = v @ kmat`` and ``Wᵀ u = (kmat @ uᵀ)ᵀ``, which reads
    the kernel once per application whatever ``k`` is and transposes only the small block, never
    the kernel. A conv kernel ``(kh, kw, C_in, C_out)`` enters as its free reshape
    ``(kh·kw·C_in, C_out)``: a row permutation of the PyTorch-flattened ``(C_out, C_in·kh·kw)``
    matrix's transpose, hence the same singular values.
    """
    return (
        lambda x: jnp.matmul(x, kmat, precision=_HI),
        lambda y: jnp.matmul(kmat, y.T, precision=_HI).T,
    )


def conv_operator(
    kernel: jax.Array, input_shape: tuple[int, ...], stride: tuple[int, int], padding: Padding
) -> Operator:
    """``(x -> A x, y -> Aᵀ y)`` for the bias-free conv ``A`` on ``[..., H, W, C_in]`` feature maps.

    Args:
      kernel: flax layout ``[kh, kw, C_in, C_out]``.
      input_shape: ``[H, W, C_in]`` (one vector) or ``[k, H, W, C_in]`` (a block: the batch axis
        of one convolution).
      stride: ``(sh, sw)``; padding: explicit ``((top, bottom), (left, right))`` zeros.

    ``Aᵀ`` comes from ``jax.linear_transpose`` (a transposed / input-dilated conv), so no explicit
    operator matrix is ever formed.
    """

    def apply(x: jax.Array) -> jax.Array:
        y = lax.conv_general_dilated(
            x.reshape((-1,) + x.shape[-3:]),
            kernel,
            window_strides=tuple(stride),
            padding=tuple(tuple(p) for p in padding),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=_HI,
        )
        return y.reshape(x.shape[:-3] + y.shape[1:])

    transpose = jax.linear_transpose(apply, jax.ShapeDtypeStruct(tuple(input_shape), kernel.dtype))
    return apply, lambda y: transpose(y)[0]


def lanczos_top(apply: Callable, apply_t: Callable, v0: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Top singular value and top right vectors by ``k`` steps of Golub-Kahan-Lanczos bidiagonalisation.

    Builds orthonormal bases ``V = [v_1..v_k]`` (input space, from ``v0[0]``) and ``U = [u_1..u_k]``
    with ``A V = U B``, ``B`` upper bidiagonal (diagonal α_j, super-diagonal β_j); ``B``'s top
    singular values and right singular vectors ``y`` give ``σ`` and the Ritz vectors ``V y``. Full
    reorthogonalisation (applied twice, "twice is enough") keeps float32 bases orthogonal.
    Breakdown (an exhausted Krylov space, e.g. a low-rank operator or one with few distinct
    singular values such as a 1×1 strided conv) is detected by the second pass and ends the
    recurrence with exact zeros, instead of normalising rounding noise. The Ritz value never
    exceeds σ_max (interlacing; up to float32 rounding, ~1e-7 relative).

    Cost: ``k`` applications of ``A`` and of ``Aᵀ``, plus ≈ ``4·k²·(n + m)`` flops to keep the
    bases orthogonal; memory ``k·(n + m)`` floats for the bases (n, m = input, output sizes).

    Args:
      apply, apply_t: ``x -> A x`` and ``y -> Aᵀ y`` on single vectors (:func:`dense_operator`,
        :func:`conv_operator`).
      v0: ``[b, *shape]`` start block; row 0 starts the recurrence, all rows complete the result
        when the Krylov space has fewer than ``b`` dimensions (tiny operators).
      k: Krylov dimension (static); capped at ``min(n, m + 1)``.

    Returns:
      ``(sigma [], v [b, *shape])``: orthonormal rows, top Ritz vector first.
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
