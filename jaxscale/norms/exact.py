"""Reference norms: full SVDs (the official approach) instead of power iteration.

:func:`exact_norms` is the test reference for :func:`jaxscale.norms.compute_norms` and, in the
``paper`` convention, *is* the official code's approach (a full singular-value decomposition of
every flattened weight matrix, ``torch.linalg.svdvals`` there, ``jnp.linalg.svd(...,
compute_uv=False)`` here), so it doubles as the "official approach" timing in ``jaxscale bench
norms``. It is a pure jnp function: jit it with ``family``, ``layers``, ``convention`` static to
run it on the same device as training. Precision follows the params dtype (enable ``jax_enable_x64``
and pass float64 params for a float64 reference, as the official ViT code does).

How σ is obtained:
  * ``paper`` (every family), and dense layers under ``bartlett``: the largest singular value of
    the PyTorch-layout matrix ``WeightLayer.matrix(params)`` by full SVD.
  * conv layers under ``bartlett`` (the true operator norm of the convolution):
      - when the operator matrix has at most ``dense_limit`` entries
        (``H_out·W_out·C_out · H·W·C_in``, default 2**22): the operator is built explicitly (its
        Jacobian, :func:`conv_operator_matrix`) and σ is its largest singular value by full SVD;
      - otherwise (real ResNet shapes: the 32·32·64-dimensional operator has 4·10⁹ entries)
        ``ref_krylov`` (default 256) steps of Lanczos bidiagonalisation with full
        reorthogonalisation from a fixed start vector (:func:`jaxscale.norms.power.lanczos_top`)
        — a lower bound on σ; on the MNIST CNN's 28×28×32 conv operator 128 steps leave 1.3e-5 and
        256 agree with 512 to float32 precision. Workspace: 256·(n_in + n_out) floats per conv
        (135 MB for a 32×32×64 → 32×32×64 ResNet conv).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxscale.models.layers import WeightLayer
from jaxscale.norms.measures import assemble, conv_tap_masks, layer_stats
from jaxscale.norms.power import conv_apply, conv_operator, lanczos_top
from jaxscale.norms.state import check_family, get_kernel, layers_for

__all__ = ["exact_norms", "exact_sigmas", "conv_operator_matrix"]


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
    jac = jax.jacfwd(lambda x: conv_apply(kernel, x, stride, padding))(x0)
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
    entries = m_h.shape[0] * m_w.shape[0] * cout * h * w * cin
    if entries <= dense_limit:
        return _sigma_svd(conv_operator_matrix(kernel, layer.input_hw, layer.stride, layer.padding))
    v0 = jax.random.normal(jax.random.PRNGKey(0), (h, w, cin), kernel.dtype)
    v0 = v0 / jnp.sqrt(jnp.vdot(v0, v0))
    apply, apply_t = conv_operator(kernel, v0.shape, layer.stride, layer.padding)
    sigma, _ = lanczos_top(apply, apply_t, v0, ref_krylov)
    return sigma


def exact_sigmas(
    layers: Sequence[WeightLayer],
    params: Mapping[str, Any],
    *,
    convention: str = "paper",
    dense_limit: int = 2**22,
    ref_krylov: int = 256,
) -> dict[str, jax.Array]:
    """``{layer.name: σ}`` for the layers the convention uses (see module docstring for how)."""
    used = layers_for(layers, convention)
    out = {}
    for layer in used:
        kernel = get_kernel(layer, params)
        if convention == "bartlett" and layer.kind == "conv":
            out[layer.name] = _conv_operator_sigma(layer, kernel, dense_limit, ref_krylov)
        else:
            out[layer.name] = _sigma_svd(layer.matrix(params))
    return out


def exact_norms(
    family: str,
    layers: Sequence[WeightLayer],
    params: Mapping[str, Any],
    *,
    convention: str = "paper",
    dense_limit: int = 2**22,
    ref_krylov: int = 256,
) -> dict[str, jax.Array]:
    """The five measures with σ from full SVDs: the reference (and the official approach).

    Args:
      family: ``"cnn" | "resnet" | "vit"`` (static under jit).
      layers: the model's declared weight layers (static).
      params: one seed's ``params`` collection.
      convention: ``"paper"`` or ``"bartlett"`` (static).
      dense_limit: bartlett convs whose operator matrix has at most this many entries are built
        explicitly and SVD'd; larger ones use ``ref_krylov`` Lanczos steps (static ints).

    Returns:
      ``{name: scalar natural log}`` for each of ``NORM_NAMES`` — the same quantities as
      :func:`jaxscale.norms.compute_norms`, in the params dtype.
    """
    check_family(family)
    used = layers_for(layers, convention)
    sig = exact_sigmas(
        layers,
        params,
        convention=convention,
        dense_limit=dense_limit,
        ref_krylov=ref_krylov,
    )
    sigmas = [sig[layer.name] for layer in used]
    stats = [layer_stats(layer, get_kernel(layer, params), family, convention) for layer in used]
    return assemble(family, used, params, sigmas, stats, convention)
