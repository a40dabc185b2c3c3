"""What the model families share: argument checks, the settings every module carries, the 2×2 max-pool."""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxscale.errors import UsageError
from jaxscale.models import init as I
from jaxscale.models.conv import PATCH_CHUNK_BYTES, Conv2D, Padding


def require(condition: bool, message: str) -> None:
    """Raise :class:`UsageError` with ``message`` (problem + fix, one line) unless ``condition``."""
    if not condition:
        raise UsageError(message)


class Net(nn.Module):
    """Base of every family's modules: parameters are float32, activations and matmuls run in ``dtype``
    at ``precision`` (registry.PRECISION_SETTINGS), convolutions by ``conv_impl`` in chunks of
    ``conv_chunk_bytes`` (:mod:`jaxscale.models.conv`); ``init_factor`` scales the protocol's weights."""

    init_factor: float = 1.0
    dtype: Any = jnp.float32
    conv_impl: str = "xla"
    precision: Any = None
    conv_chunk_bytes: int = PATCH_CHUNK_BYTES

    def _shared(self) -> dict[str, Any]:
        """These settings, for a submodule."""
        return dict(init_factor=self.init_factor, dtype=self.dtype, conv_impl=self.conv_impl,
                    precision=self.precision, conv_chunk_bytes=self.conv_chunk_bytes)

    def _conv(self, width: int, k: int, stride: int, padding: Padding, kernel_init: Callable, name: str,
              bias_init: Optional[Callable] = None) -> Conv2D:
        """A k×k conv, with a bias when ``bias_init`` is given."""
        return Conv2D(width, (k, k), strides=(stride, stride), padding=padding, use_bias=bias_init is not None,
                      kernel_init=kernel_init, bias_init=bias_init or I.zeros, dtype=self.dtype,
                      param_dtype=jnp.float32, impl=self.conv_impl, name=name, precision=self.precision,
                      chunk_bytes=self.conv_chunk_bytes)

    def _dense(self, width: int, kernel_init: Callable, name: str, bias_init: Callable = I.zeros) -> nn.Dense:
        return nn.Dense(width, kernel_init=kernel_init, bias_init=bias_init, dtype=self.dtype,
                        param_dtype=jnp.float32, name=name, precision=self.precision)


def max_pool_2x2(x):
    """2×2 max-pool with stride 2 and no padding (PyTorch ``MaxPool2d(2)``: odd sizes are floored).

    ``x``: ``[B, H, W, C]`` → ``[B, H // 2, W // 2, C]``, same values as ``flax.linen.max_pool(x, (2, 2),
    strides=(2, 2))``. Written as a reshape + max because XLA:CPU lowers the gradient of
    ``reduce_window`` to ``select_and_scatter`` with materialised index arrays: 22 % of a digits-CNN
    epoch in a profile, and the reshape form made one digits seed 1.44× faster (benchmarks/RESULTS.md).
    Gradients differ only at exact ties inside a window (split evenly here, to the first element
    there); after a ReLU such ties are zeros, whose gradient the ReLU discards either way.
    """
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))
