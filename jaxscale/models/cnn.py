"""The paper's CNN: a conv stack + MLP classifier (PROTOCOL.md §2.1).

conv3×3 (stride 1, pad 1, bias) + ReLU for each conv width, a 2×2/2 max-pool after conv k whenever
k % pool_every == 0 (k counted from 1), flatten in PyTorch's channel-major NCHW order, then
Linear + ReLU (+ Dropout p if p > 0) per hidden width, then Linear to the classes.

Init (PyTorch defaults, §2.4): every weight and bias ~ U(±1/√fan_in); weights × init factor, biases not.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxscale.models import init as I
from jaxscale.models.common import Net, max_pool_2x2, require

# Architecture hyper-parameters per preset; see PROTOCOL §2.1 for the paper's four.
PRESETS: dict[str, dict[str, Any]] = {
    "mnist": dict(convs=(32, 64, 128), pool_every=2, mlp=(512,), dropout=0.0),
    "cifar10": dict(convs=(32, 64, 128), pool_every=2, mlp=(512,), dropout=0.0),
    "cifar100": dict(convs=(64, 128, 256, 512), pool_every=2, mlp=(1024, 512), dropout=0.1),
    # offline 8×8×1 digits: one pool → 4×4×32 = 512 features → 128 → classes
    "digits": dict(convs=(16, 32), pool_every=2, mlp=(128,), dropout=0.0),
    # for tests: works on any H, W ≥ 2
    "tiny": dict(convs=(4, 8), pool_every=2, mlp=(16,), dropout=0.0),
}


class CNN(Net, kw_only=True):
    """Conv stack + MLP. Input ``[B, H, W, C]`` float (NHWC, normalised) → logits ``[B, num_classes]`` float32.

    Parameter names: ``conv{i}`` (i from 0), ``fc{j}`` for the hidden Linears, ``head`` for the last one.
    """

    convs: tuple[int, ...]
    pool_every: int
    mlp: tuple[int, ...]
    dropout: float
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.astype(self.dtype)
        weight_init = I.scaled(I.torch_default_kernel, self.init_factor)
        for i, width in enumerate(self.convs):  # a bias's init depends on its weight's fan-in, 3·3·C_in
            x = nn.relu(self._conv(width, 3, 1, ((1, 1), (1, 1)), weight_init, f"conv{i}",
                                   I.torch_default_bias(9 * x.shape[-1]))(x))
            if (i + 1) % self.pool_every == 0:
                x = max_pool_2x2(x)
        # PyTorch flattens NCHW: feature index = c·H·W + h·W + w. Transposing first keeps the first
        # Linear's weight columns in PyTorch's order, so norms and weights mean the same thing.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        for j, width in enumerate(self.mlp):
            x = nn.relu(self._dense(width, weight_init, f"fc{j}", I.torch_default_bias(x.shape[-1]))(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = self._dense(self.num_classes, weight_init, "head", I.torch_default_bias(x.shape[-1]))(x)
        return x.astype(jnp.float32)


def validate(hyper: dict, input_shape: tuple[int, int, int]) -> None:
    """Raise UsageError if the hyper-parameters cannot build a CNN on ``input_shape``."""
    require(0.0 <= hyper["dropout"] < 1.0, f"cnn dropout={hyper['dropout']} is not in [0, 1); set it to e.g. 0.0")
    n_pools = len(hyper["convs"]) // hyper["pool_every"]
    h, w = input_shape[:2]
    require(min(h, w) >= 2**n_pools,
            f"cnn: {n_pools} max-pools shrink a {h}x{w} input to nothing; use fewer convs or a larger pool_every")
