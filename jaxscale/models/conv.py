"""2-D convolution with a swappable implementation; parameters identical to ``flax.linen.Conv``.

``impl="xla"`` lowers to ``lax.conv_general_dilated`` (cuDNN / TPU convolutions: the right choice on
accelerators). ``impl="patches"`` writes the convolution as *patches × kernel*: the k×k shifted views of
the zero-padded input are concatenated along channels and multiplied by the kernel reshaped to
``(kh·kw·C_in, C_out)``. On XLA:CPU this matters twice (measured, see benchmarks/RESULTS.md):

* inside a ``while`` loop (``lax.scan`` over the steps of an epoch, ``lax.map`` over seeds) XLA:CPU
  runs the backward convolutions on a slow path (jax-ml/jax#12868: 20–80x slower than outside a
  loop); the patches form has only slices and matmuls, whose gradients are slices and matmuls;
* under ``jax.vmap`` over seeds a convolution becomes a grouped convolution, which XLA:CPU runs
  slowly; the patches form becomes one batched matmul.

Both implementations compute the same function with the same ``kernel [kh, kw, C_in, C_out]`` and
``bias [C_out]`` parameters, so checkpoints, norms and results do not depend on the choice.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "patches")
Padding = tuple[tuple[int, int], tuple[int, int]]


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
    """``"auto"`` -> ``"patches"`` on CPU, ``"xla"`` on GPU/TPU."""
    if impl != "auto":
        return impl
    return "patches" if (backend or jax.default_backend()) == "cpu" else "xla"


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


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding, impl: str) -> jax.Array:
    """NHWC convolution (cross-correlation, as PyTorch/flax) of ``x [B,H,W,C_in]`` with
    ``kernel [kh,kw,C_in,C_out]`` and explicit ``padding ((top,bottom),(left,right))``."""
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl != "patches":
        raise ValueError(f"unknown conv impl {impl!r}")
    kh, kw, cin, cout = kernel.shape
    return extract_patches(x, kh, kw, strides, padding) @ kernel.reshape(kh * kw * cin, cout)


class Conv2D(nn.Module):
    """Drop-in for ``nn.Conv`` with explicit padding and a choice of implementation (same param
    names, shapes, init calls and RNG streams as ``nn.Conv``)."""

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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv2d(x, kernel, tuple(self.strides), tuple(map(tuple, self.padding)), self.impl)
        return y + bias if bias is not None else y
