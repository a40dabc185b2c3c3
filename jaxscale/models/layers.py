"""A network's weight layers, found by tracing its Flax module once (:func:`trace_layers`), for the norms.

Norm formulas use PyTorch's ``(fan_out, fan_in)`` matrix layout; Flax stores a Dense kernel as
``(in, out)`` and a Conv kernel as ``(kh, kw, in, out)``, and :meth:`WeightLayer.matrix` converts
either (a conv kernel is flattened to ``(C_out, C_in·kh·kw)`` in PyTorch's (C_in, kh, kw) order).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxscale.errors import UsageError
from jaxscale.models.conv import Conv2D

LayerKind = Literal["dense", "conv"]


@dataclasses.dataclass(frozen=True)
class WeightLayer:
    """One weight matrix / conv kernel that enters the norms.

    Attributes:
      name: readable id, e.g. ``"conv0"``, ``"block2/attn/q"``.
      kind: ``"dense"`` (kernel ``(in, out)``) or ``"conv"`` (kernel ``(kh, kw, in, out)``).
      path: keys into the ``params`` pytree leading to the kernel array, e.g. ``("Conv_0", "kernel")``.
      out_slice: ``(start, stop)`` along the kernel's output (last) axis for a sub-block of a stacked
        kernel (ViT's Q/K/V inside one ``(D, 3D)`` in-projection); ``None`` = whole kernel.
      stride, padding, input_hw: conv only: explicit ``((top, bottom), (left, right))`` padding and the
        input feature map's ``(H, W)`` (for the conv's operator norm, ``bartlett`` convention).
      in_paper: whether the official norm code includes this layer (PROTOCOL §5; set by
        :func:`jaxscale.models.registry.paper_rule`).
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
        """PyTorch-layout ``(fan_out, fan_in)`` matrix of this layer (module docstring)."""
        w = self.kernel(params)
        if self.kind == "dense":
            return w.T
        kh, kw, cin, cout = w.shape
        return jnp.transpose(w, (3, 2, 0, 1)).reshape(cout, cin * kh * kw)


def _conv_layer(m: nn.Module, name: str, x_shape: tuple) -> WeightLayer:
    """The :class:`WeightLayer` of a 2-D ``nn.Conv`` / ``Conv2D`` call on an ``[..., H, W, C]`` input."""
    hw = tuple(x_shape[-3:-1])
    ksize = tuple(m.kernel_size) if not isinstance(m.kernel_size, int) else (m.kernel_size,) * 2
    if isinstance(m, Conv2D):
        return WeightLayer(name, "conv", m.path + ("kernel",), stride=tuple(m.strides),
                           padding=tuple(map(tuple, m.padding)), input_hw=hw)
    plain = all(getattr(m, a) in (None, 1, (1, 1)) for a in
                ("input_dilation", "kernel_dilation", "feature_group_count"))
    if len(ksize) != 2 or not plain or m.padding in ("CIRCULAR", "CAUSAL", "REFLECT"):
        raise UsageError(f"conv layer {name!r} is not a plain 2-D convolution (kernel {ksize}, padding "
                         f"{m.padding!r}, dilation or groups), which the norms do not measure; use a 2-D nn.Conv "
                         "with zero padding, no dilation and one group")
    stride = (1, 1) if m.strides is None else (
        (m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides))
    pad = nn.linear.canonicalize_padding(m.padding, 2)
    if isinstance(pad, str):
        pad = lax.padtype_to_pads(hw, ksize, stride, pad)
    return WeightLayer(name, "conv", m.path + ("kernel",), stride=stride,
                       padding=tuple(tuple(int(v) for v in p) for p in pad), input_hw=hw)


def trace(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[WeightLayer, ...], Any, bool]:
    """``(layers, variables, dropout)`` of ``module.init(key, *args, **kwargs)`` run abstractly
    (``jax.eval_shape``, no FLOPs) with every method call intercepted: :func:`trace_layers`' layers
    (named by module path, e.g. ``"block0/attn/in_proj"``), the init's ``jax.ShapeDtypeStruct`` pytree,
    and whether an ``nn.Dropout`` with a positive rate is called."""
    layers, dropout = [], []

    def record(next_fun, call_args, call_kwargs, context):
        m = context.module
        if context.method_name == "__call__":
            name = "/".join(m.path)
            if isinstance(m, nn.Dense):
                layers.append(WeightLayer(name, "dense", m.path + ("kernel",)))
            elif isinstance(m, (nn.Conv, Conv2D)):
                layers.append(_conv_layer(m, name, call_args[0].shape))
            elif isinstance(m, nn.Dropout) and m.rate > 0:
                dropout.append(name)
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *args)
    return tuple(layers), variables, bool(dropout)


def trace_layers(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[WeightLayer, ...]:
    """The weight layers of any (unbound) Flax module, for :class:`jaxscale.norms.Norms`, from an example
    call as for ``module.init(key, *args, **kwargs)`` (only shapes and dtypes are used).

    Every ``nn.Dense`` and 2-D ``nn.Conv`` (or :class:`jaxscale.models.conv.Conv2D`) call in call order
    (= network order), with its kernel path in ``params`` and for convs the input ``(H, W)``, stride and
    explicit padding it was called with. A module applied several times (shared weights) appears once
    per call, under the same name: give such layers distinct names before measuring.
    """
    return trace(module, *args, **kwargs)[0]
