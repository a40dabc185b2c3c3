"""2-D convolution with a swappable implementation; parameters identical to ``flax.linen.Conv``.

``impl="xla"`` lowers to ``lax.conv_general_dilated`` (cuDNN / TPU convolutions: the right choice on
accelerators). ``impl="patches"`` writes the convolution as *patches × kernel*: the k×k shifted views of
the zero-padded input are concatenated along channels and multiplied by the kernel reshaped to
``(kh·kw·C_in, C_out)``. On XLA:CPU this matters twice (measured, see benchmarks/RESULTS.md):

* inside a ``while`` loop (``lax.scan`` over the steps of an epoch, a ``fori_loop`` over seeds) XLA:CPU
  runs the backward convolutions on a slow path (jax-ml/jax#12868: 20–80x slower than outside a
  loop); the patches form has only slices and matmuls, whose gradients are slices and matmuls;
* under ``jax.vmap`` over seeds a convolution becomes a grouped convolution, which XLA:CPU runs
  slowly; the patches form becomes one batched matmul.

Both implementations compute the same function with the same ``kernel [kh, kw, C_in, C_out]`` and
``bias [C_out]`` parameters, so checkpoints, norms and results do not depend on the choice.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], tuple[int, int]]


def resolve_conv_impl(impl: str) -> str:
    """``"auto"`` -> ``"patches"`` on CPU, ``"xla"`` on GPU/TPU."""
    return impl if impl != "auto" else "patches" if jax.default_backend() == "cpu" else "xla"


def extract_patches(x: jax.Array, kh: int, kw: int, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """``x [B, H, W, C]`` -> ``[B, H_out, W_out, kh·kw·C]``, feature order (i, j, c) — the order of
    ``kernel.reshape(kh*kw*C, C_out)`` for a flax ``(kh, kw, C, C_out)`` kernel."""
    sh, sw = strides
    if (kh, kw) == (sh, sw) and padding == ((0, 0), (0, 0)):
        # non-overlapping patches (ViT patch embedding): a reshape, no copies of shifted views
        b, h, w, c = x.shape
        ho, wo = h // kh, w // kw
        x = x[:, : ho * kh, : wo * kw].reshape(b, ho, kh, wo, kw, c)
        return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, ho, wo, kh * kw * c)
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    _, h, w, _ = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    views = [x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
             for i in range(kh) for j in range(kw)]
    return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


#: Default bytes of im2col patches per chunk of images (``Conv2D.chunk_bytes``): ``impl="patches"`` runs
#: a batch through the convolution (forward and backward) in chunks whose patch matrix stays in cache,
#: instead of streaming the whole batch's (151 MB for the CIFAR-10 CNN's second layer at batch 128)
#: through memory three times. On the 2-core Zen 4 CPU, fwd+bwd inside ``lax.scan``, chunks of 2-5 MB
#: were 1.2-1.4x faster than the whole batch; 1 image or >= 10 MB lost that (benchmarks/RESULTS.md).
PATCH_CHUNK_BYTES = 3 * 2**20


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding, impl: str,
           chunk_bytes: int = PATCH_CHUNK_BYTES, precision: Any = None) -> jax.Array:
    """NHWC convolution (cross-correlation, as PyTorch/flax) of ``x [B,H,W,C_in]`` with ``kernel
    [kh,kw,C_in,C_out]``, explicit ``padding ((top,bottom),(left,right))`` and matmul ``precision``.

    ``chunk_bytes`` (``impl="patches"`` only): the batch is convolved in chunks whose patch matrix
    holds at most this many bytes (at least one image a chunk; ``0`` = the whole batch at once).
    Same values either way (to float rounding of the kernel gradient's sum over chunks): only speed
    and memory change (tune it to a CPU's cache; the FLOP count uses 0: XLA's cost analysis counts a
    loop body once).
    """
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
    if impl != "patches":
        raise ValueError(f"unknown conv impl {impl!r}")
    kh, kw, cin, cout = kernel.shape
    chunk = _images_per_chunk(x, kernel, strides, padding, chunk_bytes)
    if chunk >= x.shape[0]:
        return jnp.matmul(extract_patches(x, kh, kw, strides, padding), kernel.reshape(kh * kw * cin, cout),
                          precision=precision)
    return _chunked_patches_conv(x, kernel, tuple(strides), tuple(map(tuple, padding)), chunk, precision)


def _images_per_chunk(x, kernel, strides, padding, chunk_bytes: int) -> int:
    """Largest divisor of the batch whose patches fit ``chunk_bytes``; the whole batch when the
    patches are not copies (1×1 kernels, non-overlapping patches) or ``chunk_bytes`` is 0."""
    b, h, w, _ = x.shape
    kh, kw, cin, _ = kernel.shape
    if chunk_bytes <= 0 or kh * kw == 1 or ((kh, kw) == tuple(strides) and padding == ((0, 0), (0, 0))):
        return b
    ho = (h + sum(padding[0]) - kh) // strides[0] + 1
    wo = (w + sum(padding[1]) - kw) // strides[1] + 1
    per_image = max(1, ho * wo * kh * kw * cin * jnp.dtype(x.dtype).itemsize)
    most = max(1, chunk_bytes // per_image)
    return max(d for d in range(1, min(b, most) + 1) if b % d == 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _chunked_patches_conv(x, kernel, strides, padding, chunk, precision):
    """``conv2d(..., "patches")`` over chunks of ``chunk`` images (``lax.map``). The custom VJP
    recomputes each chunk's patches in the backward pass instead of saving the whole batch's: the
    kernel gradient accumulates ``patches^T @ dy`` chunk by chunk (in float32), and the input
    gradient is the patches' transpose (col2im) of ``dy @ kernel^T``, chunk by chunk."""
    kh, kw, cin, cout = kernel.shape
    km = kernel.reshape(kh * kw * cin, cout)
    xs = x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])
    y = jax.lax.map(lambda xc: jnp.matmul(extract_patches(xc, kh, kw, strides, padding), km, precision=precision), xs)
    return y.reshape((x.shape[0],) + y.shape[2:])


