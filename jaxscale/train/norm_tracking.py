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
      krylov_dim: Lanczos steps that converge the vectors at initialisation (where the top singular
        values are nearly degenerate and plain power iteration would need thousands of steps) and,
        with ``every=0``, whenever a value is read at a logged epoch. With ``every >= 1`` the in-step
        updates keep the vectors converged (≈1e-6 after the warm-up), so a read is one more step.
      block: power-iteration vectors carried per layer (block power iteration; the top singular
        values cross along training, which one vector cannot follow).
      exact_steps: the first this many optimiser steps of a run compute their in-step norms the way
        a logged read does (Lanczos re-convergence, exact to ~1e-5) instead of by the cheap update.
        Why: right after initialisation the nearly degenerate top singular values of every layer
        reorder under the first large Adam updates, faster than ``power_iterations`` warm-started
        iterations a step can follow (the cheap estimate lagged by up to 3 % over the first ~40
        steps; tests/test_norm_tracking.py). Once training settles one iteration a step tracks σ
        to ~1e-4. Costs a few dozen Lanczos runs per run, and a larger compiled epoch program.

    In-step "modes" (``step_flags``): 0 skips the update (NaN values), 1 is the cheap update, 2 the
    exact one. The mode is a function of the global step number only, so it is the same for every
    seed and stays unbatched under ``vmap``: the branch is a real ``lax.switch``, not a select that
    would compute every branch.
    """

    family: str
    layers: tuple[WeightLayer, ...]
    convention: str = "paper"
    power_iterations: int = 1
    every: int = 1
    krylov_dim: int = 64
    block: int = norms_lib.DEFAULT_BLOCK
    exact_steps: int = 0

    def init(self, params: Any, key: jax.Array) -> Any:
        state = norms_lib.init_norm_state(self.layers, params, key, self.convention,
                                          block=self.block)
        return self.refresh(params, state)

    def refresh(self, params: Any, state: Any) -> Any:
        """Re-converge the carried vectors (Lanczos started from them)."""
        return norms_lib.warm_up_norm_state(
            self.layers, params, state, convention=self.convention, krylov_dim=self.krylov_dim)

    def step_flags(self, steps: jax.Array) -> jax.Array:
        """int32 ``[n]``: the in-step mode (0 skip, 1 cheap update, 2 exact) of these global step
        numbers (0-based)."""
        steps = jnp.asarray(steps)
        mode = (steps % self.every == 0).astype(jnp.int32) if self.every > 0 else jnp.zeros(steps.shape, jnp.int32)
        if self.exact_steps > 0:
            mode = jnp.where(steps < self.exact_steps, jnp.int32(2), mode)
        return mode

    def first_steady_epoch(self, steps_per_epoch: int) -> int:
        """The first 1-based epoch whose steps are all past the exact start (for timing the steady
        state: calibrations and benchmarks)."""
        return 1 + -(-self.exact_steps // max(1, steps_per_epoch))

    def update(self, params: Any, state: Any) -> tuple[dict, Any]:
        """One in-step update: ``power_iterations`` warm-started iterations -> (log-norms, state)."""
        return norms_lib.compute_norms(
            self.family, self.layers, params, state, convention=self.convention, n_iter=self.power_iterations
        )

    def maybe_update(self, params: Any, state: Any, flag: Any) -> tuple[dict, Any]:
        """The in-step norms by mode ``flag`` (see ``step_flags``; a Python bool means cheap update
        or skip). A traced ``flag`` must be unbatched under vmap so that the branch stays a real
        branch (a batched predicate would compute every side)."""
        if flag is True:
            return self.update(params, state)
        nan = {k: jnp.full((), jnp.nan, jnp.float32) for k in norms_lib.NORM_NAMES}
        if flag is False:
            return nan, state
        if self.exact_steps <= 0:  # static: the modes are 0/1 only
            if self.every == 1:
                return self.update(params, state)
            if self.every == 0:
                return nan, state
        branches = [lambda s: (nan, s), lambda s: self.update(params, s)]
        if self.exact_steps > 0:
            branches.append(lambda s: self.read(params, s))
        mode = jnp.clip(jnp.asarray(flag).astype(jnp.int32), 0, len(branches) - 1)
        return jax.lax.switch(mode, branches, state)

    def read(self, params: Any, state: Any) -> tuple[dict, Any]:
        """``({name: natural-log norm}, new_state)`` for the current params, converged.

        Always re-converged by Lanczos started from the carried vectors: the in-step values track σ
        to ~1e-4 once training settles, but early in training, while the nearly degenerate top
        singular values of freshly initialised layers reorder, they can lag by a few percent (see
        tests/test_norm_tracking.py). Reads are rare (≈50 a run), so the logged values — the ones
        the analysis uses — are exact whatever the step budget.
        """
        state = self.refresh(params, state)
        return norms_lib.compute_norms(
            self.family, self.layers, params, state, convention=self.convention, n_iter=1)
