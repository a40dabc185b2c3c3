"""Models: PROTOCOL.md §2 architectures, parameter counts, traced weight layers, inits, forward passes.

The paper-sized models are only ever traced abstractly (``jax.eval_shape``), so they cost no FLOPs;
anything that initialises or runs for real uses the small ``tiny``/``digits`` presets.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn

from jaxscale.models.conv import Conv2D
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jaxscale.errors import UsageError
from jaxscale.models import FAMILIES, PRESETS, build_model, trace_layers
from jaxscale.models import init as I

# dataset → (input_shape HWC, classes)
DATASETS = {
    "mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "digits": ((8, 8, 1), 10),
}

# PROTOCOL §2.1–2.3 tables (#params incl. biases; BN running statistics excluded).
PAPER_PARAMS = {
    ("cnn", "mnist"): 12_943_370,
    ("cnn", "cifar10"): 16_876_106,
    ("cnn", "cifar100"): 35_682_532,
    ("resnet", "mnist"): 701_178,
    ("resnet", "cifar10"): 11_173_962,
    ("resnet", "cifar100"): 21_328_292,
    ("vit", "mnist"): 803_338,
    ("vit", "cifar10"): 2_693_578,
    ("vit", "cifar100"): 4_794_212,
}

# Number of matrices in the official norm code (PROTOCOL §2, §5).
PAPER_NORM_MATRICES = {
    ("cnn", "mnist"): 5, ("cnn", "cifar10"): 5, ("cnn", "cifar100"): 7,
    ("resnet", "mnist"): 2, ("resnet", "cifar10"): 2, ("resnet", "cifar100"): 2,
    ("vit", "mnist"): 26, ("vit", "cifar10"): 38, ("vit", "cifar100"): 38,
}


@functools.lru_cache(maxsize=None)
def abstract(family: str, preset: str):
    """(spec, abstract variables) of a preset on its dataset's shape; no FLOPs spent."""
    shape, classes = DATASETS[preset]
    spec = build_model(family, preset, input_shape=shape, num_classes=classes)
    return spec, jax.eval_shape(spec.init, jax.random.key(0))


def jitted_apply(spec):
    """``spec.apply`` compiled once (eager op-by-op dispatch costs seconds on this CPU)."""
    return jax.jit(spec.apply, static_argnames="train")


TINY_SHAPE, TINY_CLASSES = (6, 6, 2), 3


@functools.lru_cache(maxsize=None)
def tiny_model(family: str):
    """(spec, variables from key 0, jitted apply) of the ``tiny`` preset; shared so each compiles once."""
    spec = build_model(family, "tiny", input_shape=TINY_SHAPE, num_classes=TINY_CLASSES)
    return spec, spec.init(jax.random.key(0)), jitted_apply(spec)


def matrix_shapes(spec, params, paper_only=True):
    return [
        tuple(jax.eval_shape(layer.matrix, params).shape)
        for layer in spec.layers if layer.in_paper or not paper_only
    ]


# ---------------------------------------------------------------------------------------------------
# Architecture: counts, traced layers


@pytest.mark.parametrize("family,preset", sorted(PAPER_PARAMS))
def test_param_count_matches_protocol(family, preset):
    spec, variables = abstract(family, preset)
    n = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))
    assert n == PAPER_PARAMS[(family, preset)]  # PyTorch's parameters(): BN running statistics excluded


@pytest.mark.parametrize("family,preset", sorted(PAPER_NORM_MATRICES))
def test_number_of_paper_norm_matrices(family, preset):
    spec, _ = abstract(family, preset)
    assert sum(layer.in_paper for layer in spec.layers) == PAPER_NORM_MATRICES[(family, preset)]


def test_cnn_matrix_shapes_match_protocol():
    expected = {
        "mnist": [(32, 9), (64, 288), (128, 576), (512, 25088), (10, 512)],
        "cifar10": [(32, 27), (64, 288), (128, 576), (512, 32768), (10, 512)],
        "cifar100": [(64, 27), (128, 576), (256, 1152), (512, 2304), (1024, 32768), (512, 1024), (100, 512)],
    }
    for preset, shapes in expected.items():
        spec, variables = abstract("cnn", preset)
        assert matrix_shapes(spec, variables["params"]) == shapes, preset


