"""The power-iteration state carried between norm computations, and input validation.

The state holds a block of ``k`` orthonormal right vectors per layer whose σ is estimated (block
power iteration, see :func:`jaxscale.norms.power.block_power_iteration`), keyed by
``WeightLayer.name``; ``k = min(block, vector size)``, ``block`` = 4 by default. It is an ordinary pytree (a ``flax.struct.dataclass``): it can live inside
the train state, be ``jax.vmap``-ed over a leading seed axis, and be checkpointed with everything
else. The convention is static metadata (not an array), so a state built for one convention is
rejected by the other instead of silently mis-shaping.

Block shapes (per seed) are ``[k, *vector shape]`` with these vector shapes:
  * dense layer, any convention: ``[fan_in]`` (flax kernel rows, i.e. the ``in`` axis);
  * conv layer, ``paper``: ``[kh·kw·C_in]`` — the flattened kernel's right vector, in the flax
    kernel's ``(kh, kw, C_in)`` row order (a permutation of PyTorch's ``(C_in, kh, kw)``; singular
    values do not depend on it);
  * conv layer, ``bartlett``: ``[H, W, C_in]`` — a vector in the conv operator's input space, with
    ``(H, W) = layer.input_hw``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.errors import UsageError
from jaxscale.models.layers import WeightLayer
from jaxscale.norms.power import _orthonormal_rows

NORM_NAMES = ("spectral_complexity", "spectral_product", "frobenius", "l1", "group_2_1")
CONVENTIONS = ("paper", "bartlett")
FAMILIES = ("cnn", "resnet", "vit")
# Vectors per layer. Along training the top singular values are nearly degenerate and cross; a
# block of 4 keeps the in-step σ (1 iteration per step) within 1e-3 where a single vector lagged
# by up to 10 % (digits CNN, Adam 1e-3). A dense kernel is read once per application whatever the
# block size, so on large memory-bound layers 4 vectors cost about as much as one.
DEFAULT_BLOCK = 4


@flax.struct.dataclass
class NormState:
    """Block power-iteration vectors, one orthonormal block per σ-carrying layer.

    Attributes:
      vectors: ``{layer.name: [k, *vector shape] block}``, rows orthonormal, row 0 the current
        top-vector estimate (shapes in the module docstring; with a leading seed axis when stacked
        for an ensemble).
      convention: ``"paper"`` or ``"bartlett"`` (static, not a pytree leaf).
      block: requested vectors per layer (static); a layer gets ``min(block, vector size)``.
    """

    vectors: dict[str, jax.Array]
    convention: str = flax.struct.field(pytree_node=False, default="paper")
    block: int = flax.struct.field(pytree_node=False, default=DEFAULT_BLOCK)


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise UsageError(
            f"unknown norm convention {convention!r}; use one of {', '.join(CONVENTIONS)}"
        )


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UsageError(
            f"unknown model family {family!r} for the norms; use one of {', '.join(FAMILIES)}"
        )


def check_block(block: Any) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise UsageError(
            f"norm state block size must be an integer >= 1, got {block!r}; use e.g. 4"
        )


def block_shape(
    layer: WeightLayer, kernel_shape: tuple[int, ...], convention: str, block: int
) -> tuple:
    """Shape ``[k, *vector shape]`` of ``layer``'s block, ``k = min(block, vector size)``."""
    shp = vector_shape(layer, kernel_shape, convention)
    return (min(block, int(np.prod(shp))),) + tuple(shp)


def check_n_iter(n_iter: Any) -> None:
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise UsageError(
            f"norms.power_iterations must be an integer >= 1, got {n_iter!r}; set it to 1 or more"
        )


