"""The five norm-based complexity measures, in the ``paper`` and ``bartlett`` conventions.

Every function here is pure: jittable with ``family``, ``layers`` and ``convention`` static, and
``jax.vmap``-able over a leading seed axis of ``params``. Results are natural logs (``log_<name>``
in ``curves.npz``), computed so that nothing overflows in float32 (ViT's spectral complexity reaches
e^170 ≈ 1e75): products are sums of logs and only bounded ratios are exponentiated.

Notation (PROTOCOL.md conventions): ``W`` is a layer's PyTorch-layout ``(fan_out, fan_in)`` matrix
(a conv kernel flattened to ``(C_out, C_in·kh·kw)``), σ(W) its largest singular value,
``col(W) = Σ_columns ‖W[:, c]‖₂`` and ``row(W) = Σ_rows ‖W[r, :]‖₂ = ‖Wᵀ‖₂,₁``.

``paper`` — exactly the official code (PROTOCOL §5), on the ``in_paper`` layers only:
  * cnn, resnet: ln R with R = ∏ s_i · (Σ_i (c_{i+1}+…+c_L)^{2/3} / s_i^{2/3})^{3/2}, s_i = σ(W_i),
    c_i = col(W_i) (the last layer's term is 0); spectral_product = Σ ln s_i;
    group_2_1 = ln Σ c_i; frobenius = ½ ln Σ θ² and l1 = ln Σ |θ| over *every leaf of params*
    (biases and BatchNorm γ/β included; running statistics live in ``batch_stats``, excluded).
    For ResNet the family rule marks only the stem conv and the fc as in_paper, which makes
    R = σ(W_fc)·col(W_fc) as in the official code.
  * vit: ln R = Σ ln s_i + 1.5·ln(Σ r_i^{2/3} / (s_i^{2/3} + 1e-12) + 1e-12), r_i = row(W_i);
    spectral_product = Σ ln s_i; frobenius = ½ ln(Σ_i ‖W_i‖_F² + 1e-12);
    l1 = ln(Σ_i |W_i|₁ + 1e-12);
    group_2_1 = ln(Σ_i col(W_i) + 1e-12) — over the layer matrices only (Q, K, V separately via
    ``out_slice``).
  * an exactly-zero σ is replaced by 1e-12 (the official guard, which it applies inside R's sum);
    here it is applied to every ln s_i, so an all-zero layer gives ln(1e-12) instead of ln 0 = -inf.

``bartlett`` — Bartlett, Foster & Telgarsky (2017) with M_i = 0, ρ_i = 1, on *every* weight layer
(``in_paper`` ignored), each layer being the linear operator ``A_i`` it applies:
  * dense layer: ``A_i = W_i``;
  * conv layer: the convolution on its actual ``[H, W, C_in]`` input (``input_hw``) with its real
    stride and zero padding, a ``(H_out·W_out·C_out) × (H·W·C_in)`` matrix that is never formed;
    σ(A_i) is its true operator norm (power iteration through the conv and its transpose).
  * spectral_complexity: ln R_A, R_A = (∏ σ_i)·(Σ_i ‖A_iᵀ‖₂,₁^{2/3} / σ_i^{2/3})^{3/2};
  * spectral_product: Σ ln σ_i;
  * group_2_1: ln Σ_i ‖A_iᵀ‖₂,₁ — the very (2,1) norms that enter R_A (one term per output unit);
  * frobenius: ½ ln Σ_i ‖A_i‖_F²; l1: ln Σ_i |A_i|₁ (entrywise) — norms of the same operators.
  Biases are not part of any A_i (affine offsets do not change Lipschitz constants), so they are
  excluded, as in Bartlett et al. Like the paper convention, this ignores the per-channel scaling
  of BatchNorm/LayerNorm (ρ_i = 1) and treats residual networks as a chain of all their convs
  (shortcut 1×1 convs included): it is the textbook formula applied to every weight layer, not a
  bound proven for these architectures.
  For a conv, every output unit (position × channel) has as row the kernel taps that fall inside
  the input (taps on padding are absent), so with E[a,b,o] = Σ_c K[a,b,c,o]² and the 0/1 tap masks
  m_h[i,a], m_w[j,b] (does tap a of output row i land inside the input?):
  ‖row(i,j,o)‖² = Σ_ab m_h[i,a] m_w[j,b] E[a,b,o];  ‖A‖_F² = Σ of those;
  |A|₁ = Σ_ab n_h[a] n_w[b] Σ_co |K[a,b,c,o]| with n_h[a] = Σ_i m_h[i,a] — exact, cost ~ one pass
  over the kernel plus H_out·W_out·C_out·kh·kw flops.
  Caveat: a dense layer applied to every token (ViT) is taken as ``W`` itself, not as the
  token-batched operator I_N ⊗ W (same σ; its (2,1) norm and L1 would be N× larger, Frobenius²
  too), whereas the patch-embedding conv *is* the operator over all N patches (its (2,1) norm is
  N× the flattened kernel's row(W)). The traced layer has no token count to do otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.models.layers import WeightLayer

NORM_NAMES = ("spectral_complexity", "spectral_product", "frobenius", "l1", "group_2_1")


# The official code's replacement for an exactly-zero spectral norm.
_SIGMA_FLOOR = 1e-12
# The official ViT code's additive guards inside its logs / denominators.
_VIT_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# Per-layer statistics (exact, cheap: one pass over the kernel each)
# --------------------------------------------------------------------------------------------


def kernel_as_matrix(kernel: jax.Array) -> jax.Array:
    """Flax kernel → ``[fan_in, fan_out]`` (= ``Wᵀ`` up to a row permutation), by a free reshape.

    Dense ``(in, out)`` is returned as is; conv ``(kh, kw, C_in, C_out)`` becomes
    ``(kh·kw·C_in, C_out)``. No transposed copy of the kernel is made.
    """
    return kernel.reshape(-1, kernel.shape[-1])


def _matrix_stats(kmat: jax.Array, want_col: bool, want_row: bool) -> dict[str, jax.Array]:
    """(2,1) norms, ``‖W‖_F²`` and ``|W|₁`` of ``W = kmatᵀ`` (``kmat [fan_in, fan_out]``).

    Returns ``{"col": col(W), "row": row(W), "sumsq": ‖W‖_F², "l1": |W|₁}`` (``col``/``row`` only
    when asked for). These reductions are memory-bound; the largest kernel (512×32768 in the CIFAR
    CNN) dominates the cost of all norms, so the code below is arranged to read it as few times as
    possible.
    """
    sq = kmat * kmat
    out = {}
    if want_col:
        col_norms = jnp.sqrt(jnp.sum(sq, axis=1))  # ‖W[:, c]‖ for each input feature c
        out["col"] = jnp.sum(col_norms)
        # ‖W‖_F² from the norms vector, not as jnp.sum(sq): XLA would merge that reduce-of-reduce
        # into a second full reduction of `sq`, materialising kmat² (15× slower at 512×32768).
        out["sumsq"] = jnp.vdot(col_norms, col_norms)
    if want_row:
        row_norms = jnp.sqrt(jnp.sum(sq, axis=0))  # ‖W[r, :]‖ for each output unit r
        out["row"] = jnp.sum(row_norms)
        out.setdefault("sumsq", jnp.vdot(row_norms, row_norms))
    if "sumsq" not in out:
        out["sumsq"] = jnp.sum(sq)
    out["l1"] = jnp.sum(jnp.abs(kmat))
    return out


def conv_tap_masks(
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Which kernel taps of each output row/column land inside the (unpadded) input.

    Returns float32 NumPy arrays ``m_h [H_out, kh]`` and ``m_w [W_out, kw]`` of 0/1, where
    ``H_out = (H + top + bottom - kh) // sh + 1`` (same for W). Static (shape-only) data.
    """
    out = []
    for n_in, k, s, (lo, hi) in zip(input_hw, kernel_hw, stride, padding):
        n_out = (n_in + lo + hi - k) // s + 1
        pos = np.arange(n_out)[:, None] * s - lo + np.arange(k)[None, :]
        out.append(((pos >= 0) & (pos < n_in)).astype(np.float32))
    return out[0], out[1]