def test_resnet_paper_layers_are_stem_and_fc_only():
    expected = {"mnist": [(16, 9), (10, 128)], "cifar10": [(64, 27), (10, 512)], "cifar100": [(64, 27), (100, 512)]}
    for preset, shapes in expected.items():
        spec, variables = abstract("resnet", preset)
        assert [l.name for l in spec.layers if l.in_paper] == ["stem_conv", "fc"]
        assert matrix_shapes(spec, variables["params"]) == shapes, preset
    # all convs are still traced: ResNet-18 = stem + 16 block convs + 3 shortcut convs + fc
    spec, variables = abstract("resnet", "cifar10")
    all_shapes = matrix_shapes(spec, variables["params"], paper_only=False)
    assert len(all_shapes) == 21
    assert all_shapes[1:4] == [(64, 576), (64, 576), (64, 576)]  # stage0 block0 conv1, conv2; block1 conv1
    first_shortcut = next(l for l in spec.layers if "shortcut" in l.name)
    assert first_shortcut.name == "stage1_block0/shortcut_conv"
    assert first_shortcut.stride == (2, 2) and first_shortcut.input_hw == (32, 32)
    assert jax.eval_shape(first_shortcut.matrix, variables["params"]).shape == (128, 64)


def test_vit_matrix_shapes_and_order():
    spec, variables = abstract("vit", "mnist")
    d = 128
    block = [(d, d)] * 4 + [(512, d), (d, 512)]
    assert matrix_shapes(spec, variables["params"]) == [(d, 49)] + block * 4 + [(10, d)]
    names = [l.name for l in spec.layers[1:7]]
    assert names == [f"block0/attn/{n}" for n in "qkvo"] + ["block0/fc1", "block0/fc2"]
    assert [l.out_slice for l in spec.layers[1:4]] == [(0, d), (d, 2 * d), (2 * d, 3 * d)]
    spec, variables = abstract("vit", "cifar100")
    assert matrix_shapes(spec, variables["params"])[0] == (256, 48)
    assert spec.layers[0].stride == (4, 4) and spec.layers[0].input_hw == (32, 32)


@pytest.mark.parametrize("family", FAMILIES)
def test_traced_paths_resolve_to_kernels(family):
    spec, variables = abstract(family, "cifar10")
    assert spec.has_batch_stats == ("batch_stats" in variables) == (family == "resnet")
    for l in spec.layers:  # every traced path resolves to a kernel of the right rank
        assert len(jax.eval_shape(l.kernel, variables["params"]).shape) == (4 if l.kind == "conv" else 2)


@pytest.mark.parametrize("conv,hw", [
    (nn.Conv(5, (3, 3), strides=2, padding="SAME"), (7, 8)),
    (nn.Conv(5, (3, 3), padding="VALID"), (6, 6)),
    (nn.Conv(5, (4, 4), strides=(2, 1), padding=1), (9, 6)),
    (nn.Conv(5, (3, 2), padding=((2, 0), (1, 1))), (5, 5)),
    (Conv2D(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))), (8, 8)),
], ids=["same-s2", "valid", "int-pad", "asym", "Conv2D"])
def test_traced_conv_geometry_is_the_module_s_own(conv, hw):
    """A traced conv's (input_hw, stride, padding) reproduce the module's own output exactly: the
    norms' operator on that geometry is the layer's linear map."""
    from jaxscale.norms.power import conv_operator

    x = jax.random.normal(jax.random.key(1), (1, *hw, 3))
    (layer,) = trace_layers(conv, x)
    assert layer.kind == "conv" and layer.input_hw == hw and layer.path == ("kernel",)
    variables = conv.init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]
    bias_free = {"params": {"kernel": kernel, "bias": jnp.zeros(5)}}
    apply, _ = conv_operator(kernel, (*hw, 3), layer.stride, layer.padding)
    np.testing.assert_allclose(apply(x[0]), conv.apply(bias_free, x)[0], rtol=1e-5, atol=1e-5)


