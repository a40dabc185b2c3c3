"""The paper's ResNet (BasicBlock, no stem max-pool) — PROTOCOL.md §2.2.

stem conv3×3 s1 p1 (no bias) + BN + ReLU; stages of widths ``widths`` with strides (1, 2, 2, …) and
``blocks[i]`` BasicBlocks each; global average pool; Linear (with bias) to the classes.

BatchNorm follows PyTorch's defaults: momentum 0.1 (Flax ``momentum=0.9``), eps 1e-5, γ = 1, β = 0, batch
statistics in train mode and running statistics in eval mode. One known difference: PyTorch updates the
running variance with the *unbiased* batch variance (× n/(n−1), n = B·H·W per channel), Flax with the
biased one; for the paper's batch 128 on ≥ 4×4 maps n ≥ 2048, a ≤ 0.05 % difference in eval mode only.

Init (§2.4): every conv ~ N(0, 2/(C_out·k·k)) × init factor; fc weight ~ N(0, 0.01²) × factor, bias 0.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxscale.models import init as I
from jaxscale.models.conv import PATCH_CHUNK_BYTES, Conv2D
from jaxscale.models.common import require

INITS = ("head",)  # the pre-init-factor scripts used the same init (= factor 1)

_PAD3 = ((1, 1), (1, 1))  # symmetric, as PyTorch: Flax 'SAME' would pad (0, 1) on stride-2 even inputs
_PAD1 = ((0, 0), (0, 0))

PRESETS: dict[str, dict[str, Any]] = {
    "mnist": dict(widths=(16, 32, 64, 128), blocks=(2, 2, 2, 2)),
    "cifar10": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),  # ResNet-18 layout
    "cifar100": dict(widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3)),  # ResNet-34 layout
    "digits": dict(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1)),
    "tiny": dict(widths=(4, 4, 8, 8), blocks=(1, 1, 1, 1)),
}


def _stage_stride(stage: int) -> int:
    return 1 if stage == 0 else 2


def _conv(width: int, kernel: int, stride: int, init_factor: float, dtype: Any, name: str,
          impl: str = "xla", **settings: Any) -> Conv2D:
    """Bias-free conv3×3 (pad 1) or conv1×1 (pad 0), kaiming-normal fan-out × init factor."""
    return Conv2D(
        width, (kernel, kernel), strides=(stride, stride),
        padding=_PAD3 if kernel == 3 else _PAD1, use_bias=False,
        kernel_init=I.scaled(I.kaiming_normal_fan_out, init_factor),
        dtype=dtype, param_dtype=jnp.float32, impl=impl, name=name, **settings,
    )


def _bn(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
    """PyTorch-default BatchNorm2d (γ = 1, β = 0 are Flax's defaults too)."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5,
        # two-pass variance, as PyTorch computes it (the fast E[x²]−E[x]² form loses precision)
        use_fast_variance=False,
        dtype=dtype, param_dtype=jnp.float32, name=name,
    )


class BasicBlock(nn.Module):
    """conv3×3(s) BN ReLU, conv3×3 BN, + shortcut (1×1 conv(s) + BN when s ≠ 1 or C_in ≠ width), ReLU.

    ``[B, H, W, C_in]`` → ``[B, ⌊(H−1)/s⌋+1, ⌊(W−1)/s⌋+1, width]``.
    """

    width: int
    stride: int
    init_factor: float
    dtype: Any
    conv_impl: str = "xla"
    precision: Any = None
    conv_chunk_bytes: int = PATCH_CHUNK_BYTES

    @nn.compact
    def __call__(self, x, train: bool):
        f, dt, ci = self.init_factor, self.dtype, self.conv_impl
        cs = dict(precision=self.precision, chunk_bytes=self.conv_chunk_bytes)
        y = _conv(self.width, 3, self.stride, f, dt, "conv1", ci, **cs)(x)
        y = nn.relu(_bn(train, dt, "bn1")(y))
        y = _conv(self.width, 3, 1, f, dt, "conv2", ci, **cs)(y)
        y = _bn(train, dt, "bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.width:
            x = _conv(self.width, 1, self.stride, f, dt, "shortcut_conv", ci, **cs)(x)
            x = _bn(train, dt, "shortcut_bn")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """Input ``[B, H, W, C]`` float (NHWC, normalised) → logits ``[B, num_classes]`` float32.

    Parameter names: ``stem_conv``, ``stem_bn``, ``stage{s}_block{b}/{conv1,bn1,conv2,bn2,shortcut_conv,
    shortcut_bn}`` (s, b from 0), ``fc``.
    """

    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    num_classes: int
    init_factor: float = 1.0
    dtype: Any = jnp.float32
    conv_impl: str = "xla"  # see jaxscale.models.conv
    precision: Any = None  # matmul precision (registry.PRECISION_SETTINGS)
    conv_chunk_bytes: int = PATCH_CHUNK_BYTES

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.astype(self.dtype)
        x = _conv(self.widths[0], 3, 1, self.init_factor, self.dtype, "stem_conv", self.conv_impl,
                  precision=self.precision, chunk_bytes=self.conv_chunk_bytes)(x)
        x = nn.relu(_bn(train, self.dtype, "stem_bn")(x))
        for s, (width, n) in enumerate(zip(self.widths, self.blocks)):
            for b in range(n):
                x = BasicBlock(
                    init_factor=self.init_factor, dtype=self.dtype, width=width, conv_impl=self.conv_impl,
                    precision=self.precision, conv_chunk_bytes=self.conv_chunk_bytes,
                    stride=_stage_stride(s) if b == 0 else 1, name=f"stage{s}_block{b}",
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes,
            kernel_init=I.scaled(I.normal(0.01), self.init_factor), bias_init=I.zeros,
            dtype=self.dtype, param_dtype=jnp.float32, name="fc", precision=self.precision,
        )(x)
        return x.astype(jnp.float32)


def validate(hyper: dict, input_shape: tuple[int, int, int]) -> None:
    """Raise UsageError if the hyper-parameters cannot build a ResNet."""
    require(len(hyper["widths"]) >= 1, "resnet widths is empty; give one width per stage, e.g. [16, 32, 64, 128]")
    require(
        len(hyper["widths"]) == len(hyper["blocks"]),
        f"resnet widths {list(hyper['widths'])} and blocks {list(hyper['blocks'])} differ in length; "
        "give one block count per stage",
    )


def build(hyper: dict, num_classes: int, init_factor: float, init: str, dtype: Any,
          conv_impl: str = "xla", **settings: Any) -> ResNet:
    """The ResNet module for resolved ``hyper`` (``init`` is always ``"head"``); ``settings``:
    ``precision``, ``conv_chunk_bytes``."""
    return ResNet(num_classes=num_classes, init_factor=init_factor, dtype=dtype, conv_impl=conv_impl, **settings,
                  **hyper)
