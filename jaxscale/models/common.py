"""Small helpers shared by the model families: argument checks and the 2×2 max-pool."""

from __future__ import annotations

import jax.numpy as jnp

from jaxscale.errors import UsageError


def require(condition: bool, message: str) -> None:
    """Raise :class:`UsageError` with ``message`` (problem + fix, one line) unless ``condition``."""
    if not condition:
        raise UsageError(message)


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
