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
from jaxscale.models.common import Net, require

PRESETS: dict[str, dict[str, Any]] = {
    "mnist": dict(widths=(16, 32, 64, 128), blocks=(2, 2, 2, 2)),
    "cifar10": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),  # ResNet-18 layout
    "cifar100": dict(widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3)),  # ResNet-34 layout
    "digits": dict(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1)),
    "tiny": dict(widths=(4, 4, 8, 8), blocks=(1, 1, 1, 1)),
}


class _ConvBN(Net):
    def _conv_bn(self, x, width: int, k: int, stride: int, train: bool, conv_name: str, bn_name: str):
        """Bias-free k×k conv (kaiming-normal fan-out × init factor) then BatchNorm."""
        # symmetric padding, as PyTorch: Flax 'SAME' would pad (0, 1) on stride-2 even inputs
        pad = ((1, 1), (1, 1)) if k == 3 else ((0, 0), (0, 0))
        x = self._conv(width, k, stride, pad, I.scaled(I.kaiming_normal_fan_out, self.init_factor), conv_name)(x)
        # two-pass variance, as PyTorch computes it (the fast E[x²]−E[x]² form loses precision)
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                            dtype=self.dtype, param_dtype=jnp.float32, name=bn_name)(x)


class BasicBlock(_ConvBN, kw_only=True):
    """conv3×3(s) BN ReLU, conv3×3 BN, + shortcut (1×1 conv(s) + BN when s ≠ 1 or C_in ≠ width), ReLU.

    ``[B, H, W, C_in]`` → ``[B, ⌊(H−1)/s⌋+1, ⌊(W−1)/s⌋+1, width]``.
    """

    width: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.relu(self._conv_bn(x, self.width, 3, self.stride, train, "conv1", "bn1"))
        y = self._conv_bn(y, self.width, 3, 1, train, "conv2", "bn2")
        if self.stride != 1 or x.shape[-1] != self.width:
            x = self._conv_bn(x, self.width, 1, self.stride, train, "shortcut_conv", "shortcut_bn")
        return nn.relu(y + x)


class ResNet(_ConvBN, kw_only=True):
    """Input ``[B, H, W, C]`` float (NHWC, normalised) → logits ``[B, num_classes]`` float32.

    Parameter names: ``stem_conv``, ``stem_bn``, ``stage{s}_block{b}/{conv1,bn1,conv2,bn2,shortcut_conv,
    shortcut_bn}`` (s, b from 0), ``fc``.
    """

    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(self._conv_bn(x.astype(self.dtype), self.widths[0], 3, 1, train, "stem_conv", "stem_bn"))
        for s, (width, n) in enumerate(zip(self.widths, self.blocks)):
            for b in range(n):  # stage strides 1, 2, 2, ...
                x = BasicBlock(width=width, stride=2 if s > 0 and b == 0 else 1, **self._shared(),
                               name=f"stage{s}_block{b}")(x, train)
        x = self._dense(self.num_classes, I.scaled(I.normal(0.01), self.init_factor), "fc")(jnp.mean(x, axis=(1, 2)))
        return x.astype(jnp.float32)


def validate(hyper: dict, input_shape: tuple[int, int, int]) -> None:
    """Raise UsageError if the hyper-parameters cannot build a ResNet."""
    require(len(hyper["widths"]) >= 1, "resnet widths is empty; give one width per stage, e.g. [16, 32, 64, 128]")
    require(len(hyper["widths"]) == len(hyper["blocks"]),
            f"resnet widths {list(hyper['widths'])} and blocks {list(hyper['blocks'])} differ in length; "
            "give one block count per stage")