def layers_for(layers: Sequence[WeightLayer], convention: str) -> tuple[WeightLayer, ...]:
    """The layers a convention uses, in network order, after validating the declaration.

    ``paper``: only ``in_paper`` layers (the official code's selection, e.g. stem + fc for ResNet).
    ``bartlett``: every declared layer.
    """
    check_convention(convention)
    layers = tuple(layers)
    names = [layer.name for layer in layers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(
            f"weight layers must have unique names, repeated: {', '.join(dup)}; "
            "rename them in the model's layer declaration"
        )
    for layer in layers:
        if layer.kind not in ("dense", "conv"):
            raise UsageError(
                f"layer {layer.name!r} has kind {layer.kind!r}; declare it as 'dense' or 'conv'"
            )
    used = tuple(layer for layer in layers if layer.in_paper) if convention == "paper" else layers
    if not used:
        raise UsageError(
            f"no weight layers to measure under the {convention!r} convention; "
            "declare the model's layers (and mark the official ones in_paper=True)"
        )
    if convention == "bartlett":
        for layer in used:
            if layer.kind == "conv" and layer.input_hw is None:
                raise UsageError(
                    f"conv layer {layer.name!r} has no input_hw, which the bartlett convention "
                    "needs for the conv's operator norm; declare input_hw=(H, W) for it"
                )
    return used


def get_kernel(layer: WeightLayer, params: Any) -> jax.Array:
    """``layer.kernel(params)`` with a clear error when the path does not exist."""
    try:
        k = layer.kernel(params)
    except (KeyError, TypeError, IndexError) as exc:
        raise UsageError(
            f"weight layer {layer.name!r}: path {'/'.join(layer.path)} not found in params "
            f"({exc!r}); pass the model's 'params' collection (per seed) or fix the layer path"
        ) from None
    want = 2 if layer.kind == "dense" else 4
    if k.ndim != want:
        raise UsageError(
            f"weight layer {layer.name!r} ({layer.kind}) has a kernel of shape {tuple(k.shape)}, "
            f"expected {want} dims; call the norms per seed (vmap over the seed axis) or fix "
            "the layer's kind"
        )
    return k


def vector_shape(layer: WeightLayer, kernel_shape: tuple[int, ...], convention: str) -> tuple:
    """Shape of the power-iteration vector for ``layer`` (see module docstring)."""
    if layer.kind == "dense":
        return (kernel_shape[0],)
    kh, kw, cin, _ = kernel_shape
    if convention == "paper":
        return (kh * kw * cin,)
    h, w = layer.input_hw
    return (h, w, cin)


def init_norm_state(
    layers: Sequence[WeightLayer],
    params: Mapping[str, Any],
    key: jax.Array,
    convention: str,
    block: int = DEFAULT_BLOCK,
) -> NormState:
    """Random orthonormal start blocks for every σ-carrying layer of ``convention`` (deterministic).

    Args:
      layers: the model's declared weight layers (``ModelSpec.layers``).
      params: one seed's ``params`` collection (only shapes and dtypes are read). For an ensemble,
        ``jax.vmap`` this function over stacked params and a stack of keys.
      key: PRNG key; one normal draw of the total size, split over the layers in order.
      convention: ``"paper"`` or ``"bartlett"``.
      block: vectors per layer (static int ≥ 1; capped per layer at the vector size). 1 is plain
        power iteration.

    Returns:
      A :class:`NormState` with ``[k, *vector shape]`` blocks. Norms computed from random vectors
      underestimate σ until the vectors converge: pass it through :func:`jaxscale.norms.warm_up_norm_state` once (Lanczos) before
      the first in-step ``compute_norms``.
    """
    check_block(block)
    used = layers_for(layers, convention)
    kernels = [get_kernel(layer, params) for layer in used]
    shapes = [block_shape(layer, tuple(k.shape), convention, block)
              for layer, k in zip(used, kernels)]
    sizes = [int(np.prod(shp)) for shp in shapes]
    # One draw for all layers, then split: each separate jax.random call adds ~0.5 s of XLA
    # compile time (a ViT has 38 layers), while the values stay a deterministic function of key.
    flat = jax.random.normal(key, (sum(sizes),), kernels[0].dtype)
    vectors = {}
    for layer, shp, part in zip(used, shapes, jnp.split(flat, np.cumsum(sizes)[:-1])):
        vectors[layer.name] = _orthonormal_rows(part.reshape(shp[0], -1)).reshape(shp)
    return NormState(vectors=vectors, convention=convention, block=block)


def check_state(
    used: Sequence[WeightLayer], params: Any, state: NormState, convention: str
) -> None:
    """Reject a state built for another model, convention or seed layout (trace-time shapes)."""
    if not isinstance(state, NormState):
        raise UsageError(
            f"norm state must be a NormState, got {type(state).__name__}; build it with "
            "jaxscale.norms.init_norm_state"
        )
    if state.convention != convention:
        raise UsageError(
            f"norm state was built for the {state.convention!r} convention but the "
            f"{convention!r} convention was requested; rebuild it with init_norm_state"
        )
    want = {layer.name for layer in used}
    have = set(state.vectors)
    if want != have:
        raise UsageError(
            f"norm state layers {sorted(have)} do not match the model's layers {sorted(want)}; "
            "rebuild the state with init_norm_state for this model"
        )
    for layer in used:
        shape = block_shape(layer, tuple(get_kernel(layer, params).shape), convention,
                            state.block)
        got = tuple(state.vectors[layer.name].shape)
        if got != shape:
            raise UsageError(
                f"norm state vector for layer {layer.name!r} has shape {got}, expected {shape}; "
                "rebuild it with init_norm_state (and vmap the norms over the seed axis)"
            )
