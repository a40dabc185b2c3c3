"""The per-seed train state: everything a seed needs to continue, in one pytree, so vmapping over
seeds, sharding over devices and checkpointing are the same operation on it. An ensemble is this
pytree with a leading seed axis on every leaf."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """Per-seed state. Shapes below are for one seed (an ensemble adds a leading ``[S]`` axis).

    Attributes:
      params: the model's ``params`` collection.
      batch_stats: the ``batch_stats`` collection (``{}`` for models without BatchNorm).
      opt_state: optax state.
      norm_state: power-iteration vectors carried between steps (see :mod:`jaxscale.norms`).
      key: uint32 ``[2]`` raw PRNG key for this seed's training randomness (shuffles, augmentation,
        dropout); per-step/per-epoch keys are ``fold_in``s of it, so resuming needs only ``key`` and
        ``step``.
      step: int32 scalar, optimiser steps taken.
      nonfinite: bool scalar, the loss became NaN/inf at some step. The seed is only flagged: NaN
        then propagates through its own params, and the other seeds are unaffected.
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    norm_state: Any
    key: jax.Array
    step: jax.Array
    nonfinite: jax.Array

    def variables(self) -> dict:
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        return v


def seed_keys(seed: int) -> dict[str, jax.Array]:
    """Independent raw keys for one seed: ``data`` (the P-subset permutation), ``init`` (weights),
    ``train`` (shuffles/augmentation/dropout), ``norms`` (power-iteration start vectors).

    The init key depends on the seed only, so a seed starts from the same weights at every P, as in
    the official code (PROTOCOL §3.2).
    """
    k = jax.random.PRNGKey(seed)
    data, init, train, norms = jax.random.split(k, 4)
    return {"data": data, "init": init, "train": train, "norms": norms}
