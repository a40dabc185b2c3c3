"""The contract every model family fulfils: a :class:`ModelSpec`. The train step only calls ``spec.init``
and ``spec.apply`` and reads ``spec.layers`` (through the norms); models know nothing of training."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax

from jaxscale.models.layers import WeightLayer


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A built model: the Flax module plus everything the rest of jaxscale needs to know about it.

    Attributes:
      family: ``"cnn" | "resnet" | "vit"``.
      module: the Flax linen module: ``module.apply(variables, x, train=...)`` maps ``x`` float32
        ``[B, H, W, C]`` (NHWC, already normalised; ``input_shape`` = ``(H, W, C)``) to logits
        ``[B, num_classes]``.
      layers: ordered weight layers for the norms (:mod:`jaxscale.models.layers`).
      has_batch_stats: the module has a ``batch_stats`` collection (BatchNorm).
      has_dropout: the module uses a ``"dropout"`` rng when ``train=True``.
      init: ``key -> variables`` (``{"params": ..., ["batch_stats": ...]}``), the protocol's
        initialisation *including* the init-factor scaling (PROTOCOL §2.4).
      hyper: the resolved architecture hyper-parameters (for the manifest).
    """

    family: str
    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[WeightLayer, ...]
    has_batch_stats: bool
    has_dropout: bool
    init: Callable[[jax.Array], dict]
    hyper: Mapping[str, Any]

    def apply(self, variables: Mapping[str, Any], x: jax.Array, *, train: bool,
              rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
        """``(logits [B, classes], new_model_state)``: the updated non-parameter collections
        (``{"batch_stats": ...}`` in train mode for BatchNorm models, else ``{}``); ``rng`` feeds dropout."""
        rngs = {"dropout": rng} if (train and self.has_dropout and rng is not None) else None
        if train and self.has_batch_stats:
            logits, new_state = self.module.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
            return logits, dict(new_state)
        return self.module.apply(variables, x, train=train, rngs=rngs), {}
