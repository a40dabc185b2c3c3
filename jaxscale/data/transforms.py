"""Normalisation and the paper's augmentations as pure jnp functions (jittable, vmappable).

They run inside the jitted training program on device-resident uint8 batches. Order, as the
official torchvision pipelines: uint8 → [0, 1] (``ToTensor``) → augmentation → per-channel
``(x − mean) / std`` (``Normalize``). Augmentation therefore pads/fills with 0 in [0, 1] space, i.e.
black raw pixels, as torchvision does on PIL images / [0, 1] tensors.

Each augmentation is split in two: a deterministic kernel that takes explicit parameters (offsets,
flip flags, angles, shifts — tested exactly) and a ``random_*`` wrapper that draws those parameters
from a key, one set per image.

Shapes: images are NHWC, ``x`` float32 ``[B, H, W, C]``; a single image is ``[H, W, C]``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxscale.errors import UsageError

#: augmentation names accepted by :func:`make_augment`
AUGMENTS = ("none", "crop_flip", "affine")

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def to_unit(x: jax.Array, pixel_max: float) -> jax.Array:
    """Raw pixels → float32 in [0, 1]: ``x / pixel_max`` (torchvision ``ToTensor`` for 255).

    Args:
      x: uint8 (or any numeric) images, any shape.
      pixel_max: value of a full-intensity pixel (255 for tfds, 16 for the digits).
    """
    return jnp.asarray(x).astype(jnp.float32) / jnp.float32(pixel_max)


def normalize(x01: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Per-channel ``(x − mean) / std`` over the last (channel) axis.

    Args:
      x01: float ``[..., C]`` in [0, 1].
      mean, std: length 1 (broadcast to every channel) or C.
    """
    m = jnp.asarray(mean, jnp.float32)
    s = jnp.asarray(std, jnp.float32)
    return (x01 - m) / s


# ------------------------------------------------------------------------------------------------
# Random crop (zero padding) + horizontal flip  — torchvision RandomCrop(H, padding=pad) +
# RandomHorizontalFlip(0.5)


def crop_flip(x: jax.Array, offsets: jax.Array, flips: jax.Array, pad: int = 4) -> jax.Array:
    """Zero-pad each image by ``pad`` pixels per side, crop back to ``H×W`` at ``offsets``, then
    mirror left-right where ``flips`` is true.

    Args:
      x: float ``[B, H, W, C]``.
      offsets: int ``[B, 2]`` (row, column) of the crop's top-left corner in the padded image,
        each in ``[0, 2·pad]``; ``(pad, pad)`` is the un-shifted image.
      flips: bool ``[B]``.
      pad: padding in pixels (static).

    Returns:
      float ``[B, H, W, C]``: ``out[b, i, j] = padded[b, i + oy, j' + ox]`` with ``j' = W−1−j`` if
      flipped else ``j``.
    """
    B, H, W, C = x.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, off, flip):
        out = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (H, W, C))
        return jnp.where(flip, out[:, ::-1, :], out)

    return jax.vmap(one)(xp, offsets.astype(jnp.int32), flips)


