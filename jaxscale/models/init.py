"""Initialisers of the official (PyTorch) code, in Flax's kernel layouts (PROTOCOL.md §2.4).

Each has Flax's signature ``init(key, shape, dtype) -> array`` and reads a Dense kernel as ``(in, out)``
and a Conv kernel as ``(kh, kw, in, out)``, with PyTorch's fans: ``fan_in = in·kh·kw``,
``fan_out = out·kh·kw``. The init factor multiplies selected *weights* (:func:`scaled`); biases, norms'
affine parameters, tokens and embeddings are never scaled.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]
zeros: Initializer = jax.nn.initializers.zeros


def fan_in(shape: Sequence[int]) -> int:
    return math.prod(shape[:-1])


def fan_out(shape: Sequence[int]) -> int:
    return shape[-1] * math.prod(shape[:-2])


def _draw(sample: Callable[[jax.Array, tuple[int], Any], jax.Array], key, shape, dtype) -> jax.Array:
    """``prod(shape)`` iid draws of ``sample``, taken as the head of a power-of-two-sized draw.

    Why: XLA:CPU compiles a separate random-bit kernel for every distinct draw shape (seconds each with
    jax's default partitionable threefry), so a model init with dozens of parameter shapes took tens of
    seconds to compile. Rounding sizes up to powers of two leaves a handful of kernels (ResNet ``tiny``
    init: 25 s → 5 s here). The values are still iid with the intended distribution.
    """
    n = math.prod(shape)
    size = 1 << max(0, (n - 1).bit_length())
    return sample(key, (size,), dtype)[:n].reshape(shape)


def uniform(bound: float) -> Initializer:
    """U(−bound, bound)."""
    return lambda key, shape, dtype=jnp.float32: bound * _draw(
        lambda k, s, d: jax.random.uniform(k, s, d, -1.0, 1.0), key, shape, dtype)


def normal(std: float) -> Initializer:
    """N(0, std²), untruncated."""
    return lambda key, shape, dtype=jnp.float32: std * _draw(jax.random.normal, key, shape, dtype)


def trunc_normal(std: float = 0.02, cut: float = 2.0) -> Initializer:
    """``torch.nn.init.trunc_normal_(std=std, a=-cut, b=cut)``: N(0, std²) cut at ±``cut`` in *absolute*
    value (at the official std 0.02 and cut 2, 100 standard deviations: truncated anyway, to be exact)."""
    return lambda key, shape, dtype=jnp.float32: std * _draw(
        lambda k, s, d: jax.random.truncated_normal(k, -cut / std, cut / std, s, d), key, shape, dtype)


def torch_default_kernel(key, shape, dtype=jnp.float32) -> jax.Array:
    """PyTorch's default ``nn.Linear``/``nn.Conv2d`` weight init: U(±1/√fan_in) (kaiming-uniform with
    a = √5 reduces to exactly this bound)."""
    return uniform(1.0 / math.sqrt(fan_in(shape)))(key, shape, dtype)


def torch_default_bias(layer_fan_in: int) -> Initializer:
    """PyTorch's default bias init: U(±1/√fan_in) of the layer's *weight* (a bias alone cannot know it)."""
    return uniform(1.0 / math.sqrt(layer_fan_in))


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32) -> jax.Array:
    """``kaiming_normal_(mode='fan_out', nonlinearity='relu')``: N(0, 2/fan_out)."""
    return normal(math.sqrt(2.0 / fan_out(shape)))(key, shape, dtype)


def xavier_uniform(key, shape, dtype=jnp.float32) -> jax.Array:
    """``xavier_uniform_``: U(±√(6/(fan_in+fan_out)))."""
    return uniform(math.sqrt(6.0 / (fan_in(shape) + fan_out(shape))))(key, shape, dtype)


def scaled(init: Initializer, factor: float) -> Initializer:
    """``init`` multiplied by the init factor; ``factor == 1`` returns ``init`` unchanged."""
    if factor == 1.0:
        return init
    return lambda key, shape, dtype=jnp.float32: factor * init(key, shape, dtype)