def test_trace_layers_of_a_user_module():
    """Dense and Conv calls in call order, named by module path; unsupported convs are refused."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="c")(x))
            x = nn.Dense(6, name="proj")(x)  # applied per pixel
            return nn.Dense(2, name="out")(x.reshape(x.shape[0], -1))

    layers = trace_layers(Net(), jnp.zeros((1, 5, 5, 2)))
    assert [(l.name, l.kind, l.path) for l in layers] == [
        ("c", "conv", ("c", "kernel")), ("proj", "dense", ("proj", "kernel")), ("out", "dense", ("out", "kernel"))]
    with pytest.raises(UsageError, match="not a plain 2-D convolution"):
        trace_layers(nn.Conv(4, (3, 3), kernel_dilation=2), jnp.zeros((1, 8, 8, 2)))


# ---------------------------------------------------------------------------------------------------
# Initialisation (PROTOCOL §2.4)


def _close(value, expected, rtol):
    assert abs(value - expected) <= rtol * abs(expected), (value, expected)


def test_init_helpers():
    assert I.fan_in((3, 3, 4, 8)) == 36 and I.fan_out((3, 3, 4, 8)) == 72
    assert I.fan_in((5, 7)) == 5 and I.fan_out((5, 7)) == 7
    x = I.trunc_normal(std=1.0, cut=0.5)(jax.random.key(0), (10_000,))
    assert float(jnp.max(jnp.abs(x))) <= 0.5 and float(jnp.std(x)) > 0.25  # truncated, not rescaled
    y = I.scaled(I.uniform(2.0), 0.25)(jax.random.key(1), (10_000,))
    assert 0.45 < float(jnp.max(jnp.abs(y))) <= 0.5


def test_cnn_init_pytorch_uniform_weights_scaled_biases_not():
    f = 0.3
    spec = build_model("cnn", "digits", input_shape=(8, 8, 1), num_classes=10, init_factor=f)
    params = spec.init(jax.random.key(0))["params"]
    for layer in spec.layers:
        w = np.asarray(layer.kernel(params))
        bias = np.asarray(params[layer.path[0]]["bias"])
        bound = 1 / math.sqrt(I.fan_in(w.shape))
        assert np.max(np.abs(w)) <= f * bound
        _close(np.std(w), f * bound / math.sqrt(3), 0.1)
        assert np.max(np.abs(bias)) <= bound
    fc_bias = np.asarray(params["fc0"]["bias"])  # 128 draws from U(±1/√512): well above the scaled bound
    assert np.max(np.abs(fc_bias)) > 2 * f / math.sqrt(512)


def test_resnet_init_kaiming_fan_out_and_fc():
    f = 0.5
    spec = build_model("resnet", "digits", input_shape=(8, 8, 1), num_classes=10, init_factor=f)
    variables = spec.init(jax.random.key(0))
    params = variables["params"]
    for layer in spec.layers[:-1]:
        w = np.asarray(layer.kernel(params))
        if w.size >= 1000:
            _close(np.std(w), f * math.sqrt(2 / I.fan_out(w.shape)), 0.1)
    fc = np.asarray(params["fc"]["kernel"])
    _close(np.std(fc), 0.01 * f, 0.15)
    assert np.all(np.asarray(params["fc"]["bias"]) == 0)
    bn = params["stage1_block0"]["shortcut_bn"]
    assert np.all(np.asarray(bn["scale"]) == 1) and np.all(np.asarray(bn["bias"]) == 0)
    stats = variables["batch_stats"]["stem_bn"]
    assert np.all(np.asarray(stats["mean"]) == 0) and np.all(np.asarray(stats["var"]) == 1)


def test_vit_head_init():
    f, d, p = 0.1, 64, 4
    spec = build_model("vit", "digits", input_shape=(8, 8, 1), num_classes=10, init_factor=f,
                       dim=d, heads=2, mlp_dim=128, depth=1, patch=p)
    params = spec.init(jax.random.key(0))["params"]
    blk = params["block0"]
    in_proj = np.asarray(blk["attn"]["in_proj"]["kernel"])
    bound = math.sqrt(6 / (d + 3 * d))  # xavier over the stacked (3D × D) matrix, NOT scaled
    assert in_proj.shape == (d, 3 * d) and np.max(np.abs(in_proj)) <= bound
    _close(np.std(in_proj), bound / math.sqrt(3), 0.05)
    for name, w in [("fc1", blk["fc1"]["kernel"]), ("fc2", blk["fc2"]["kernel"]),
                    ("out_proj", blk["attn"]["out_proj"]["kernel"])]:
        xavier_std = math.sqrt(6 / sum(w.shape)) / math.sqrt(3)
        _close(float(np.std(w)), f * xavier_std, 0.1)
    _close(float(np.std(params["patch_embed"]["kernel"])), f * math.sqrt(2 / (d * p * p)), 0.1)
    tokens = np.concatenate([np.ravel(params["cls_token"]), np.ravel(params["pos_embed"])])
    _close(np.std(tokens), 0.02, 0.15)  # not scaled by the factor
    for bias in [blk["attn"]["in_proj"]["bias"], blk["fc1"]["bias"], params["head"]["bias"],
                 params["patch_embed"]["bias"], blk["ln1"]["bias"]]:
        assert np.all(np.asarray(bias) == 0)
    assert np.all(np.asarray(params["ln_f"]["scale"]) == 1)


def test_vit_old_init():
    d = 64
    spec = build_model("vit", "digits", input_shape=(8, 8, 1), num_classes=10, init="old",
                       dim=d, heads=2, mlp_dim=128, depth=1)
    params = spec.init(jax.random.key(0))["params"]
    blk = params["block0"]
    for w in [blk["fc1"]["kernel"], blk["fc2"]["kernel"], params["patch_embed"]["kernel"]]:
        _close(float(np.std(w)), 0.02, 0.1)
    _close(float(np.std(blk["attn"]["in_proj"]["kernel"])), math.sqrt(6 / (4 * d)) / math.sqrt(3), 0.05)


@pytest.mark.parametrize("family", FAMILIES)
def test_init_is_deterministic_in_the_key(family):
    spec, a, _ = tiny_model(family)
    b, c = (spec.init(jax.random.key(k)) for k in (0, 1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(spec.layers[0].kernel(a["params"]), spec.layers[0].kernel(c["params"]))


# ---------------------------------------------------------------------------------------------------
# Forward passes


def test_cnn_flattens_in_nchw_order():
    """Channel c is constant c+1 after conv+ReLU; an identity head exposes the flatten order."""
    spec = build_model("cnn", "tiny", input_shape=(2, 2, 1), num_classes=12,
                       convs=(3,), pool_every=5, mlp=())
    fwd = jitted_apply(spec)
    params = jax.tree_util.tree_map(np.asarray, spec.init(jax.random.key(0))["params"])
    params["conv0"] = {"kernel": np.zeros_like(params["conv0"]["kernel"]), "bias": np.array([1.0, 2.0, 3.0])}
    params["head"] = {"kernel": np.eye(12, dtype=np.float32), "bias": np.zeros(12, np.float32)}
    logits, _ = fwd({"params": params}, jnp.zeros((1, 2, 2, 1)), train=False)
    np.testing.assert_array_equal(np.asarray(logits)[0], [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])


def _torch_conv(x, w_matrix, bias, k, stride, pad):
    """PyTorch-semantics conv from the (C_out, C_in·k·k) matrix; x NHWC numpy → NHWC."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, h, w, c = xp.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    cols = np.empty((b, ho, wo, c, k, k))  # im2col in PyTorch's (C_in, kh, kw) order
    for i in range(k):
        for j in range(k):
            cols[..., i, j] = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
    return cols.reshape(b, ho, wo, -1) @ w_matrix.T + bias