def _conv_operator_stats(layer: WeightLayer, kernel: jax.Array) -> dict[str, jax.Array]:
    """``‖Aᵀ‖₂,₁``, ``‖A‖_F²``, ``|A|₁`` of the conv operator ``A`` on ``layer.input_hw``."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    m_h, m_w = conv_tap_masks(layer.input_hw, (kh, kw), layer.stride, layer.padding)
    e = jnp.sum(kernel * kernel, axis=2)  # [kh, kw, C_out]: squared tap weights summed over C_in
    row_sq = jnp.einsum("ia,jb,abo->ijo", m_h, m_w, e, precision=jax.lax.Precision.HIGHEST)
    n_taps = np.outer(m_h.sum(axis=0), m_w.sum(axis=0)).astype(np.float32)  # uses of each tap
    abs_tap = jnp.sum(jnp.abs(kernel), axis=(2, 3))  # [kh, kw]
    return {
        "row": jnp.sum(jnp.sqrt(row_sq)),
        "sumsq": jnp.sum(row_sq),
        "l1": jnp.sum(n_taps * abs_tap),
    }


def layer_stats(
    layer: WeightLayer, kernel: jax.Array, family: str, convention: str
) -> dict[str, jax.Array]:
    """Everything but σ that ``(family, convention)`` needs from one layer (module docstring).

    Always ``sumsq`` and ``l1``; plus ``col`` (paper) and/or ``row`` (paper vit, bartlett).
    """
    if convention == "bartlett":
        if layer.kind == "conv":
            return _conv_operator_stats(layer, kernel)
        return _matrix_stats(kernel_as_matrix(kernel), want_col=False, want_row=True)
    return _matrix_stats(kernel_as_matrix(kernel), want_col=True, want_row=family == "vit")


def _key_name(entry: Any) -> Any:
    """The plain key of one pytree path entry (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def _all_params_sumsq_l1(
    params: Any, known: Mapping[tuple, Mapping[str, jax.Array]]
) -> tuple[jax.Array, jax.Array]:
    """Σ θ² and Σ |θ| over every leaf of the params pytree (the official CNN/ResNet L1/Frobenius).

    ``known`` maps a leaf's key path to its already computed ``{"sumsq", "l1"}`` (the layer
    kernels, whose statistics were just taken): reusing them saves two full passes over the
    largest kernels, which dominate the cost of the norms (these reductions are memory-bound).
    """
    sumsq, l1 = 0.0, 0.0
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = tuple(_key_name(k) for k in key_path)
        if path in known:
            sumsq = sumsq + known[path]["sumsq"]
            l1 = l1 + known[path]["l1"]
        else:
            sumsq = sumsq + jnp.sum(jnp.square(leaf))
            l1 = l1 + jnp.sum(jnp.abs(leaf))
    return sumsq, l1


# --------------------------------------------------------------------------------------------
# Formulas (log space)
# --------------------------------------------------------------------------------------------


def _log_sigma(s: jax.Array) -> jax.Array:
    return jnp.log(jnp.where(s > 0, s, _SIGMA_FLOOR))


def assemble(
    family: str,
    used: Sequence[WeightLayer],
    params: Any,
    sigmas: Sequence[jax.Array],
    stats: Sequence[Mapping[str, jax.Array]],
    convention: str,
) -> dict[str, jax.Array]:
    """The five log-measures from per-layer σ and statistics (layers in network order).

    Args:
      family: ``"cnn" | "resnet" | "vit"`` (only ``paper`` depends on it).
      used: the layers the convention uses (``layers_for``), in network order.
      params: one seed's params (read only by paper cnn/resnet frobenius and l1).
      sigmas: per used layer, scalar σ (flattened-kernel σ for paper; operator σ for bartlett).
      stats: per used layer, the dict from :func:`layer_stats`.
      convention: ``"paper" | "bartlett"``.

    Returns:
      ``{name: scalar natural log}`` for every name in ``NORM_NAMES``.
    """
    s = jnp.stack(list(sigmas))
    log_s = _log_sigma(s)
    s_floor = jnp.exp(log_s)
    two_thirds = 2.0 / 3.0

    if convention == "bartlett":
        row = jnp.stack([st["row"] for st in stats])
        # (r_i / σ_i)^{2/3} is a bounded per-layer ratio: no overflow even when ∏ σ_i would.
        terms = jnp.power(row / s_floor, two_thirds)
        return {
            "spectral_complexity": jnp.sum(log_s) + 1.5 * jnp.log(jnp.sum(terms)),
            "spectral_product": jnp.sum(log_s),
            "frobenius": 0.5 * jnp.log(sum(st["sumsq"] for st in stats)),
            "l1": jnp.log(sum(st["l1"] for st in stats)),
            "group_2_1": jnp.log(jnp.sum(row)),
        }

    if family == "vit":
        row = jnp.stack([st["row"] for st in stats])
        col = jnp.stack([st["col"] for st in stats])
        # Official ViT form; the guard sits on the unfloored s^{2/3}, as in the official code.
        terms = jnp.power(row, two_thirds) / (jnp.power(s, two_thirds) + _VIT_EPS)
        return {
            "spectral_complexity": jnp.sum(log_s) + 1.5 * jnp.log(jnp.sum(terms) + _VIT_EPS),
            "spectral_product": jnp.sum(log_s),
            "frobenius": 0.5 * jnp.log(sum(st["sumsq"] for st in stats) + _VIT_EPS),
            "l1": jnp.log(sum(st["l1"] for st in stats) + _VIT_EPS),
            "group_2_1": jnp.log(jnp.sum(col) + _VIT_EPS),
        }

    # cnn / resnet: later layers' column (2,1) norms summed into each earlier layer's numerator.
    col = jnp.stack([st["col"] for st in stats])
    later = jnp.concatenate([jnp.cumsum(col[::-1])[::-1][1:], jnp.zeros((1,), col.dtype)])
    terms = jnp.power(later, two_thirds) / jnp.power(s_floor, two_thirds)
    known = {
        tuple(layer.path): st for layer, st in zip(used, stats) if layer.out_slice is None
    }
    sumsq, l1 = _all_params_sumsq_l1(params, known)
    return {
        "spectral_complexity": jnp.sum(log_s) + 1.5 * jnp.log(jnp.sum(terms)),
        "spectral_product": jnp.sum(log_s),
        "frobenius": 0.5 * jnp.log(sumsq),
        "l1": jnp.log(l1),
        "group_2_1": jnp.log(jnp.sum(col)),
    }
