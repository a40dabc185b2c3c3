"""Reference norms: full SVDs (the official approach) instead of power iteration.

:func:`exact_norms` is the test reference for :class:`jaxscale.norms.Norms` and, in the ``paper``
convention, *is* the official code's approach (a full singular-value decomposition of every
flattened weight matrix, ``torch.linalg.svdvals`` there), so it doubles as the "official approach"
timing in ``jaxscale bench norms``. A pure jnp function of the params: jit it to run it on the
training device. Precision follows the params dtype (pass float64 params under ``jax_enable_x64``
for a float64 reference, as the official ViT code does).

A bartlett conv's σ is its true operator norm: by full SVD of the explicit operator
(:func:`conv_operator_matrix`) when small enough, else (real ResNet shapes: the 32·32·64-dimensional
operator has 4·10⁹ entries) by Lanczos bidiagonalisation with full reorthogonalisation
(:func:`jaxscale.norms.power.lanczos_top`) — a lower bound; on the MNIST CNN's 28×28×32 conv
operator 128 steps leave 1.3e-5 and 256 agree with 512 to float32 precision. Workspace: 256·(n_in +
n_out) floats per conv (135 MB for a 32×32×64 → 32×32×64 ResNet conv).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxscale.models.layers import WeightLayer
from jaxscale.norms.measures import assemble, conv_tap_masks, layer_stats
from jaxscale.norms.power import conv_operator, lanczos_top
from jaxscale.norms.transform import Norms


def conv_operator_matrix(
    kernel: jax.Array,
    input_hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """The explicit matrix of a bias-free conv on ``[H, W, C_in]`` inputs (small shapes only).

    Args:
      kernel: ``[kh, kw, C_in, C_out]``.
      input_hw: ``(H, W)``.
      stride, padding: as the layer applies them.

    Returns:
      ``[H_out·W_out·C_out, H·W·C_in]``; rows in ``(i, j, o)`` row-major order, columns in
      ``(h, w, c)`` row-major order (NHWC flattening).
    """
    h, w = input_hw
    x0 = jnp.zeros((h, w, kernel.shape[2]), kernel.dtype)
    apply, _ = conv_operator(kernel, x0.shape, stride, padding)
    jac = jax.jacfwd(apply)(x0)
    n_out = jac.shape[0] * jac.shape[1] * jac.shape[2]
    return jac.reshape(n_out, h * w * kernel.shape[2])


def _sigma_svd(m: jax.Array) -> jax.Array:
    """Largest singular value by a full (thin) SVD, singular values only.

    ``full_matrices=False`` matters: with the default, XLA's CPU SVD allocates the full square
    factor of the long side (32768² floats, 4 GB, for the CIFAR CNN's 512×32768 layer). The tall
    orientation is used because the LAPACK path is ~4× faster for it here (σ is unchanged by the
    transpose).
    """
    if m.shape[0] < m.shape[1]:
        m = m.T
    return jnp.linalg.svd(m, full_matrices=False, compute_uv=False)[0]


def _conv_operator_sigma(
    layer: WeightLayer, kernel: jax.Array, dense_limit: int, ref_krylov: int
) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    m_h, m_w = conv_tap_masks(layer.input_hw, (kh, kw), layer.stride, layer.padding)
    h, w = layer.input_hw
    if m_h.shape[0] * m_w.shape[0] * cout * h * w * cin <= dense_limit:
        return _sigma_svd(conv_operator_matrix(kernel, layer.input_hw, layer.stride, layer.padding))
    v0 = jax.random.normal(jax.random.PRNGKey(0), (1, h, w, cin), kernel.dtype)
    apply, apply_t = conv_operator(kernel, v0.shape[1:], layer.stride, layer.padding)
    return lanczos_top(apply, apply_t, v0, ref_krylov)[0]


def exact_norms(
    norms: Norms,
    params: Mapping[str, Any],
    *,
    dense_limit: int = 2**22,
    ref_krylov: int = 256,
) -> dict[str, jax.Array]:
    """The five measures with σ from full SVDs: the reference (and the official approach).

    Args:
      norms: the settings (layers, convention, family); its iteration settings are not used.
      params: one seed's ``params`` collection.
      dense_limit: bartlett convs whose operator matrix has at most this many entries are built
        explicitly and SVD'd; larger ones use ``ref_krylov`` Lanczos steps (static ints).

    Returns:
      ``{name: scalar natural log}`` for each of ``NORM_NAMES`` — the same quantities as
      :meth:`Norms.update` / :meth:`Norms.read`, in the params dtype.
    """
    sigmas, stats = [], []
    for layer in norms.used:
        kernel = norms._kernel(layer, params)
        if norms.convention == "bartlett" and layer.kind == "conv":
            sigmas.append(_conv_operator_sigma(layer, kernel, dense_limit, ref_krylov))
        else:
            sigmas.append(_sigma_svd(layer.matrix(params)))
        stats.append(layer_stats(layer, kernel, norms.family, norms.convention))
    return assemble(norms.family, norms.used, params, sigmas, stats, norms.convention)