def _bias(params, layer):
    bias = params
    for key in layer.path[:-1] + ("bias",):
        bias = bias[key]
    bias = np.asarray(bias, np.float64)
    return bias[slice(*layer.out_slice)] if layer.out_slice else bias


def test_cnn_forward_matches_numpy_reference():
    """The tiny CNN equals a NumPy forward built only from spec.layers' PyTorch-layout matrices."""
    spec, variables, fwd = tiny_model("cnn")
    assert spec.hyper["convs"] == (4, 8) and spec.hyper["pool_every"] == 2 and TINY_SHAPE == (6, 6, 2)
    params = variables["params"]
    x = np.asarray(jax.random.normal(jax.random.key(4), (2, 6, 6, 2)), np.float64)
    W = {l.name: np.asarray(l.matrix(params), np.float64) for l in spec.layers}
    B = {l.name: _bias(params, l) for l in spec.layers}
    h = np.maximum(_torch_conv(x, W["conv0"], B["conv0"], 3, 1, 1), 0)
    h = np.maximum(_torch_conv(h, W["conv1"], B["conv1"], 3, 1, 1), 0)
    h = h.reshape(2, 3, 2, 3, 2, 8).max(axis=(2, 4))  # 2×2/2 max-pool: 6×6 → 3×3
    h = h.transpose(0, 3, 1, 2).reshape(2, -1)  # NCHW flatten
    h = np.maximum(h @ W["fc0"].T + B["fc0"], 0)
    expected = h @ W["head"].T + B["head"]
    logits, _ = fwd({"params": params}, jnp.asarray(x, jnp.float32), train=False)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-5)


