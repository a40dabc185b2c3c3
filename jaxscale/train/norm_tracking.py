"""Glue between the train step and :mod:`jaxscale.norms`: when the carried power-iteration vectors
advance, and how norms are read at logged epochs."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxscale import norms as norms_lib
from jaxscale.models.layers import WeightLayer


@dataclasses.dataclass(frozen=True)
class NormTracker:
    """Static norm settings of a run.

    Attributes:
      family: model family (the ``paper`` convention is family-specific).
      layers: the model's declared weight layers.
      convention: ``"paper"`` or ``"bartlett"``.
      power_iterations: power iterations per in-step update.
      every: advance the vectors every this many optimiser steps (0: only when read).
      read_iterations: iterations when a value is *read* at a logged epoch. Reading is rare (≈50 times
        a run), so it can afford more iterations than a step; with ``every=0`` the vectors are only
        advanced here, so it must converge them from the previous logged epoch's vectors.
    """

    family: str
    layers: tuple[WeightLayer, ...]
    convention: str = "paper"
    power_iterations: int = 1
    every: int = 1
    read_iterations: int = 0

    def _read_iters(self) -> int:
        if self.read_iterations:
            return self.read_iterations
        return max(self.power_iterations, 4) if self.every else 64

    def init(self, params: Any, key: jax.Array) -> Any:
        return norms_lib.init_norm_state(self.layers, params, key, self.convention)

    def step_flags(self, steps: jax.Array) -> jax.Array:
        """bool ``[n]``: which of these global step numbers advance the vectors."""
        if self.every <= 0:
            return jnp.zeros(steps.shape, bool)
        return steps % self.every == 0

    def update(self, params: Any, state: Any) -> Any:
        _, state = norms_lib.compute_norms(
            self.family, self.layers, params, state, convention=self.convention, n_iter=self.power_iterations
        )
        return state

    def maybe_update(self, params: Any, state: Any, flag: Any) -> Any:
        if self.every == 1 or flag is True:
            return self.update(params, state)
        if self.every == 0 or flag is False:
            return state
        return jax.lax.cond(flag, lambda s: self.update(params, s), lambda s: s, state)

    def read(self, params: Any, state: Any) -> tuple[dict, Any]:
        """``({name: natural-log norm}, new_state)`` for the current params."""
        return norms_lib.compute_norms(
            self.family, self.layers, params, state, convention=self.convention, n_iter=self._read_iters()
        )
