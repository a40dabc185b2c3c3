"""The five norm-based complexity measures (PROTOCOL.md §5), as natural logs, in two conventions.

Pure and jittable (``family``, ``layers``, ``convention`` static), vmappable over seeds. Products are
sums of logs and only bounded ratios are exponentiated, so nothing overflows float32 (ViT's spectral
complexity reaches e^170). ``W`` is a layer's PyTorch ``(fan_out, fan_in)`` matrix (a conv kernel
flattened to ``(C_out, C_in·kh·kw)``), σ its top singular value, ``col(W) = Σ_c ‖W[:, c]‖₂`` and
``row(W) = Σ_r ‖W[r, :]‖₂``.

``paper`` — exactly the official code, on the ``in_paper`` layers:
  * cnn, resnet: ln R, R = ∏ s_i · (Σ_i (c_{i+1}+…+c_L)^{2/3} / s_i^{2/3})^{3/2}, s_i = σ(W_i),
    c_i = col(W_i); spectral_product = Σ ln s_i; group_2_1 = ln Σ c_i; frobenius = ½ ln Σ θ² and
    l1 = ln Σ |θ| over every leaf of params (biases and BatchNorm γ/β included, ``batch_stats`` not).
    ResNet's in_paper layers (stem conv, fc) make R = σ(W_fc)·col(W_fc), as in the official code.
  * vit: ln R = Σ ln s_i + 1.5·ln(Σ r_i^{2/3} / (s_i^{2/3} + ε) + ε), r_i = row(W_i), ε = 1e-12;
    frobenius = ½ ln(Σ ‖W_i‖_F² + ε), l1 = ln(Σ |W_i|₁ + ε), group_2_1 = ln(Σ col(W_i) + ε), over the
    layer matrices only (Q, K, V separately).
  * σ = 0 becomes 1e-12 in every ln s_i (the official guard, which it applies inside R's sum only).

``bartlett`` — Bartlett, Foster & Telgarsky (2017) with M_i = 0, ρ_i = 1, on every weight layer as the
linear operator A_i it applies (a conv: on its actual input, stride and zero padding, a
``(H_out·W_out·C_out) × (H·W·C_in)`` matrix never formed): ln R_A, R_A = ∏ σ_i · (Σ_i ‖A_iᵀ‖₂,₁^{2/3} /
σ_i^{2/3})^{3/2}; spectral_product = Σ ln σ_i; group_2_1 = ln Σ_i ‖A_iᵀ‖₂,₁; frobenius and l1 are norms
of the same operators. Biases are excluded (they do not change Lipschitz constants); BatchNorm /
LayerNorm scaling is ignored and a residual net is the chain of all its convs: the textbook formula,
not a bound proven for these architectures. A dense layer applied to every token (ViT) is ``W`` itself,
not I_N ⊗ W (same σ, N× smaller (2,1) norm and L1), while the patch-embedding conv is the operator over
all N patches: the traced layer has no token count.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.models.layers import WeightLayer

NORM_NAMES = ("spectral_complexity", "spectral_product", "frobenius", "l1", "group_2_1")
_SIGMA_FLOOR = 1e-12  # the official code's replacement for an exactly-zero spectral norm
_VIT_EPS = 1e-12  # the official ViT code's additive guards inside its logs / denominators


def _matrix_stats(kmat: jax.Array, want_col: bool, want_row: bool) -> dict[str, jax.Array]:
    """``{"col": col(W), "row": row(W), "sumsq": ‖W‖_F², "l1": |W|₁}`` of ``W = kmatᵀ`` (``kmat [fan_in,
    fan_out]``; ``col``/``row`` when asked for). Memory-bound: the largest kernel (512×32768 in the CIFAR
    CNN) dominates the cost of all norms, so it is read as few times as possible."""
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
    out["l1"] = jnp.sum(jnp.abs(kmat))
    return out


def conv_tap_masks(input_hw: tuple, kernel_hw: tuple, stride: tuple, padding: tuple) -> tuple[np.ndarray, np.ndarray]:
    """0/1 float32 NumPy ``m_h [H_out, kh]``, ``m_w [W_out, kw]``: does tap ``a`` of output row ``i`` land
    inside the (unpadded) input? ``H_out = (H + top + bottom - kh) // sh + 1``, same for W."""
    out = []
    for n_in, k, s, (lo, hi) in zip(input_hw, kernel_hw, stride, padding):
        n_out = (n_in + lo + hi - k) // s + 1
        pos = np.arange(n_out)[:, None] * s - lo + np.arange(k)[None, :]
        out.append(((pos >= 0) & (pos < n_in)).astype(np.float32))
    return out[0], out[1]