def test_vit_forward_matches_pytorch_semantics_reference():
    """NumPy nn.MultiheadAttention-style forward from spec.layers' Q/K/V/O matrices (heads = 2)."""
    spec, variables, fwd = tiny_model("vit")
    heads, d, n = spec.hyper["heads"], spec.hyper["dim"], 1 + 6 * 6  # patch 1: 36 tokens + cls
    assert heads == 2 and spec.hyper["patch"] == 1 and spec.hyper["depth"] == 1
    params = variables["params"]
    x = np.asarray(jax.random.normal(jax.random.key(6), (2, *TINY_SHAPE)), np.float64)
    W = {l.name: np.asarray(l.matrix(params), np.float64) for l in spec.layers}
    B = {l.name: _bias(params, l) for l in spec.layers}
    P = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)

    def ln(t, p):
        mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]

    tok = _torch_conv(x, W["patch_embed"], B["patch_embed"], 1, 1, 0).reshape(2, n - 1, d)  # row-major
    t = np.concatenate([np.broadcast_to(P["cls_token"], (2, 1, d)), tok], 1) + P["pos_embed"]
    h = ln(t, P["block0"]["ln1"])
    q, k, v = (h @ W[f"block0/attn/{n}"].T + B[f"block0/attn/{n}"] for n in "qkv")
    split = lambda a: a.reshape(2, n, heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
    s = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(d // heads)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ split(v)).transpose(0, 2, 1, 3).reshape(2, n, d)
    t = t + o @ W["block0/attn/o"].T + B["block0/attn/o"]
    m = ln(t, P["block0"]["ln2"]) @ W["block0/fc1"].T + B["block0/fc1"]
    m = 0.5 * m * (1 + erf(m / math.sqrt(2)))  # exact GELU
    t = t + m @ W["block0/fc2"].T + B["block0/fc2"]
    expected = ln(t, P["ln_f"])[:, 0] @ W["head"].T + B["head"]
    logits, _ = fwd({"params": params}, jnp.asarray(x, jnp.float32), train=False)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_shapes_train_and_eval(family):
    spec, variables, fwd = tiny_model(family)
    x = jax.random.normal(jax.random.key(1), (4, *TINY_SHAPE))
    for train in (True, False):
        logits, state = fwd(variables, x, train=train, rng=jax.random.key(2))
        assert logits.shape == (4, TINY_CLASSES) and logits.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(logits)))
        assert set(state) == ({"batch_stats"} if (train and family == "resnet") else set())
    assert spec.has_batch_stats == (family == "resnet") and not spec.has_dropout


def test_cnn_dropout_only_in_train_mode():
    spec = build_model("cnn", "tiny", input_shape=TINY_SHAPE, num_classes=TINY_CLASSES, dropout=0.5)
    assert spec.has_dropout and spec.hyper["dropout"] == 0.5
    fwd = jitted_apply(spec)
    variables = tiny_model("cnn")[1]  # dropout adds no parameters
    x = jax.random.normal(jax.random.key(1), (4, *TINY_SHAPE))
    ev1, _ = fwd(variables, x, train=False)
    ev2, _ = fwd(variables, x, train=False)
    tr1, _ = fwd(variables, x, train=True, rng=jax.random.key(7))
    tr2, _ = fwd(variables, x, train=True, rng=jax.random.key(8))
    tr1b, _ = fwd(variables, x, train=True, rng=jax.random.key(7))
    np.testing.assert_array_equal(ev1, ev2)
    np.testing.assert_array_equal(tr1, tr1b)
    assert not np.allclose(tr1, tr2) and not np.allclose(tr1, ev1)
    assert not build_model("cnn", "cifar10", input_shape=(32, 32, 3), num_classes=10).has_dropout
    assert build_model("cnn", "cifar100", input_shape=(32, 32, 3), num_classes=100).has_dropout


