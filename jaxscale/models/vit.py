"""The paper's pre-LayerNorm Vision Transformer with a class token — PROTOCOL.md §2.3.

patch conv (kernel = stride = patch, bias) → row-major tokens → prepend cls → + positional embedding
(1 + N_patches, D) → ``depth`` × [x += MHSA(LN₁ x); x += MLP(LN₂ x)] → LN → Linear on the cls token.
LayerNorm eps 1e-5, exact (erf) GELU, MLP D → mlp_dim → D, all dropouts 0 (so no dropout layers).

MHSA is PyTorch's ``nn.MultiheadAttention`` written out: one stacked in-projection Dense
``(D, 3D)`` + bias whose output axis holds Q | K | V in that order, heads = contiguous chunks of D,
scores scaled by 1/√(D/heads), softmax, out-projection ``(D, D)`` + bias.

Inits (§2.4), biases always 0, LayerNorm (1, 0), cls/pos ~ trunc-normal std 0.02 (never scaled):
* ``"head"``: patch conv ~ N(0, 2/(D·p²)) × factor; every Linear (fc1, fc2, out-proj, head)
  xavier-uniform × factor; in-projection xavier-uniform over the (3D × D) matrix, U(±√(6/(4D))),
  **not** scaled (the official code never re-initialises that bare parameter).
* ``"old"`` (the ViT-MNIST runs): patch conv and every Linear ~ trunc-normal std 0.02; in-projection as
  above. The official old script had no init factor; here a factor ≠ 1 scales the same weights as in
  ``"head"`` (factor 1 reproduces the paper).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxscale.models import init as I
from jaxscale.models.common import Net, require

PRESETS: dict[str, dict[str, Any]] = {
    "mnist": dict(patch=7, dim=128, depth=4, heads=4, mlp_dim=512),
    "cifar10": dict(patch=4, dim=192, depth=6, heads=3, mlp_dim=768),
    "cifar100": dict(patch=4, dim=256, depth=6, heads=4, mlp_dim=1024),
    "digits": dict(patch=2, dim=32, depth=2, heads=2, mlp_dim=64),  # 8×8 → 16 tokens (+cls)
    "tiny": dict(patch=1, dim=8, depth=1, heads=2, mlp_dim=16),  # patch 1: any H, W
}


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, name=name)


class MultiHeadSelfAttention(Net, kw_only=True):
    """PyTorch ``nn.MultiheadAttention`` self-attention (no masks, no dropout). ``[B, N, D]`` → ``[B, N, D]``."""

    heads: int
    linear_init: I.Initializer

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        hd = d // self.heads
        qkv = self._dense(3 * d, I.xavier_uniform, "in_proj")(x)  # unscaled: see module doc
        # split Q | K | V along features, then each into contiguous per-head chunks of size D/heads
        q, k, v = (t.reshape(b, n, self.heads, hd) for t in jnp.split(qkv, 3, axis=-1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision) / math.sqrt(hd)
        # softmax in float32 so a bfloat16 compute dtype does not wreck the normalisation
        attn = nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v, precision=self.precision).reshape(b, n, d)
        return self._dense(d, self.linear_init, "out_proj")(out)


class EncoderBlock(Net, kw_only=True):
    """Pre-LN block: x + MHSA(LN₁ x), then + MLP(LN₂ x). ``[B, N, D]`` → ``[B, N, D]``."""

    heads: int
    mlp_dim: int
    linear_init: I.Initializer

    @nn.compact
    def __call__(self, x):
        attn = MultiHeadSelfAttention(heads=self.heads, linear_init=self.linear_init, **self._shared(), name="attn")
        x = x + attn(_layer_norm(self.dtype, "ln1")(x))
        h = self._dense(self.mlp_dim, self.linear_init, "fc1")(_layer_norm(self.dtype, "ln2")(x))
        h = self._dense(x.shape[-1], self.linear_init, "fc2")(nn.gelu(h, approximate=False))
        return x + h


class ViT(Net, kw_only=True):
    """Input ``[B, H, W, C]`` float (NHWC, normalised) → logits ``[B, num_classes]`` float32.

    Parameter names: ``patch_embed``, ``cls_token`` ``(1, 1, D)``, ``pos_embed`` ``(1, 1+N, D)``,
    ``block{i}/{ln1, attn/{in_proj, out_proj}, ln2, fc1, fc2}``, ``ln_f``, ``head``.
    """

    patch: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    num_classes: int
    init_scheme: str = "head"  # "head" or "old" ("init" would shadow Module.init)

    @nn.compact
    def __call__(self, x, train: bool):
        del train  # no dropout, no BatchNorm: train and eval are the same function
        f, b, p = self.init_factor, x.shape[0], self.patch
        if self.init_scheme == "old":
            patch_init, linear_init = I.scaled(I.trunc_normal(0.02), f), I.scaled(I.trunc_normal(0.02), f)
        else:
            patch_init, linear_init = I.scaled(I.kaiming_normal_fan_out, f), I.scaled(I.xavier_uniform, f)
        x = self._conv(self.dim, p, p, ((0, 0), (0, 0)), patch_init, "patch_embed", I.zeros)(x.astype(self.dtype))
        x = x.reshape(b, -1, self.dim)  # row-major patches: token = h'·W' + w', as PyTorch flatten(2)
        cls = self.param("cls_token", I.trunc_normal(0.02), (1, 1, self.dim), jnp.float32)
        pos = self.param("pos_embed", I.trunc_normal(0.02), (1, 1 + x.shape[1], self.dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, self.dim)), x], axis=1)
        x = x + pos.astype(self.dtype)
        for i in range(self.depth):
            x = EncoderBlock(heads=self.heads, mlp_dim=self.mlp_dim, linear_init=linear_init, **self._shared(),
                             name=f"block{i}")(x)
        x = _layer_norm(self.dtype, "ln_f")(x)[:, 0]
        return self._dense(self.num_classes, linear_init, "head")(x).astype(jnp.float32)


def validate(hyper: dict, input_shape: tuple[int, int, int]) -> None:
    """Raise UsageError if the hyper-parameters cannot build a ViT on ``input_shape``."""
    h, w = input_shape[:2]
    p = hyper["patch"]
    require(h % p == 0 and w % p == 0,
            f"vit patch={p} does not divide the {h}x{w} input; choose a patch size that divides both")
    require(hyper["dim"] % hyper["heads"] == 0,
            f"vit dim={hyper['dim']} is not divisible by heads={hyper['heads']}; choose heads dividing dim")
