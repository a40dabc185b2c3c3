"""Norms as one transform: settings bound once in :class:`Norms`, then pure ``init`` / ``update`` / ``read``.

The carried :class:`NormState` is an ordinary pytree (vmappable over seeds, checkpointed with the
train state): per σ-carrying layer, keyed by ``WeightLayer.name``, a block of ``k = min(block, vector
size)`` orthonormal right vectors ``[k, *vector shape]`` for :func:`jaxscale.norms.power.block_power_iteration`:
  * dense layer: ``[fan_in]``;
  * conv layer, ``paper``: ``[kh·kw·C_in]``, the flattened kernel's right vector in flax's
    ``(kh, kw, C_in)`` order (a permutation of PyTorch's: same singular values);
  * conv layer, ``bartlett``: ``[H, W, C_in]``, the conv operator's input space (``layer.input_hw``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.config import CONVENTIONS, FAMILIES as PAPER_FAMILIES  # the official code's three families
from jaxscale.errors import UsageError
from jaxscale.models.common import require
from jaxscale.models.layers import WeightLayer
from jaxscale.norms.measures import assemble, layer_stats
from jaxscale.norms.power import _orthonormal_rows, block_power_iteration, conv_operator, dense_operator, lanczos_top

# Vectors per layer. Along training the top singular values are nearly degenerate and cross; a
# block of 4 keeps the in-step σ (1 iteration per step) within 1e-3 where a single vector lagged
# by up to 10 % (digits CNN, Adam 1e-3). A dense kernel is read once per application whatever the
# block size, so on large memory-bound layers 4 vectors cost about as much as one.
DEFAULT_BLOCK = 4


@flax.struct.dataclass
class NormState:
    """``vectors``: ``{layer.name: [k, *vector shape]}`` orthonormal rows, row 0 the top-vector estimate
    (a leading seed axis when stacked); ``convention`` is static, so the other convention rejects it."""

    vectors: dict[str, jax.Array]
    convention: str = flax.struct.field(pytree_node=False, default="paper")


@dataclasses.dataclass(frozen=True)
class Norms:
    """The five log-norms ``{name: scalar natural log}`` of a network's weights as a pure, jittable
    transform; call ``init``/``update``/``read`` per seed and ``jax.vmap`` them over seeds.

    Attributes:
      layers: weight layers in network order (``ModelSpec.layers`` or :func:`jaxscale.models.trace_layers`).
      convention: ``"bartlett"`` (every layer, convs' true operator norms) or ``"paper"`` (the
        official definitions on the ``in_paper`` layers; needs ``family``: cnn, resnet or vit).
      block: vectors per layer (1 is plain power iteration); power_iterations: per ``update``.
      every: jaxscale's train step calls ``update`` every this many optimiser steps (0: never).
      krylov_dim: Lanczos steps converging a dense / flattened-kernel block in ``init`` and ``read``.
      conv_krylov_dim: the same for bartlett conv operators, whose spectra are denser near the top
        (on the MNIST CNN's 28×28×32 conv 64 steps leave 4e-5, 128 leave 1.3e-5, 256 converge).
    """

    layers: tuple[WeightLayer, ...]
    convention: str = "bartlett"
    family: Optional[str] = None
    block: int = DEFAULT_BLOCK
    power_iterations: int = 1
    every: int = 1
    krylov_dim: int = 64
    conv_krylov_dim: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        require(self.convention in CONVENTIONS,
                f"unknown norm convention {self.convention!r}; use one of {', '.join(CONVENTIONS)}")
        require(self.convention == "bartlett" or self.family in PAPER_FAMILIES,
                f"the paper convention is defined for the {', '.join(PAPER_FAMILIES)} families, "
                f"not {self.family!r}; use convention='bartlett' for other models")
        for name in ("block", "power_iterations", "krylov_dim", "conv_krylov_dim", "every"):
            v, low = getattr(self, name), int(name != "every")
            require(not isinstance(v, bool) and isinstance(v, int) and v >= low,
                    f"norms {name} must be an integer >= {low}, got {v!r}; use e.g. {max(low, 1)}")
        names = [layer.name for layer in self.layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, f"weight layers must have unique names, repeated: {', '.join(dup)}; "
                         "rename them (they key the norm state)")
        for layer in self.layers:
            require(layer.kind in ("dense", "conv"),
                    f"layer {layer.name!r} has kind {layer.kind!r}; use 'dense' or 'conv'")
            require(self.convention == "paper" or layer.kind == "dense" or layer.input_hw is not None,
                    f"conv layer {layer.name!r} has no input_hw, which the bartlett convention needs "
                    "for the conv's operator norm; set input_hw=(H, W) (trace_layers does)")
        require(bool(self.used), f"no weight layers to measure under the {self.convention!r} "
                                 "convention; pass the model's layers (trace_layers)")

    @property
    def used(self) -> tuple[WeightLayer, ...]:
        """The layers the convention measures, in network order (``paper``: the ``in_paper`` ones)."""
        if self.convention == "paper":
            return tuple(layer for layer in self.layers if layer.in_paper)
        return self.layers

    def init(self, params: Any, key: jax.Array) -> NormState:
        """Random orthonormal blocks (deterministic in ``key``) for one seed's ``params``, converged by Lanczos."""
        kernels = [self._kernel(layer, params) for layer in self.used]
        shapes = [self._block_shape(layer, k.shape) for layer, k in zip(self.used, kernels)]
        sizes = [int(np.prod(shp)) for shp in shapes]
        # One draw for all layers, then split: each separate jax.random call adds ~0.5 s of XLA
        # compile time (a ViT has 38 layers), while the values stay a deterministic function of key.
        flat = jax.random.normal(key, (sum(sizes),), kernels[0].dtype)
        vectors = {
            layer.name: _orthonormal_rows(part.reshape(shp[0], -1)).reshape(shp)
            for layer, shp, part in zip(self.used, shapes, jnp.split(flat, np.cumsum(sizes)[:-1]))
        }
        return self._converge(params, self._state(vectors))

    def update(self, params: Any, state: NormState) -> tuple[dict[str, jax.Array], NormState]:
        """``(log_norms, new_state)`` after ``power_iterations`` warm-started block iterations (in the step).

        σ estimates are lower bounds, within ~1e-4 once converged vectors track settled training; each
        iteration applies every layer and its transpose once to the ``k`` vectors, plus a ``k×k`` eigh
        and a ``k``-row QR. Every other statistic is exact."""
        return self._measure(params, state, self.power_iterations)

    def read(self, params: Any, state: NormState) -> tuple[dict[str, jax.Array], NormState]:
        """The logged values: re-converge the carried vectors (Lanczos from them), then measure. Exact to
        ~1e-5 whatever the in-step history (in-step values lag by a few percent while the nearly
        degenerate top singular values of fresh layers reorder); reads are rare (≈50 a run)."""
        return self._measure(params, self._converge(params, state), 1)

    def _state(self, vectors: dict) -> NormState:
        return NormState(vectors=vectors, convention=self.convention)

    def _kernel(self, layer: WeightLayer, params: Any) -> jax.Array:
        try:
            k = layer.kernel(params)
        except (KeyError, TypeError, IndexError) as exc:
            raise UsageError(
                f"weight layer {layer.name!r}: path {'/'.join(layer.path)} not found in params "
                f"({exc!r}); pass the model's 'params' collection (per seed) or fix the layer path"
            ) from None
        want = 2 if layer.kind == "dense" else 4
        require(k.ndim == want,
                f"weight layer {layer.name!r} ({layer.kind}) has a kernel of shape {tuple(k.shape)}, "
                f"expected {want} dims; call the norms per seed (vmap over the seed axis)")
        return k

    def _block_shape(self, layer: WeightLayer, kernel_shape: tuple) -> tuple:
        if layer.kind == "dense":
            shp = (kernel_shape[0],)
        elif self.convention == "paper":
            shp = (int(np.prod(kernel_shape[:3])),)
        else:
            shp = tuple(layer.input_hw) + (kernel_shape[2],)
        return (min(self.block, int(np.prod(shp))),) + shp

    def _operator(self, layer: WeightLayer, kernel: jax.Array, shape: tuple) -> tuple:
        """``(apply, apply_t)`` of the layer's σ-carrying operator on vectors of ``shape``."""
        if self.convention == "bartlett" and layer.kind == "conv":
            return conv_operator(kernel, shape, layer.stride, layer.padding)
        return dense_operator(kernel.reshape(-1, kernel.shape[-1]))

    def _checked(self, params: Any, state: NormState) -> dict[str, jax.Array]:
        """``{name: kernel}`` after rejecting a state built for another model or convention."""
        require(isinstance(state, NormState) and state.convention == self.convention,
                f"norm state must be a NormState of the {self.convention!r} convention, got "
                f"{getattr(state, 'convention', type(state).__name__)!r}; rebuild it with Norms.init")
        kernels = {layer.name: self._kernel(layer, params) for layer in self.used}
        require(set(state.vectors) == set(kernels),
                f"norm state layers {sorted(state.vectors)} do not match the model's layers "
                f"{sorted(kernels)}; rebuild the state with Norms.init for this model")
        for layer in self.used:
            got = tuple(state.vectors[layer.name].shape)
            want = self._block_shape(layer, kernels[layer.name].shape)
            require(got == want, f"norm state vector for layer {layer.name!r} has shape {got}, "
                                 f"expected {want}; rebuild it with Norms.init (and vmap over seeds)")
        return kernels

    def _converge(self, params: Any, state: NormState) -> NormState:
        """Lanczos from each carried block (row 0 seeds it); the top Ritz block replaces it."""
        kernels = self._checked(params, state)
        vectors = {}
        for layer in self.used:
            v, conv = state.vectors[layer.name], self.convention == "bartlett" and layer.kind == "conv"
            _, vectors[layer.name] = lanczos_top(*self._operator(layer, kernels[layer.name], v.shape[1:]), v,
                                                 self.conv_krylov_dim if conv else self.krylov_dim)
        return self._state(vectors)

    def _measure(self, params: Any, state: NormState, n_iter: int) -> tuple[dict, NormState]:
        kernels = self._checked(params, state)
        sigmas, stats, vectors = [], [], {}
        for layer in self.used:
            kernel, v = kernels[layer.name], state.vectors[layer.name]
            sigma, vectors[layer.name] = block_power_iteration(*self._operator(layer, kernel, v.shape), v, n_iter)
            sigmas.append(sigma)
            stats.append(layer_stats(layer, kernel, self.family, self.convention))
        return assemble(self.family, self.used, params, sigmas, stats, self.convention), self._state(vectors)
