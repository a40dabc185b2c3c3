"""What a model declares about its weights, for the norms module.

A model exposes an ordered tuple of :class:`WeightLayer` (network order, input to output). The norms
module turns that list into every complexity measure without knowing the architecture.

Layout conventions (PROTOCOL.md): norm formulas use PyTorch's ``(fan_out, fan_in)`` matrix layout. Flax
stores a Dense kernel as ``(in, out)`` and a Conv kernel as ``(kh, kw, in, out)``;
:meth:`WeightLayer.matrix` converts either to ``(fan_out, fan_in)`` (a conv kernel is flattened to
``(C_out, C_in*kh*kw)`` in PyTorch's (C_in, kh, kw) order).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import jax.numpy as jnp

LayerKind = Literal["dense", "conv"]


@dataclasses.dataclass(frozen=True)
class WeightLayer:
    """One weight matrix / conv kernel that enters the norms.

    Attributes:
      name: readable id, e.g. ``"conv0"``, ``"block2/attn/q"``.
      kind: ``"dense"`` (kernel ``(in, out)``) or ``"conv"`` (kernel ``(kh, kw, in, out)``).
      path: keys into the ``params`` pytree leading to the kernel array,
        e.g. ``("Conv_0", "kernel")``.
      out_slice: for a sub-block of a stacked kernel (ViT's Q/K/V inside one ``(D, 3D)`` in-projection):
        ``(start, stop)`` along the *output* axis (last axis of the flax kernel). ``None`` = whole kernel.
      stride, padding: conv only; padding as explicit ``((top, bottom), (left, right))``.
      input_hw: conv only; spatial shape ``(H, W)`` of this layer's input feature map (for the true
        operator norm of the convolution in the ``bartlett`` convention).
      in_paper: whether the official code's norm functions include this layer (PROTOCOL §5; e.g. the
        ResNet code only sees the stem conv and the fc layer).
    """

    name: str
    kind: LayerKind
    path: tuple[str, ...]
    out_slice: Optional[tuple[int, int]] = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    input_hw: Optional[tuple[int, int]] = None
    in_paper: bool = True

    def kernel(self, params: Any) -> jnp.ndarray:
        """The flax kernel of this layer (sliced along the output axis if ``out_slice``)."""
        x = params
        for k in self.path:
            x = x[k]
        if self.out_slice is not None:
            a, b = self.out_slice
            x = x[..., a:b]
        return x

    def matrix(self, params: Any) -> jnp.ndarray:
        """PyTorch-layout ``(fan_out, fan_in)`` matrix of this layer."""
        w = self.kernel(params)
        if self.kind == "dense":
            return w.T
        kh, kw, cin, cout = w.shape
        return jnp.transpose(w, (3, 2, 0, 1)).reshape(cout, cin * kh * kw)