def _chunked_fwd(x, kernel, strides, padding, chunk, precision):
    return _chunked_patches_conv(x, kernel, strides, padding, chunk, precision), (x, kernel)


def _chunked_bwd(strides, padding, chunk, precision, res, dy):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    km = kernel.reshape(kh * kw * cin, cout)
    xs = x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])
    dys = dy.reshape((dy.shape[0] // chunk, chunk) + dy.shape[1:])

    def one_chunk(dk, xd):
        xc, dyc = xd
        patches, to_input = jax.vjp(lambda a: extract_patches(a, kh, kw, strides, padding), xc)
        dk = dk + jnp.tensordot(patches, dyc, axes=((0, 1, 2), (0, 1, 2)), precision=precision,
                                preferred_element_type=jnp.float32)
        (dxc,) = to_input(jnp.matmul(dyc, km.T, precision=precision))
        return dk, dxc

    dk, dxs = jax.lax.scan(one_chunk, jnp.zeros(km.shape, jnp.float32), (xs, dys))
    return dxs.reshape(x.shape).astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_chunked_patches_conv.defvjp(_chunked_fwd, _chunked_bwd)


class Conv2D(nn.Module):
    """Drop-in for ``nn.Conv`` with explicit padding and a choice of implementation (same param
    names, shapes, init calls and RNG streams as ``nn.Conv``); ``precision``, ``chunk_bytes``: :func:`conv2d`."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding = ((0, 0), (0, 0))
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    impl: str = "xla"
    precision: Any = None
    chunk_bytes: int = PATCH_CHUNK_BYTES

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, tuple(self.strides), tuple(map(tuple, self.padding)), self.impl, self.chunk_bytes,
                   self.precision)
        return y + bias if bias is not None else y
