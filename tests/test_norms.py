"""Tests for jaxscale.norms: power iteration, conv operator norms, both conventions, vmap/jit.

The references here are independent NumPy float64 re-implementations written from PROTOCOL.md §5
and from Bartlett et al. (2017) — they never call jaxscale.norms. Models are mimicked by hand-built
``WeightLayer`` tuples and params dicts (CNN, ResNet and ViT layouts, small shapes) so that these
tests do not depend on jaxscale.models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.errors import UsageError
from jaxscale.models.layers import WeightLayer
from jaxscale.norms import CONVENTIONS, NORM_NAMES, Norms, NormState, conv_operator_matrix, exact_norms
from jaxscale.norms.power import block_power_iteration, conv_operator, dense_operator, lanczos_top

PAD1 = ((1, 1), (1, 1))
PAD0 = ((0, 0), (0, 0))

# Jitted with the (hashable) Norms settings static — the way the train step uses them, and much
# faster than op-by-op eager dispatch.
update_jit = jax.jit(lambda norms, p, s: norms.update(p, s), static_argnums=0)
init_jit = jax.jit(lambda norms, p, k: norms.init(p, k), static_argnums=0)
exact_jit = jax.jit(exact_norms, static_argnums=0)


def N(family, layers, convention, **kw):
    return Norms(layers, convention, family, **kw)


def power_step(apply, apply_t, v, n_iter):
    """Block power iteration, jitted per operator (``n_iter`` static)."""
    return jax.jit(block_power_iteration, static_argnums=(0, 1, 3))(apply, apply_t, v, n_iter)


def dense_step(kmat, v, n_iter):
    return jax.jit(lambda k, v: block_power_iteration(*dense_operator(k), v, n_iter))(kmat, v)

# ----------------------------------------------------------------------------------------------
# Hand-built model layouts (flax kernel conventions: dense (in, out), conv (kh, kw, in, out))
# ----------------------------------------------------------------------------------------------


def _uniform(rng, shape, fan_in, scale=1.0):
    b = scale / np.sqrt(fan_in)
    return rng.uniform(-b, b, size=shape).astype(np.float32)


def cnn_model(seed: int, scale: float = 1.0):
    """CNN-like: 3 convs (pool after conv 2) + 2 dense, biases everywhere; all layers in_paper."""
    rng = np.random.default_rng(seed)
    shapes = {
        "Conv_0": (3, 3, 3, 4),
        "Conv_1": (3, 3, 4, 6),
        "Conv_2": (3, 3, 6, 8),
        "Dense_0": (4 * 4 * 8, 16),
        "Dense_1": (16, 10),
    }
    params = {}
    for name, shp in shapes.items():
        fan_in = int(np.prod(shp[:-1]))
        params[name] = {
            "kernel": _uniform(rng, shp, fan_in, scale),
            "bias": _uniform(rng, (shp[-1],), fan_in),
        }
    layers = (
        WeightLayer("conv0", "conv", ("Conv_0", "kernel"), padding=PAD1, input_hw=(8, 8)),
        WeightLayer("conv1", "conv", ("Conv_1", "kernel"), padding=PAD1, input_hw=(8, 8)),
        WeightLayer("conv2", "conv", ("Conv_2", "kernel"), padding=PAD1, input_hw=(4, 4)),
        WeightLayer("fc0", "dense", ("Dense_0", "kernel")),
        WeightLayer("fc1", "dense", ("Dense_1", "kernel")),
    )
    return layers, params


def resnet_model(seed: int):
    """ResNet-like: stem, one stride-2 BasicBlock with a 1×1 stride-2 shortcut, BN γ/β, fc.

    Only the stem conv and the fc are in_paper (the official code's selection).
    """
    rng = np.random.default_rng(seed)

    def conv(shp):
        return (rng.normal(size=shp) * np.sqrt(2.0 / (shp[0] * shp[1] * shp[3]))).astype(np.float32)

    def bn(c):
        return {
            "scale": (1 + 0.1 * rng.normal(size=c)).astype(np.float32),
            "bias": (0.1 * rng.normal(size=c)).astype(np.float32),
        }

    params = {
        "stem": {"kernel": conv((3, 3, 3, 4))},
        "stem_bn": bn(4),
        "block0": {
            "conv_a": {"kernel": conv((3, 3, 4, 6))},
            "bn_a": bn(6),
            "conv_b": {"kernel": conv((3, 3, 6, 6))},
            "bn_b": bn(6),
            "short": {"kernel": conv((1, 1, 4, 6))},
            "bn_s": bn(6),
        },
        "fc": {
            "kernel": (0.3 * rng.normal(size=(6, 10))).astype(np.float32),
            "bias": (0.1 * rng.normal(size=10)).astype(np.float32),
        },
    }
    s2 = (2, 2)
    layers = (
        WeightLayer("stem", "conv", ("stem", "kernel"), padding=PAD1, input_hw=(8, 8)),
        WeightLayer("b0a", "conv", ("block0", "conv_a", "kernel"), stride=s2, padding=PAD1,
                    input_hw=(8, 8), in_paper=False),
        WeightLayer("b0b", "conv", ("block0", "conv_b", "kernel"), padding=PAD1, input_hw=(4, 4),
                    in_paper=False),
        WeightLayer("b0s", "conv", ("block0", "short", "kernel"), stride=s2, padding=PAD0,
                    input_hw=(8, 8), in_paper=False),
        WeightLayer("fc", "dense", ("fc", "kernel")),
    )
    return layers, params


def vit_model(seed: int, scale: float = 1.0, depth: int = 1):
    """ViT-like: patch conv (kernel = stride = 4 on 8×8×3, D = 8), blocks with a stacked (D, 3D)
    in-projection split into Q, K, V by out_slice, out-proj, MLP, head; plus LN, biases, cls, pos
    (which the paper ViT norms must ignore)."""
    rng = np.random.default_rng(seed)
    d = 8

    def w(shp):
        return (scale * rng.normal(size=shp) / np.sqrt(shp[-2] if len(shp) == 2 else 48)).astype(
            np.float32
        )

    def b(n):
        return (0.1 * rng.normal(size=n)).astype(np.float32)

    params = {
        "patch": {"kernel": w((4, 4, 3, d)), "bias": b(d)},
        "cls": (0.02 * rng.normal(size=(1, 1, d))).astype(np.float32),
        "pos": (0.02 * rng.normal(size=(1, 5, d))).astype(np.float32),
        "head": {"kernel": w((d, 10)), "bias": b(10)},
        "norm": {"scale": (1 + b(d)).astype(np.float32), "bias": b(d)},
    }
    layers = [WeightLayer("patch", "conv", ("patch", "kernel"), stride=(4, 4), padding=PAD0,
                          input_hw=(8, 8))]
    for i in range(depth):
        blk = f"block{i}"
        params[blk] = {
            "ln1": {"scale": (1 + b(d)).astype(np.float32), "bias": b(d)},
            "in_proj": {"kernel": w((d, 3 * d)), "bias": b(3 * d)},
            "out_proj": {"kernel": w((d, d)), "bias": b(d)},
            "ln2": {"scale": (1 + b(d)).astype(np.float32), "bias": b(d)},
            "fc1": {"kernel": w((d, 4 * d)), "bias": b(4 * d)},
            "fc2": {"kernel": w((4 * d, d)), "bias": b(d)},
        }
        for j, qkv in enumerate("qkv"):
            layers.append(WeightLayer(f"{blk}/{qkv}", "dense", (blk, "in_proj", "kernel"),
                                      out_slice=(j * d, (j + 1) * d)))
        layers += [
            WeightLayer(f"{blk}/o", "dense", (blk, "out_proj", "kernel")),
            WeightLayer(f"{blk}/fc1", "dense", (blk, "fc1", "kernel")),
            WeightLayer(f"{blk}/fc2", "dense", (blk, "fc2", "kernel")),
        ]
    layers.append(WeightLayer("head", "dense", ("head", "kernel")))
    return tuple(layers), params


MODELS = {"cnn": cnn_model, "resnet": resnet_model, "vit": vit_model}

# ----------------------------------------------------------------------------------------------
# Independent NumPy float64 references
# ----------------------------------------------------------------------------------------------


def np_get(params, path):
    x = params
    for k in path:
        x = x[k]
    return np.asarray(x, np.float64)


def np_torch_matrix(layer, params):
    """PyTorch (fan_out, fan_in) layout, conv flattened in (C_in, kh, kw) order."""
    k = np_get(params, layer.path)
    if layer.out_slice is not None:
        k = k[..., layer.out_slice[0]:layer.out_slice[1]]
    if k.ndim == 2:
        return k.T
    return np.transpose(k, (3, 2, 0, 1)).reshape(k.shape[3], -1)


def np_sigma(m):
    return np.linalg.svd(m, compute_uv=False)[0]


def np_col(m):
    return np.linalg.norm(m, axis=0).sum()


def np_row(m):
    return np.linalg.norm(m, axis=1).sum()


def np_conv_matrix(kernel, input_hw, stride, padding):
    """Explicit conv operator [H_out·W_out·C_out, H·W·C_in] built by loops (NHWC flattening)."""
    k = np.asarray(kernel, np.float64)
    kh, kw, cin, cout = k.shape
    h, w = input_hw
    (pt, pb), (pl, pr) = padding
    ho = (h + pt + pb - kh) // stride[0] + 1
    wo = (w + pl + pr - kw) // stride[1] + 1
    a = np.zeros((ho * wo * cout, h * w * cin))
    for i in range(ho):
        for j in range(wo):
            for p in range(kh):
                for q in range(kw):
                    y, x = i * stride[0] - pt + p, j * stride[1] - pl + q
                    if 0 <= y < h and 0 <= x < w:
                        for o in range(cout):
                            row = (i * wo + j) * cout + o
                            a[row, (y * w + x) * cin:(y * w + x + 1) * cin] += k[p, q, :, o]
    return a


def np_paper_norms(family, layers, params):
    """PROTOCOL §5, written from the formulas (linear units, then natural log)."""
    used = [layer for layer in layers if layer.in_paper]
    mats = [np_torch_matrix(layer, params) for layer in used]
    s = np.array([np_sigma(m) for m in mats])
    if family == "vit":
        r = np.array([np_row(m) for m in mats])
        c = np.array([np_col(m) for m in mats])
        return {
            "spectral_complexity": np.log(s).sum()
            + 1.5 * np.log((r ** (2 / 3) / (s ** (2 / 3) + 1e-12)).sum() + 1e-12),
            "spectral_product": np.log(s).sum(),
            "frobenius": 0.5 * np.log(sum((m**2).sum() for m in mats) + 1e-12),
            "l1": np.log(sum(np.abs(m).sum() for m in mats) + 1e-12),
            "group_2_1": np.log(c.sum() + 1e-12),
        }
    c = np.array([np_col(m) for m in mats])
    big_l = len(mats)
    s_safe = np.where(s > 0, s, 1e-12)
    corr = sum(c[i + 1:].sum() ** (2 / 3) / s_safe[i] ** (2 / 3) for i in range(big_l))
    r_val = np.prod(s) * corr**1.5
    leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(params)]
    return {
        "spectral_complexity": np.log(r_val),
        "spectral_product": np.log(np.prod(s)),
        "frobenius": np.log(np.sqrt(sum((x**2).sum() for x in leaves))),
        "l1": np.log(sum(np.abs(x).sum() for x in leaves)),
        "group_2_1": np.log(c.sum()),
    }


def np_operator(layer, params):
    """Bartlett's A_i: the dense matrix, or the conv's explicit operator on its input shape."""
    if layer.kind == "dense":
        return np_torch_matrix(layer, params)
    return np_conv_matrix(np_get(params, layer.path), layer.input_hw, layer.stride, layer.padding)


def np_bartlett_norms(layers, params):
    ops = [np_operator(layer, params) for layer in layers]
    s = np.array([np_sigma(a) for a in ops])
    r = np.array([np_row(a) for a in ops])  # ‖Aᵀ‖_{2,1}
    return {
        "spectral_complexity": np.log(s).sum() + 1.5 * np.log(((r / s) ** (2 / 3)).sum()),
        "spectral_product": np.log(s).sum(),
        "frobenius": 0.5 * np.log(sum((a**2).sum() for a in ops)),
        "l1": np.log(sum(np.abs(a).sum() for a in ops)),
        "group_2_1": np.log(r.sum()),
    }


def assert_logs_close(got, want, tol, label=""):
    """|Δ ln| ≤ tol  ⇔  relative error of the norm itself ≤ ~tol.

    Plus two float32 spacings of the log value itself: a float32 ln R cannot resolve better than
    that (spacing 1.5e-5 for ln R in [128, 256), the ViT range), whatever the algorithm.
    """
    assert set(got) == set(NORM_NAMES)
    for name in NORM_NAMES:
        g = float(got[name])
        assert np.isfinite(g), (label, name, g)
        allowed = tol + 2 * float(np.spacing(np.float32(abs(want[name]))))
        assert abs(g - want[name]) <= allowed, (label, name, g, want[name], g - want[name])


def warm_norms(family, layers, params, convention, seed=0):
    """The train-loop sequence: init (random block converged by Lanczos), then one in-step update."""
    norms = N(family, layers, convention)
    return update_jit(norms, params, init_jit(norms, params, jax.random.PRNGKey(seed)))


# ----------------------------------------------------------------------------------------------
# σ by power iteration
# ----------------------------------------------------------------------------------------------


def _test_matrices():
    """(name, W [fan_out, fan_in]) — random, trained-like (gap) and slowly-decaying spectra."""
    rng = np.random.default_rng(1)
    out = [
        ("gaussian 64x288", rng.normal(size=(64, 288)) / 17),
        ("gaussian 10x512", rng.normal(size=(10, 512)) / 22),
        ("gaussian 128x40", rng.normal(size=(128, 40)) / 11),
    ]

    def with_spectrum(m, n, svals, noise):
        u, _ = np.linalg.qr(rng.normal(size=(m, len(svals))))
        v, _ = np.linalg.qr(rng.normal(size=(n, len(svals))))
        return (u * svals) @ v.T + noise * rng.normal(size=(m, n))

    k = np.arange(48)
    out.append(("low-rank-ish 64x288", with_spectrum(64, 288, 4.0 * 0.6**k, 0.01)))
    out.append(("slow decay 96x200", with_spectrum(96, 200, 1.0 / (1.0 + 0.08 * k), 0.002)))
    return [(name, m.astype(np.float32)) for name, m in out]


def test_dense_power_iteration_matches_svd_after_warmup():
    """A block of one vector is plain power iteration."""
    step = jax.jit(lambda k, v: block_power_iteration(*dense_operator(k), v, 1))
    for name, w in _test_matrices():
        kmat = jnp.asarray(w.T)  # flax (fan_in, fan_out)
        true = np_sigma(w.astype(np.float64))
        v = jax.random.normal(jax.random.PRNGKey(3), (1, w.shape[1]))
        v = v / jnp.linalg.norm(v)
        for _ in range(300):  # warm-up: the jitted in-step call, state carried
            sigma, v = step(kmat, v)
            # the estimate is a lower bound at every iteration (never overshoots)
            assert float(sigma) <= true * (1 + 1e-6), name
        assert abs(float(sigma) / true - 1) <= 1e-4, (name, float(sigma), true)
        assert abs(float(jnp.linalg.norm(v)) - 1) <= 1e-5
        if name.startswith("slow"):
            # the fori_loop path (n_iter > 4) converges the same way from a cold start
            v0 = jax.random.normal(jax.random.PRNGKey(4), (1, w.shape[1]))
            s_loop, _ = dense_step(kmat, v0 / jnp.linalg.norm(v0), 300)
            assert abs(float(s_loop) / true - 1) <= 1e-4, name


def test_lanczos_converges_where_power_iteration_is_slow():
    """A wide random matrix (the shape of the CNN's 512×32768 layer at init, scaled down) has a
    nearly degenerate top: power iteration is still far off after 64 iterations, 64 Lanczos steps
    (the same 128 mat-vecs) are converged. Also: breakdown (k > rank) gives no NaN."""
    rng = np.random.default_rng(2)
    w = (rng.uniform(-1, 1, size=(128, 8192)) / np.sqrt(8192)).astype(np.float32)
    sv = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    assert sv[1] / sv[0] > 0.99  # the hard case
    kmat = jnp.asarray(w.T)
    v0 = jax.random.normal(jax.random.PRNGKey(0), (1, 8192))
    lanczos = jax.jit(lambda k, v: lanczos_top(*dense_operator(k), v, 64))
    s_l, v_l = lanczos(kmat, v0)
    s_p, _ = dense_step(kmat, v0 / jnp.linalg.norm(v0), 64)
    assert abs(float(s_l) / sv[0] - 1) <= 1e-5, float(s_l) / sv[0] - 1
    assert float(s_p) / sv[0] - 1 < -1e-4  # power iteration lags (lower bound, far off)
    # the Ritz vector is a converged state for the in-step power iteration
    s1, _ = dense_step(kmat, v_l, 1)
    assert abs(float(s1) / sv[0] - 1) <= 1e-5
    # a patch-embedding conv (16 identical blocks: every singular value 16-fold) with a Krylov
    # dimension far beyond the 9 distinct values: breakdown must end cleanly, not in NaN or junk
    kernel = jnp.asarray(rng.normal(size=(4, 4, 3, 8)).astype(np.float32))
    a = np_conv_matrix(kernel, (16, 16), (4, 4), PAD0)
    apply, apply_t = conv_operator(kernel, (16, 16, 3), (4, 4), PAD0)
    s_r, v_r = jax.jit(lambda v: lanczos_top(apply, apply_t, v, 129))(jnp.ones((1, 16, 16, 3)))
    assert np.all(np.isfinite(np.asarray(v_r)))
    assert abs(float(s_r) / np_sigma(a) - 1) <= 1e-5
    # rank-2 matrix, Krylov space exhausted long before k steps
    low = (rng.normal(size=(6, 2)) @ rng.normal(size=(2, 9))).astype(np.float32)
    s_b, v_b = lanczos_top(*dense_operator(jnp.asarray(low.T)), jnp.ones((2, 9)), 6)
    assert np.all(np.isfinite(np.asarray(v_b)))
    assert abs(float(s_b) / np_sigma(low.astype(np.float64)) - 1) <= 1e-5


@pytest.mark.parametrize(
    "case",
    [
        dict(hw=(6, 6), k=(3, 3, 3, 4), stride=(1, 1), padding=PAD1),
        dict(hw=(8, 8), k=(3, 3, 3, 5), stride=(2, 2), padding=PAD1),
        dict(hw=(7, 7), k=(3, 3, 2, 4), stride=(2, 2), padding=PAD1),
        dict(hw=(8, 8), k=(1, 1, 4, 6), stride=(2, 2), padding=PAD0),
        dict(hw=(8, 8), k=(4, 4, 3, 8), stride=(4, 4), padding=PAD0),  # patch embedding
    ],
    ids=["k3s1p1", "k3s2p1-even", "k3s2p1-odd", "1x1s2", "patch4"],
)
def test_conv_operator_norm_matches_dense_matrix(case):
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=case["k"]).astype(np.float32) / 5
    a = np_conv_matrix(kernel, case["hw"], case["stride"], case["padding"])
    # the loop-built matrix is the same linear map as the conv the models apply
    x = rng.normal(size=case["hw"] + (case["k"][2],)).astype(np.float32)
    apply1, _ = conv_operator(jnp.asarray(kernel), x.shape, case["stride"], case["padding"])
    y = apply1(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y).ravel(), a @ x.ravel().astype(np.float64),
                               rtol=1e-4, atol=1e-5)
    # so does the module's explicit builder (used by exact_norms on small shapes)
    built = conv_operator_matrix(jnp.asarray(kernel), case["hw"], case["stride"], case["padding"])
    np.testing.assert_allclose(np.asarray(built), a, atol=1e-6)

    true = np_sigma(a)
    v = jax.random.normal(jax.random.PRNGKey(0), (2,) + case["hw"] + (case["k"][2],))
    # (the unrolled n_iter = 1 path on convs is covered by the bartlett measure tests)
    block = conv_operator(jnp.asarray(kernel), v.shape, case["stride"], case["padding"])
    sigma, _ = power_step(*block, v, 300)
    apply, apply_t = conv_operator(jnp.asarray(kernel), v.shape[1:], case["stride"], case["padding"])
    sigma_l, _ = lanczos_top(apply, apply_t, v, 32)
    for s in (sigma, sigma_l):
        assert abs(float(s) / true - 1) <= 1e-4, (float(s), true)
    flat = np.transpose(kernel, (3, 2, 0, 1)).reshape(case["k"][3], -1).astype(np.float64)
    if case["k"][0] <= case["stride"][0] and case["padding"] == PAD0:
        # non-overlapping taps, no padding (patch embedding, 1×1 convs): the operator is block
        # diagonal in the flattened kernel, so both have the same σ
        assert abs(np_sigma(flat) / true - 1) <= 1e-6
    else:
        # otherwise the flattened kernel's σ is NOT the operator norm (PROTOCOL §9.7)
        assert abs(np_sigma(flat) / true - 1) > 1e-3


# ----------------------------------------------------------------------------------------------
# The five measures
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["cnn", "resnet", "vit"])
def test_paper_measures_match_numpy_reference(family):
    layers, params = MODELS[family](seed=11)
    want = np_paper_norms(family, layers, params)
    assert_logs_close(exact_jit(N(family, layers, "paper"), params), want, 1e-5, "exact")
    got, state = warm_norms(family, layers, params, "paper")
    assert_logs_close(got, want, 1e-5, "power")
    assert set(state.vectors) == {layer.name for layer in layers if layer.in_paper}


def test_paper_resnet_reduces_to_fc_quantity():
    """PROTOCOL §5.2: with only stem + fc, R = σ(W_fc)·col(W_fc); the stem cancels."""
    layers, params = resnet_model(seed=5)
    fc = np.asarray(params["fc"]["kernel"], np.float64).T
    got = exact_jit(N("resnet", layers, "paper"), params)
    assert abs(float(got["spectral_complexity"]) - np.log(np_sigma(fc) * np_col(fc))) <= 1e-5
    # and the trunk convs do not change it, while they do change Frobenius/L1
    params2 = jax.tree_util.tree_map(lambda x: x, params)
    params2["block0"]["conv_a"]["kernel"] = params["block0"]["conv_a"]["kernel"] * 3
    got2 = exact_jit(N("resnet", layers, "paper"), params2)
    assert abs(float(got2["spectral_complexity"] - got["spectral_complexity"])) <= 1e-6
    assert float(got2["frobenius"] - got["frobenius"]) > 1e-2


def test_paper_vit_does_not_overflow_float32():
    """ViT λ reaches 1e75 in the paper: the float32 logs must stay finite and exact."""
    layers, params = vit_model(seed=3, scale=3e5)
    want = np_paper_norms("vit", layers, params)
    assert want["spectral_product"] > np.log(np.finfo(np.float32).max)  # linear product overflows
    got = exact_jit(N("vit", layers, "paper"), params)
    for name in NORM_NAMES:
        assert got[name].dtype == jnp.float32
    assert_logs_close(got, want, 1e-5, "exact")
    assert_logs_close(warm_norms("vit", layers, params, "paper")[0], want, 1e-5, "power")


# The ViT variant only recombines paths the other two cover (patch conv operator, plain dense
# layers); it is kept in the slow step to hold the fast file under a minute of CPU.
@pytest.mark.parametrize(
    "family", ["cnn", "resnet", pytest.param("vit", marks=pytest.mark.slow)]
)
def test_bartlett_measures_match_dense_operator_reference(family):
    layers, params = MODELS[family](seed=21)
    want = np_bartlett_norms(layers, params)
    assert_logs_close(exact_jit(N(family, layers, "bartlett"), params), want, 1e-5)
    got, state = warm_norms(family, layers, params, "bartlett")
    assert_logs_close(got, want, 1e-5, "power")
    # every declared layer is used (in_paper ignored), convs carry input-shaped vectors
    assert set(state.vectors) == {layer.name for layer in layers}
    for layer in layers:
        if layer.kind == "conv":
            cin = np_get(params, layer.path).shape[2]
            assert state.vectors[layer.name].shape == (4,) + layer.input_hw + (cin,)


def test_bartlett_differs_from_paper_on_convs():
    """The conventions are different quantities (operator vs flattened-kernel σ, all layers)."""
    layers, params = cnn_model(seed=2)
    p = exact_jit(N("cnn", layers, "paper"), params)
    b = exact_jit(N("cnn", layers, "bartlett"), params)
    assert abs(float(p["spectral_product"] - b["spectral_product"])) > 1e-2
    assert abs(float(p["spectral_complexity"] - b["spectral_complexity"])) > 1e-2


# ----------------------------------------------------------------------------------------------
# jit / vmap / warm start: the train-step situation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family,convention",
    [
        ("cnn", "paper"),
        ("resnet", "bartlett"),
        pytest.param("vit", "paper", marks=pytest.mark.slow),
    ],
)
def test_vmap_over_seeds_equals_per_seed_calls(family, convention):
    seeds = [0, 1, 2]
    models = [MODELS[family](seed=s) for s in seeds]
    norms = N(family, models[0][0], convention)
    per_params = [m[1] for m in models]
    keys = [jax.random.PRNGKey(s) for s in seeds]
    stacked_params = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *per_params)
    # init (random block + Lanczos) is vmappable too. (Its lower Ritz vectors, nearly degenerate,
    # may rotate within their span between batched and per-seed rounding: values are compared.)
    stacked_state = jax.jit(jax.vmap(norms.init))(stacked_params, jnp.stack(keys))
    per_state = [jax.tree.map(lambda a, i=i: a[i], stacked_state) for i in range(len(seeds))]

    norms_v, state_v = jax.jit(jax.vmap(norms.update))(stacked_params, stacked_state)
    read_v, _ = jax.jit(jax.vmap(norms.read))(stacked_params, stacked_state)
    for i in range(len(seeds)):
        norms_i, state_i = update_jit(norms, per_params[i], per_state[i])
        init_i, _ = update_jit(norms, per_params[i], init_jit(norms, per_params[i], keys[i]))
        want = exact_jit(norms, per_params[i])
        for name in NORM_NAMES:
            assert abs(float(norms_v[name][i] - norms_i[name])) <= 1e-5, (name, i)
            assert abs(float(init_i[name] - want[name])) <= 1e-5, (name, i)
            # converged init, then one update / a re-converged read: exact
            assert abs(float(norms_v[name][i] - want[name])) <= 1e-5, (name, i)
            assert abs(float(read_v[name][i] - want[name])) <= 1e-5, (name, i)
        # the carried states are equivalent: the next update gives the same values (the vectors
        # themselves may rotate within a block of equal singular values, e.g. a conv on a 1×1 map)
        again_v, _ = update_jit(norms, per_params[i], jax.tree.map(lambda a: a[i], state_v))
        again_i, _ = update_jit(norms, per_params[i], state_i)
        for name in NORM_NAMES:
            assert abs(float(again_v[name] - again_i[name])) <= 1e-5, (name, i)


def test_jit_compiles_once_and_warm_start_tracks_drifting_weights():
    """One trace for repeated calls; after convergence one iteration per call keeps σ within 1e-4
    of the exact value while the weights drift (W ← W + 1e-3·noise per call, as in training)."""
    layers, params = cnn_model(seed=4)
    rng = np.random.default_rng(0)
    # make the dense layers trained-like: a dominant direction on top of the random init
    for name in ("Dense_0", "Dense_1"):
        k = params[name]["kernel"]
        u, v = rng.normal(size=k.shape[0]), rng.normal(size=k.shape[1])
        params[name]["kernel"] = (k + 0.5 * np.outer(u, v) / np.sqrt(k.shape[0])).astype(np.float32)
    norms = N("cnn", layers, "paper")
    traces = []

    def fn(p, s):
        traces.append(1)  # runs only when jax traces
        return norms.update(p, s)

    step = jax.jit(fn)
    state = init_jit(norms, params, jax.random.PRNGKey(0))
    scale = {k: float(np.std(v["kernel"])) for k, v in params.items()}
    worst = 0.0
    for _ in range(40):
        params = {
            k: {"kernel": v["kernel"] + 1e-3 * scale[k] * rng.normal(size=v["kernel"].shape)
                .astype(np.float32), "bias": v["bias"]}
            for k, v in params.items()
        }
        out, state = step(params, state)
        want = exact_jit(norms, params)
        for name in ("spectral_product", "spectral_complexity"):
            worst = max(worst, abs(float(out[name] - want[name])))
        assert isinstance(state, NormState)
    # Power-iteration estimates never overshoot, so per-layer errors cannot cancel in Σ ln σ:
    # the sum within 1e-4 at every step ⇒ every layer's σ within 1e-4 (observed: a few 1e-6).
    assert worst <= 1e-4, worst
    assert len(traces) == 1
    # per-layer check of the last state: each carried σ within 1e-4 of its SVD value
    for layer in layers:
        w = np_torch_matrix(layer, params)
        kmat = jnp.asarray(np.asarray(params[layer.path[0]]["kernel"]).reshape(-1, w.shape[0]))
        s, _ = dense_step(kmat, state.vectors[layer.name][:1], 1)
        assert abs(float(s) / np_sigma(w) - 1) <= 1e-4, layer.name


def test_norms_finite_and_state_kept_for_all_zero_layer():
    layers, params = cnn_model(seed=6)
    params["Conv_1"]["kernel"] = np.zeros_like(params["Conv_1"]["kernel"])
    for convention in CONVENTIONS:
        norms = N("cnn", layers, convention)
        state = init_jit(norms, params, jax.random.PRNGKey(1))
        out, new = update_jit(norms, params, state)
        assert all(np.isfinite(float(out[n])) for n in NORM_NAMES), (convention, out)
        blk = np.asarray(state.vectors["conv1"]).reshape(state.vectors["conv1"].shape[0], -1)
        np.testing.assert_allclose(blk @ blk.T, np.eye(blk.shape[0]), atol=1e-5)  # init: finite
        # the vector of the zero layer is kept (not NaN), so it recovers once the layer is non-zero
        np.testing.assert_array_equal(new.vectors["conv1"], state.vectors["conv1"])
        assert float(out["spectral_product"]) < np.log(1e-6)  # σ floored at 1e-12


def test_init_state_deterministic_unit_vectors():
    layers, params = vit_model(seed=0)
    for convention in CONVENTIONS:
        norms = N("vit", layers, convention)
        a = init_jit(norms, params, jax.random.PRNGKey(5))
        b = init_jit(norms, params, jax.random.PRNGKey(5))
        assert a.convention == convention
        for name in a.vectors:
            np.testing.assert_array_equal(a.vectors[name], b.vectors[name])
            blk = np.asarray(a.vectors[name]).reshape(a.vectors[name].shape[0], -1)
            # a block of orthonormal rows, k = min(4, vector size)
            assert blk.shape[0] == min(4, blk.shape[1])
            np.testing.assert_allclose(blk @ blk.T, np.eye(blk.shape[0]), atol=1e-5)
    # Q, K, V of a block are distinct layers with their own vectors
    p = init_jit(N("vit", layers, "paper"), params, jax.random.PRNGKey(5))
    assert p.vectors["block0/q"].shape == (4, 8)
    assert not np.allclose(p.vectors["block0/q"], p.vectors["block0/k"])
    assert p.vectors["patch"].shape == (4, 4 * 4 * 3)
    one = init_jit(N("vit", layers, "paper", block=1), params, jax.random.PRNGKey(5))
    assert one.vectors["patch"].shape == (1, 4 * 4 * 3)
    assert init_jit(N("vit", layers, "bartlett"), params, jax.random.PRNGKey(5)).vectors[
        "patch"].shape == (4, 8, 8, 3)


# ----------------------------------------------------------------------------------------------
# Bad input ⇒ UsageError naming the problem and the fix
# ----------------------------------------------------------------------------------------------


def test_bad_inputs_raise_usage_error():
    layers, params = cnn_model(seed=0)
    norms = N("cnn", layers, "paper")
    state = init_jit(norms, params, jax.random.PRNGKey(0))
    with pytest.raises(UsageError, match="use convention='bartlett' for other models"):
        N("mlp", layers, "paper")
    with pytest.raises(UsageError, match="unknown norm convention"):
        N("cnn", layers, "textbook")
    with pytest.raises(UsageError, match="power_iterations"):
        N("cnn", layers, "paper", power_iterations=0)
    with pytest.raises(UsageError, match="every"):
        N("cnn", layers, "paper", every=-1)
    with pytest.raises(UsageError, match="rebuild it with Norms.init"):
        N("cnn", layers, "bartlett").update(params, state)
    no_hw = (WeightLayer("c", "conv", ("Conv_0", "kernel"), padding=PAD1),)
    with pytest.raises(UsageError, match="input_hw"):
        N(None, no_hw, "bartlett")
    missing = (WeightLayer("fc", "dense", ("Nope", "kernel")),)
    with pytest.raises(UsageError, match="not found in params"):
        exact_norms(N("cnn", missing, "paper"), params)
    with pytest.raises(UsageError, match="unique names"):
        N("cnn", (layers[3], layers[3]), "paper")
    other_layers, other_params = resnet_model(seed=0)
    with pytest.raises(UsageError, match="do not match"):
        N("resnet", other_layers, "paper").update(other_params, state)


def test_block_power_iteration_follows_crossing_top_singular_values():
    """Two top singular values cross (σ₁ ↔ σ₂ swap directions): a single carried vector keeps the
    old direction and lags; a block of 4 with Rayleigh–Ritz picks the new top at once. σ stays a
    lower bound."""
    rng = np.random.default_rng(9)
    u, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    v, _ = np.linalg.qr(rng.normal(size=(120, 40)))
    step = jax.jit(lambda k, v: block_power_iteration(*dense_operator(k), v, 1))
    blocks = {k: jnp.asarray(np.linalg.qr(rng.normal(size=(120, k)))[0].T, jnp.float32)
              for k in (1, 4)}
    errs = {1: [], 4: []}
    for t in np.linspace(0.0, 1.0, 30):
        s = np.concatenate([[1.0 - 0.1 * t, 0.9 + 0.1 * t, 0.8], 0.3 * 0.9 ** np.arange(37)])
        w = (u * s) @ v.T  # [fan_out, fan_in]
        true = np_sigma(w)
        for k in (1, 4):
            sigma, blocks[k] = step(jnp.asarray(w.T, jnp.float32), blocks[k])
            assert float(sigma) <= true * (1 + 1e-6)
            errs[k].append(abs(float(sigma) / true - 1))
    assert max(errs[4][5:]) <= 1e-5, max(errs[4][5:])
    assert max(errs[1][5:]) > 1e-3  # the single vector is stuck on the old top direction


def test_orthonormal_rows_spans_in_order_and_survives_rank_deficiency():
    """The block orthonormalisation: row j spans rows 0..j of the input (best guess first), exact
    orthonormality, and finite orthonormal output for duplicate / zero rows."""
    from jaxscale.norms.power import _orthonormal_rows

    x = jax.random.normal(jax.random.key(0), (5, 300))
    q = np.asarray(_orthonormal_rows(x), np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(5), atol=1e-6)
    xs = np.asarray(x, np.float64)
    for j in range(5):  # rows 0..j of x lie in span(q[0..j])
        resid = xs[: j + 1] - (xs[: j + 1] @ q[: j + 1].T) @ q[: j + 1]
        assert np.abs(resid).max() < 1e-4 * np.abs(xs).max(), j
    np.testing.assert_allclose(np.abs(q[0]), np.abs(xs[0]) / np.linalg.norm(xs[0]), atol=1e-6)
    bad = jnp.stack([x[0], x[0], jnp.zeros(300), 2 * x[1], x[1] + 1e-9])
    qb = np.asarray(_orthonormal_rows(bad), np.float64)
    assert np.isfinite(qb).all()
    np.testing.assert_allclose(qb @ qb.T, np.eye(5), atol=1e-5)


def _qr_operand_shapes(jaxpr) -> list[tuple[int, ...]]:
    """Operand shapes of every QR-like equation in ``jaxpr``, sub-jaxprs (scan, jit, cond,
    custom_vmap_call, ...) included."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in {"qr", "geqrf", "geqp3", "householder_product"}:
            shapes.append(tuple(eqn.invars[0].aval.shape))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += _qr_operand_shapes(inner)
    return shapes


def test_in_step_norms_use_no_batched_lapack_qr():
    """Several *batched* LAPACK QRs in one program deadlocked XLA:CPU (jax 0.10.2); the vmapped
    norm update, Lanczos refresh and init may hold QRs only unbatched (2-D operand), each mapped
    over the seeds by ``_orthonormal_rows``'s vmap rule."""
    layers, params = cnn_model(0)
    norms = N("cnn", layers, "paper", krylov_dim=8)
    state = init_jit(norms, params, jax.random.PRNGKey(0))
    stack = lambda t: jax.tree.map(lambda a: jnp.stack([a, a]), t)  # noqa: E731
    upd = jax.make_jaxpr(jax.vmap(norms.update))(stack(params), stack(state))
    ref = jax.make_jaxpr(jax.vmap(norms.read))(stack(params), stack(state))
    ini = jax.make_jaxpr(jax.vmap(norms.init))(
        stack(params), jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)]))
    # nested vmap (seeds x devices-as-batch) must also stay unbatched
    twice = jax.make_jaxpr(jax.vmap(jax.vmap(norms.update)))(stack(stack(params)), stack(stack(state)))
    import re

    for name, jaxpr in (("update", upd), ("refresh", ref), ("init", ini), ("nested", twice)):
        prims = set(re.findall(r"= ([a-z_0-9]+)\[", str(jaxpr)))
        assert "eigh" in prims, (name, prims)  # the primitive names are parsed
        shapes = _qr_operand_shapes(jaxpr.jaxpr)
        assert shapes, name  # the update orthonormalises its blocks: a QR is found
        assert all(len(s) == 2 for s in shapes), (name, shapes)