def random_crop_flip(key: jax.Array, x01: jax.Array, pad: int = 4) -> jax.Array:
    """torchvision ``RandomCrop(H, padding=pad)`` + ``RandomHorizontalFlip(0.5)`` per image.

    Crop offsets are uniform on ``{0, …, 2·pad}`` per axis (torchvision's ``randint(0, h+2p−h+1)``);
    flips are Bernoulli(0.5). Crop then flip equals torchvision's order.

    Args:
      key: PRNG key.
      x01: float ``[B, H, W, C]`` in [0, 1] (padding is 0, a black raw pixel).
    Returns:
      float ``[B, H, W, C]``.
    """
    k_off, k_flip = jax.random.split(key)
    B = x01.shape[0]
    offsets = jax.random.randint(k_off, (B, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(k_flip, 0.5, (B,))
    return crop_flip(x01, offsets, flips, pad)


# ------------------------------------------------------------------------------------------------
# Random affine (rotation + integer translation, nearest, zero fill) — torchvision
# RandomAffine(degrees, translate=(t, t)) on the image


def affine(img: jax.Array, angle_deg: jax.Array, tx: jax.Array, ty: jax.Array) -> jax.Array:
    """Rotate one image by ``angle_deg`` about its centre and shift it by ``(tx, ty)`` pixels,
    nearest-neighbour sampling, zero fill — torchvision ``F.affine(img, angle, (tx, ty), scale=1,
    shear=0, NEAREST, fill=0)``.

    Implemented as torchvision's tensor path: for every output pixel, the inverse map gives the
    input location; the nearest input pixel is gathered (round half to even, like
    ``grid_sample(mode="nearest")``), or 0 when it falls outside the image. With centred
    coordinates ``x = j − (W−1)/2``, ``y = i − (H−1)/2`` (x right, y down) and ``a`` in radians::

        x_in =  cos a · (x − tx) + sin a · (y − ty)
        y_in = −sin a · (x − tx) + cos a · (y − ty)

    so a positive angle turns the picture clockwise on screen (torchvision's ``affine``
    convention; 90° gives ``np.rot90(img, k=-1)``), positive ``tx`` moves content right and
    positive ``ty`` moves it down.

    Args:
      img: float ``[H, W, C]``.
      angle_deg: scalar rotation in degrees.
      tx, ty: scalar shifts in pixels (integers in torchvision's RandomAffine).
    Returns:
      float ``[H, W, C]``.
    """
    H, W, _ = img.shape
    a = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
    c, s = jnp.cos(a), jnp.sin(a)
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(H, dtype=jnp.float32) - cy, jnp.arange(W, dtype=jnp.float32) - cx,
                          indexing="ij")
    xs = xx - jnp.asarray(tx, jnp.float32)
    ys = yy - jnp.asarray(ty, jnp.float32)
    col = jnp.round(c * xs + s * ys + cx)
    row = jnp.round(-s * xs + c * ys + cy)
    inside = (col >= 0) & (col <= W - 1) & (row >= 0) & (row <= H - 1)
    gathered = img[jnp.clip(row, 0, H - 1).astype(jnp.int32), jnp.clip(col, 0, W - 1).astype(jnp.int32)]
    return jnp.where(inside[..., None], gathered, jnp.zeros((), img.dtype))


def random_affine(key: jax.Array, x01: jax.Array, degrees: float = 10.0, translate: float = 0.1) -> jax.Array:
    """torchvision ``RandomAffine(degrees, translate=(translate, translate))``, nearest, fill 0,
    fresh parameters per image.

    Per image: angle ~ U(−degrees, degrees); ``tx = round(U(−translate·W, translate·W))``,
    ``ty = round(U(−translate·H, translate·H))`` (integer pixels, round half to even as Python's
    ``round``), as torchvision's ``RandomAffine.get_params``.

    Args:
      key: PRNG key.
      x01: float ``[B, H, W, C]`` in [0, 1].
    Returns:
      float ``[B, H, W, C]``.
    """
    B, H, W, _ = x01.shape
    k_a, k_x, k_y = jax.random.split(key, 3)
    angles = jax.random.uniform(k_a, (B,), jnp.float32, -degrees, degrees)
    max_dx, max_dy = translate * W, translate * H
    tx = jnp.round(jax.random.uniform(k_x, (B,), jnp.float32, -max_dx, max_dx))
    ty = jnp.round(jax.random.uniform(k_y, (B,), jnp.float32, -max_dy, max_dy))
    return jax.vmap(affine)(x01, angles, tx, ty)


# ------------------------------------------------------------------------------------------------


def _no_augment(key: jax.Array, x01: jax.Array) -> jax.Array:
    del key  # deterministic: the key is accepted only to share the augmentation signature
    return x01


def make_augment(name: str) -> AugmentFn:
    """The augmentation ``fn(key, x01 [B, H, W, C]) -> [B, H, W, C]`` called ``name``.

    ``"none"`` (identity), ``"crop_flip"`` (:func:`random_crop_flip`, pad 4: ResNet on CIFAR),
    ``"affine"`` (:func:`random_affine`, ±10°, 10 %: ResNet/ViT on MNIST). PROTOCOL §3.1.
    """
    table = {"none": _no_augment, "crop_flip": random_crop_flip, "affine": random_affine}
    if name not in table:
        raise UsageError(f"unknown augmentation {name!r}: choose one of {', '.join(AUGMENTS)}")
    return table[name]


def preprocess(
    key: jax.Array,
    x: jax.Array,
    *,
    pixel_max: float,
    mean: Sequence[float],
    std: Sequence[float],
    augment: str = "none",
) -> jax.Array:
    """Raw batch → network input: ``to_unit`` → augmentation → ``normalize`` (torchvision's order).

    Args:
      key: PRNG key for the augmentation (unused for ``"none"``).
      x: uint8 ``[B, H, W, C]``.
      pixel_max: the dataset's full-intensity pixel value.
      mean, std: per-channel normalisation (length 1 or C).
      augment: a name from :data:`AUGMENTS` (static).
    Returns:
      float32 ``[B, H, W, C]``.
    """
    return normalize(make_augment(augment)(key, to_unit(x, pixel_max)), mean, std)
