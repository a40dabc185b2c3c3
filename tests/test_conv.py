"""The patches convolution computes exactly what XLA's convolution computes (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.models import build_model
from jaxscale.models.conv import conv2d


@pytest.mark.parametrize(
    "shape,k,stride,pad",
    [
        ((2, 8, 8, 3), 3, 1, ((1, 1), (1, 1))),
        ((2, 9, 7, 4), 3, 2, ((1, 1), (1, 1))),  # odd sizes, stride 2
        ((2, 8, 8, 4), 1, 2, ((0, 0), (0, 0))),  # ResNet 1x1 shortcut
        ((2, 8, 8, 3), 4, 4, ((0, 0), (0, 0))),  # ViT patch embedding
        ((1, 6, 6, 2), 3, 1, ((0, 0), (0, 0))),  # valid
    ],
)
def test_patches_equals_xla_values_and_grads(shape, k, stride, pad):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (k, k, shape[-1], 5))
    f = lambda impl: (lambda x, w: conv2d(x, w, (stride, stride), pad, impl))
    np.testing.assert_allclose(f("patches")(x, w), f("xla")(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda impl: (lambda x, w: (f(impl)(x, w) ** 2).sum())
    gp = jax.grad(loss("patches"), argnums=(0, 1))(x, w)
    gx = jax.grad(loss("xla"), argnums=(0, 1))(x, w)
    for a, b in zip(gp, gx):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["cnn", "resnet", "vit"])
def test_models_same_function_with_either_impl(family):
    specs = {impl: build_model(family, "tiny", input_shape=(8, 8, 3), num_classes=10, conv_impl=impl)
             for impl in ("xla", "patches")}
    v = specs["xla"].init(jax.random.PRNGKey(1))
    v2 = specs["patches"].init(jax.random.PRNGKey(1))
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2)):  # same params, same init streams
        np.testing.assert_array_equal(a, b)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3))
    out = {impl: s.apply(v, x, train=True, rng=jax.random.PRNGKey(3))[0] for impl, s in specs.items()}
    np.testing.assert_allclose(out["patches"], out["xla"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "shape,k,stride,pad",
    [
        ((6, 8, 8, 3), 3, 1, ((1, 1), (1, 1))),   # chunks of 1, 2, 3 images
        ((5, 9, 7, 4), 3, 2, ((1, 1), (1, 1))),   # prime batch, odd sizes, stride 2
        ((6, 6, 6, 2), 3, 1, ((0, 0), (0, 0))),   # valid
    ],
)
def test_chunked_patches_equal_whole_batch_values_grads_and_vmap(shape, k, stride, pad):
    """``impl="patches"`` convolves big batches chunk by chunk (custom VJP recomputing patches):
    same values and gradients as the whole batch at once and as XLA's conv, also under ``vmap``."""
    from jaxscale.models.conv import _images_per_chunk

    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (k, k, shape[-1], 5))
    per_image = 4 * k * k * shape[-1] * ((shape[1] + sum(pad[0]) - k) // stride + 1) * (
        (shape[2] + sum(pad[1]) - k) // stride + 1)
    loss = lambda impl, cb: (lambda x, w: (jnp.tanh(conv2d(x, w, (stride, stride), pad, impl, chunk_bytes=cb)) ** 2).sum())  # noqa: E731
    ref = jax.value_and_grad(loss("xla", 0), argnums=(0, 1))(x, w)
    for images in (1, 2, 3):
        cb = images * per_image
        chunk = _images_per_chunk(x, w, (stride, stride), pad, cb)
        assert chunk <= images and shape[0] % chunk == 0
        got = jax.jit(jax.value_and_grad(loss("patches", cb), argnums=(0, 1)))(x, w)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        stack = lambda a: jnp.stack([a, 2 * a])  # noqa: E731
        vm = jax.vmap(jax.grad(loss("patches", cb), argnums=(0, 1)))(stack(x), stack(w))
        vr = jax.vmap(jax.grad(loss("xla", 0), argnums=(0, 1)))(stack(x), stack(w))
        for a, b in zip(jax.tree.leaves(vm), jax.tree.leaves(vr)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # whole batch when the patches fit, or when they are not copies (1x1 kernels)
    assert _images_per_chunk(x, w, (stride, stride), pad, 10**9) == shape[0]
    assert _images_per_chunk(x, w[:1, :1], (1, 1), ((0, 0), (0, 0)), 1) == shape[0]


def test_conv_module_fields_set_chunking_and_precision_in_the_traced_program():
    """``Conv2D.chunk_bytes`` and ``Conv2D.precision`` are module fields: they change the traced
    program (one image a chunk: a loop; the requested precision on every product, backward included)
    whatever context the caller traces in, and the chunking leaves the values unchanged."""
    from jaxscale.models.conv import Conv2D

    x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))

    def traced(**fields):
        conv = Conv2D(4, (3, 3), padding=((1, 1), (1, 1)), impl="patches", **fields)
        params = conv.init(jax.random.PRNGKey(1), x)
        loss = lambda p, x: (conv.apply(p, x) ** 2).sum()  # noqa: E731
        with jax.default_matmul_precision("bfloat16"):  # an ambient setting the fields override
            jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, x))
        return jaxpr, jax.grad(loss, argnums=(0, 1))(params, x)

    whole, g_whole = traced(chunk_bytes=0, precision=jax.lax.Precision.HIGHEST)
    one, g_one = traced(chunk_bytes=1, precision=jax.lax.Precision.HIGHEST)
    assert "scan" not in whole and "scan" in one  # whole batch vs one image a chunk
    for jaxpr in (whole, one):
        products = jaxpr.count("dot_general")
        assert products >= 3 and jaxpr.count("HIGHEST") >= products, jaxpr
    for a, b in zip(jax.tree.leaves(g_one), jax.tree.leaves(g_whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert "HIGHEST" not in traced(chunk_bytes=0)[0]