def _conv_operator_stats(layer: WeightLayer, kernel: jax.Array) -> dict[str, jax.Array]:
    """``row`` = ‖Aᵀ‖₂,₁, ``sumsq`` = ‖A‖_F², ``l1`` = |A|₁ of the conv operator ``A`` on ``layer.input_hw``.

    Output unit (i, j, o) has as row the kernel taps inside the input (taps on padding are absent):
    with E[a,b,o] = Σ_c K[a,b,c,o]², ‖row(i,j,o)‖² = Σ_ab m_h[i,a] m_w[j,b] E[a,b,o], and
    |A|₁ = Σ_ab n_h[a] n_w[b] Σ_co |K[a,b,c,o]|, n_h[a] = Σ_i m_h[i,a]: exact, one pass over the kernel."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    m_h, m_w = conv_tap_masks(layer.input_hw, (kh, kw), layer.stride, layer.padding)
    e = jnp.sum(kernel * kernel, axis=2)  # [kh, kw, C_out]: squared tap weights summed over C_in
    row_sq = jnp.einsum("ia,jb,abo->ijo", m_h, m_w, e, precision=jax.lax.Precision.HIGHEST)
    n_taps = np.outer(m_h.sum(axis=0), m_w.sum(axis=0)).astype(np.float32)  # uses of each tap
    abs_tap = jnp.sum(jnp.abs(kernel), axis=(2, 3))  # [kh, kw]
    return {"row": jnp.sum(jnp.sqrt(row_sq)), "sumsq": jnp.sum(row_sq), "l1": jnp.sum(n_taps * abs_tap)}


def layer_stats(layer: WeightLayer, kernel: jax.Array, family: str, convention: str) -> dict[str, jax.Array]:
    """Everything but σ that ``(family, convention)`` needs from one layer: ``sumsq``, ``l1``, and
    ``col`` (paper) and/or ``row`` (paper vit, bartlett)."""
    if convention == "bartlett" and layer.kind == "conv":
        return _conv_operator_stats(layer, kernel)
    # the flax kernel as [fan_in, fan_out] (Wᵀ up to a row permutation): a free reshape, no transpose
    kmat = kernel.reshape(-1, kernel.shape[-1])
    if convention == "bartlett":
        return _matrix_stats(kmat, want_col=False, want_row=True)
    return _matrix_stats(kmat, want_col=True, want_row=family == "vit")


def assemble(family: str, used: Sequence[WeightLayer], params: Any, sigmas: Sequence[jax.Array],
             stats: Sequence[Mapping[str, jax.Array]], convention: str) -> dict[str, jax.Array]:
    """``{name: scalar natural log}`` for every name in ``NORM_NAMES``, from the ``used`` layers' σ
    (scalars, network order) and :func:`layer_stats`; ``params`` (one seed's) is read only by paper
    cnn/resnet frobenius and l1."""
    s = jnp.stack(list(sigmas))
    log_s = jnp.log(jnp.where(s > 0, s, _SIGMA_FLOOR))
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
    # Σ θ², Σ |θ| over every leaf of params, reusing the kernels' statistics just taken: two full passes
    # fewer over the largest (memory-bound) kernels
    known = {tuple(layer.path): st for layer, st in zip(used, stats) if layer.out_slice is None}
    sumsq, l1 = 0.0, 0.0
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in key_path)
        if path in known:
            sumsq, l1 = sumsq + known[path]["sumsq"], l1 + known[path]["l1"]
        else:
            sumsq, l1 = sumsq + jnp.sum(jnp.square(leaf)), l1 + jnp.sum(jnp.abs(leaf))
    return {
        "spectral_complexity": jnp.sum(log_s) + 1.5 * jnp.log(jnp.sum(terms)),
        "spectral_product": jnp.sum(log_s),
        "frobenius": 0.5 * jnp.log(sumsq),
        "l1": jnp.log(l1),
        "group_2_1": jnp.log(jnp.sum(col)),
    }
