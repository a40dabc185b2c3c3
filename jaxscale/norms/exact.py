"""Reference norms from full SVDs: the test reference for :class:`jaxscale.norms.Norms`, and in the
``paper`` convention the official approach (``torch.linalg.svdvals`` of every flattened weight
matrix), timed by ``jaxscale bench norms``. Pure jnp (jit it to run on the device); precision follows
the params dtype (float64 params under ``jax_enable_x64``, as the official ViT code, give a float64
reference).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxscale.models.layers import WeightLayer
from jaxscale.norms.measures import assemble, conv_tap_masks, layer_stats
from jaxscale.norms.power import conv_operator, lanczos_top
from jaxscale.norms.transform import Norms


def conv_operator_matrix(kernel: jax.Array, input_hw: tuple, stride: tuple, padding: tuple) -> jax.Array:
    """The explicit ``[H_out·W_out·C_out, H·W·C_in]`` matrix (rows ``(i, j, o)``, columns ``(h, w, c)``
    row-major) of the bias-free conv ``kernel [kh, kw, C_in, C_out]`` on ``input_hw`` (small shapes only)."""
    h, w = input_hw
    x0 = jnp.zeros((h, w, kernel.shape[2]), kernel.dtype)
    apply, _ = conv_operator(kernel, x0.shape, stride, padding)
    return jax.jacfwd(apply)(x0).reshape(-1, x0.size)


def _sigma_svd(m: jax.Array) -> jax.Array:
    """Largest singular value by a thin SVD: the default ``full_matrices=True`` makes XLA's CPU SVD
    allocate the long side's square factor (4 GB for the CIFAR CNN's 512×32768 layer); the tall
    orientation is ~4× faster in LAPACK here."""
    if m.shape[0] < m.shape[1]:
        m = m.T
    return jnp.linalg.svd(m, full_matrices=False, compute_uv=False)[0]


def _conv_operator_sigma(layer: WeightLayer, kernel: jax.Array, dense_limit: int, ref_krylov: int) -> jax.Array:
    """A bartlett conv's operator norm: full SVD of the explicit operator when it has at most
    ``dense_limit`` entries, else (ResNet's 32·32·64-dimensional operators have 4·10⁹) ``ref_krylov``
    Lanczos steps, a lower bound: on the MNIST CNN's 28×28×32 conv 128 steps leave 1.3e-5 and 256
    agree with 512 to float32 precision; workspace 256·(n_in + n_out) floats (135 MB for ResNet)."""
    kh, kw, cin, cout = kernel.shape
    m_h, m_w = conv_tap_masks(layer.input_hw, (kh, kw), layer.stride, layer.padding)
    h, w = layer.input_hw
    if m_h.shape[0] * m_w.shape[0] * cout * h * w * cin <= dense_limit:
        return _sigma_svd(conv_operator_matrix(kernel, layer.input_hw, layer.stride, layer.padding))
    v0 = jax.random.normal(jax.random.PRNGKey(0), (1, h, w, cin), kernel.dtype)
    return lanczos_top(*conv_operator(kernel, v0.shape[1:], layer.stride, layer.padding), v0, ref_krylov)[0]


def exact_norms(norms: Norms, params: Mapping[str, Any], *, dense_limit: int = 2**22,
                ref_krylov: int = 256) -> dict[str, jax.Array]:
    """``{name: scalar natural log}`` as :meth:`Norms.read` gives it for one seed's ``params``, with σ
    from full SVDs (``norms``' iteration settings unused; ``dense_limit``, ``ref_krylov``: static ints
    for bartlett convs, see :func:`_conv_operator_sigma`)."""
    sigmas, stats = [], []
    for layer in norms.used:
        kernel = norms._kernel(layer, params)
        if norms.convention == "bartlett" and layer.kind == "conv":
            sigmas.append(_conv_operator_sigma(layer, kernel, dense_limit, ref_krylov))
        else:
            sigmas.append(_sigma_svd(layer.matrix(params)))
        stats.append(layer_stats(layer, kernel, norms.family, norms.convention))
    return assemble(norms.family, norms.used, params, sigmas, stats, norms.convention)