def test_orthonormal_rows_vmap_rule_batches_the_qr_off_cpu(monkeypatch):
    """Off XLA:CPU the vmap rule keeps ONE batched QR (a loop of S tiny QRs per layer per step would
    be launch-bound on a GPU); on CPU it maps unbatched ones. Same values either way."""
    from jaxscale.norms import power

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 50))
    f = jax.vmap(power._orthonormal_rows)
    assert power._map_qr_over_batch("cpu") and not power._map_qr_over_batch("gpu")
    on_cpu = f(x)
    assert all(len(s) == 2 for s in _qr_operand_shapes(jax.make_jaxpr(f)(x).jaxpr))
    np.testing.assert_allclose(on_cpu, jnp.stack([power._orthonormal_rows(a) for a in x]), rtol=1e-5, atol=1e-6)
    # another shape: jax caches the traced rule per shape
    y = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 40))
    ref = jnp.stack([power._orthonormal_rows(a) for a in y])
    monkeypatch.setattr(power, "_map_qr_over_batch", lambda backend=None: False)
    assert [len(s) for s in _qr_operand_shapes(jax.make_jaxpr(f)(y).jaxpr)] == [3]  # one batched QR
    np.testing.assert_allclose(f(y), ref, rtol=1e-5, atol=1e-6)


def test_vmapped_qr_orthonormalisation_does_not_hang():
    """The XLA:CPU deadlock repro (6 QRs of [8, 4, 32768] batched in one program, hung on the 2nd
    call) runs many times through ``_orthonormal_rows``'s vmap rule, in a subprocess with a timeout
    so that a regression fails instead of hanging the suite."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import jax, jax.numpy as jnp
        from jaxscale.norms.power import _orthonormal_rows
        f = jax.jit(jax.vmap(lambda xs: [_orthonormal_rows(x) for x in xs]))
        xs = [jax.random.normal(jax.random.PRNGKey(i), (8, 4, 32768)) for i in range(6)]
        for _ in range(8):
            out = f(xs)
        q = out[0][3]
        err = float(jnp.max(jnp.abs(q @ q.T - jnp.eye(4))))
        assert err < 1e-5, err
        print("ok", err)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