def test_resnet_batchnorm_pytorch_momentum_and_modes():
    spec, variables, fwd = tiny_model("resnet")
    x = jax.random.normal(jax.random.key(1), (4, *TINY_SHAPE)) + 0.5
    logits_train, state = fwd(variables, x, train=True)
    stem = jax.lax.conv_general_dilated(
        x, variables["params"]["stem_conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    new = state["batch_stats"]["stem_bn"]
    # PyTorch momentum 0.1: running = 0.9·old + 0.1·batch (old mean 0, old var 1; Flax uses biased var)
    np.testing.assert_allclose(new["mean"], 0.1 * jnp.mean(stem, (0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * jnp.var(stem, (0, 1, 2)), rtol=1e-4)
    logits_eval, eval_state = fwd(variables, x, train=False)
    assert eval_state == {}
    assert not np.allclose(logits_train, logits_eval)  # eval uses running, not batch, statistics
    # eval with the updated statistics differs from eval with the initial ones
    logits_eval2, _ = fwd({**variables, **state}, x, train=False)
    assert not np.allclose(logits_eval, logits_eval2)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_compute_keeps_float32_params_and_logits(family):
    _, variables, fwd32 = tiny_model(family)
    spec16 = build_model(family, "tiny", input_shape=TINY_SHAPE, num_classes=TINY_CLASSES, dtype="bfloat16")
    assert spec16.hyper["dtype"] == "bfloat16"
    abstract16 = jax.eval_shape(spec16.init, jax.random.key(0))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(abstract16))
    x = jax.random.normal(jax.random.key(1), (2, *TINY_SHAPE))
    l16, _ = jitted_apply(spec16)(variables, x, train=False)
    l32, _ = fwd32(variables, x, train=False)
    assert l16.dtype == jnp.float32
    np.testing.assert_allclose(l16, l32, atol=0.05 * float(jnp.max(jnp.abs(l32))) + 1e-3)


# ---------------------------------------------------------------------------------------------------
# Registry: presets, overrides, errors


def test_presets_and_overrides():
    assert set(PRESETS) == set(FAMILIES)
    for family in FAMILIES:
        assert {"mnist", "cifar10", "cifar100", "digits", "tiny"} <= set(PRESETS[family])
    spec = build_model("resnet", "digits", input_shape=(8, 8, 1), num_classes=10,
                       widths=[4, 8], blocks=[1, 2], init_factor=0.05)  # TOML gives lists
    assert spec.module.widths == (4, 8) and spec.hyper["blocks"] == (1, 2)
    assert spec.hyper["init_factor"] == 0.05 and spec.hyper["preset"] == "digits"
    assert PRESETS["resnet"]["digits"]["widths"] == (8, 16, 32, 64)  # presets are not mutated
    spec = build_model("vit", "tiny", input_shape=(7, 5, 3), num_classes=4)  # tiny: any shape
    variables = jax.eval_shape(spec.init, jax.random.key(0))
    logits, _ = jax.eval_shape(functools.partial(spec.apply, train=False), variables, jnp.ones((1, 7, 5, 3)))
    assert logits.shape == (1, 4)


@pytest.mark.parametrize("call,needle", [
    (dict(family="mlp"), "cnn, resnet, vit"),
    (dict(family="cnn", preset="imagenet"), "mnist, cifar10"),
    (dict(family="cnn", channels=(3,)), "convs, pool_every, mlp, dropout"),
    (dict(family="cnn", convs="32,64"), "convs="),
    (dict(family="cnn", convs=[32, 0]), "positive integers"),
    (dict(family="cnn", pool_every=True), "pool_every"),
    (dict(family="cnn", dropout=1.0), "dropout"),
    (dict(family="cnn", convs=(4, 4, 4, 4, 4, 4, 4, 4)), "max-pools"),
    (dict(family="cnn", init="old"), "choose one of head"),
    (dict(family="vit", init="xavier"), "head, old"),
    (dict(family="vit", patch=3), "patch=3"),
    (dict(family="vit", dim=10, heads=4), "heads"),
    (dict(family="resnet", widths=(4, 8)), "differ in length"),
    (dict(family="resnet", dtype=jnp.int32), "float32, bfloat16"),
    (dict(family="cnn", init_factor=0.0), "init_factor"),
    (dict(family="cnn", input_shape=(8, 8)), "input_shape"),
    (dict(family="cnn", num_classes=1), "num_classes"),
])
def test_bad_arguments_raise_usage_error(call, needle):
    kwargs = dict(input_shape=(8, 8, 1), num_classes=10)
    kwargs.update(call)
    family = kwargs.pop("family")
    preset = kwargs.pop("preset", "tiny")
    with pytest.raises(UsageError, match=None) as info:
        build_model(family, preset, **kwargs)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("hw", [(6, 6), (7, 5)])
def test_max_pool_2x2_equals_flax_max_pool_values_and_gradients(hw):
    """The reshape max-pool (fast on XLA:CPU) is flax's 2×2/2 VALID max-pool, odd sizes floored,
    gradient included (random inputs: no ties)."""
    from jaxscale.models.common import max_pool_2x2

    x = jax.random.normal(jax.random.key(0), (3, *hw, 4))
    ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
    np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)), np.asarray(ref(x)))
    w = jax.random.normal(jax.random.key(1), ref(x).shape)
    g = jax.grad(lambda v: jnp.sum(max_pool_2x2(v) * w))(x)
    g_ref = jax.grad(lambda v: jnp.sum(ref(v) * w))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g_ref))
