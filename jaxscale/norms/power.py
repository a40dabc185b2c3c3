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
        V ← orth(W)                  (Gram-Schmidt, top row first)

    ``σ̂`` is the single-vector estimate of :func:`power_iteration` applied to the top Ritz vector:
    never above σ_max (‖Aᵀû‖ ≤ σ_max for a unit û), at least the top Ritz value √θ₀ (itself a
    lower bound), exact once span(V) contains the top right singular vector. With ``k = 1`` this
    *is* :func:`power_iteration` (up to the sign of ``v``). Cost per iteration: one batched
    ``apply`` and ``apply_t`` on ``k`` vectors, a ``k×k`` eigh and a ``k``-row Gram-Schmidt.

    Degenerate inputs: if ``A V = 0`` (an all-zero layer) the estimate is 0 and ``V`` is kept.

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


def dense_block_power_iteration(
    kmat: jax.Array, v: jax.Array, n_iter: int
) -> tuple[jax.Array, jax.Array]:
    """σ_max of ``W = kmatᵀ`` by block power iteration (:func:`block_power_iteration`).

    The ``k`` vectors go through ``kmat`` as one matrix–matrix product each way, so the kernel is
    read once per application whatever ``k`` is: on large memory-bound kernels a block of a few
    vectors costs about as much as one vector. ``Wᵀ U`` is computed as ``(kmat @ Uᵀ)ᵀ``, which
    transposes only the small ``[k, fan_out]`` block, never the kernel.

    Args:
      kmat: ``[fan_in, fan_out]``.
      v: ``[k, fan_in]`` block (rows in ``kmat``'s row order).
      n_iter: static number of iterations ≥ 1.

    Returns:
      ``(sigma [], v_new [k, fan_in])``.
    """
    return block_power_iteration(
        lambda x: jnp.matmul(x, kmat, precision=_HI),
        lambda y: jnp.matmul(kmat, y.T, precision=_HI).T,
        v,
        n_iter,
    )


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


def conv_block_operator(
    kernel: jax.Array,
    input_shape: tuple[int, int, int],
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    k: int,
) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """Batched :func:`conv_operator`: ``[k, H, W, C_in] -> [k, H_out, W_out, C_out]`` and back.

    The ``k`` vectors are the batch axis of one convolution (and of its transpose).
    """

    def apply(x: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            x,
            kernel,
            window_strides=tuple(stride),
            padding=tuple(tuple(p) for p in padding),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=_HI,
        )

    spec = jax.ShapeDtypeStruct((k,) + tuple(input_shape), kernel.dtype)
    transpose = jax.linear_transpose(apply, spec)

    def apply_t(y: jax.Array) -> jax.Array:
        return transpose(y)[0]

    return apply, apply_t


def conv_block_power_iteration(
    kernel: jax.Array,
    v: jax.Array,
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    n_iter: int,
) -> tuple[jax.Array, jax.Array]:
    """Operator norm of a convolution by block power iteration (:func:`block_power_iteration`).

    Args:
      kernel: ``[kh, kw, C_in, C_out]``.
      v: ``[k, H, W, C_in]`` block from the previous call.
      stride, padding: as in :func:`conv_apply`.
      n_iter: static number of iterations ≥ 1.

    Returns:
      ``(sigma [], v_new [k, H, W, C_in])``.
    """
    apply, apply_t = conv_block_operator(kernel, v.shape[1:], stride, padding, v.shape[0])
    return block_power_iteration(apply, apply_t, v, n_iter)


def lanczos_top(
    apply: Callable[[jax.Array], jax.Array],
    apply_t: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    k: int,
    n_vecs: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Top singular value/right vector by ``k`` steps of Golub-Kahan-Lanczos bidiagonalisation.

    Builds orthonormal bases ``V = [v_1..v_k]`` (input space, from ``v0``) and ``U = [u_1..u_k]``
    with ``A V = U B``, ``B`` upper bidiagonal (diagonal α_j, super-diagonal β_j); ``B``'s top
    singular value and right singular vector ``y`` give ``σ`` and ``v = V y``. Full
    reorthogonalisation (applied twice, "twice is enough") keeps float32 bases orthogonal.
    Breakdown (an exhausted Krylov space, e.g. a low-rank operator or one with few distinct
    singular values such as a 1×1 strided conv) is detected by the second pass and ends the
    recurrence with exact zeros, instead of normalising rounding noise. The Ritz value never
    exceeds σ_max (interlacing; up to float32 rounding, ~1e-7 relative).

    Cost: ``k`` applications of ``A`` and of ``Aᵀ``, plus ≈ ``4·k²·(n + m)`` flops to keep the
    bases orthogonal; memory ``k·(n + m)`` floats for the bases (n, m = input, output sizes).

    Args:
      apply, apply_t: as in :func:`power_iteration`.
      v0: start vector (any non-zero, any shape), e.g. the carried state.
      k: Krylov dimension (static); capped at ``min(n, m + 1)``.
      n_vecs: ``None`` (single vector) or, for :func:`lanczos_top_block`, the block size: then
        ``v0`` is a ``[n_vecs, *shape]`` block and its row 0 starts the recurrence.

    Returns:
      ``(sigma [], v [v0.shape] unit)``, or ``(sigma, [n_vecs, *shape] orthonormal block)``.
    """
    block_v0 = v0
    if n_vecs is not None:
        v0 = v0[0]
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
    # Top right singular pair of B from the symmetric eigenproblem of BᵀB (k×k): XLA's CPU SVD
    # with vectors returned NaN for a 256×256 B with 16-fold repeated singular values (a ViT patch
    # embedding), while eigh is robust; squaring costs nothing in relative accuracy at the top.
    evals, evecs = _eigh_fixed_signs(jnp.matmul(b.T, b, precision=_HI))
    sigma = jnp.sqrt(jnp.maximum(evals[-1], 0.0))
    if n_vecs is None:
        ritz, _ = _safe_unit(jnp.matmul(evecs[:, -1], vs, precision=_HI), v_start)
        return sigma, ritz.reshape(in_shape)
    # Top Ritz vectors, best first, completed by the start block when the Krylov space is smaller
    # than the block (tiny operators); QR makes them exactly orthonormal whatever breakdown left.
    n_ritz = min(n_vecs, k)
    ritz = jnp.matmul(evecs[:, ::-1][:, :n_ritz].T, vs, precision=_HI)
    cand = jnp.concatenate([ritz, block_v0.reshape(n_vecs, -1)], axis=0)
    return sigma, _orthonormal_rows(cand)[:n_vecs].reshape((n_vecs,) + tuple(in_shape))


def lanczos_top_block(
    apply: Callable[[jax.Array], jax.Array],
    apply_t: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    krylov_dim: int,
) -> tuple[jax.Array, jax.Array]:
    """:func:`lanczos_top` returning the top ``k`` Ritz vectors: a converged block state.

    Args:
      apply, apply_t: single-vector operator, as in :func:`lanczos_top`.
      v0: ``[k, *shape]`` start block; its row 0 starts the Krylov space, all rows complete the
        result when the Krylov space has fewer than ``k`` dimensions.
      krylov_dim: Lanczos steps (static).

    Returns:
      ``(sigma [], v [k, *shape])`` with orthonormal rows, top Ritz vector first.
    """
    return lanczos_top(apply, apply_t, v0, krylov_dim, n_vecs=v0.shape[0])
