"""The contract every model family fulfils (CNN, ResNet, ViT): a :class:`ModelSpec`.

The train step is family-agnostic: it only calls ``spec.init`` and ``spec.apply`` and reads
``spec.layers`` (through the norms module). Models know nothing of training.
"""

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
      module: the Flax linen module; ``module.apply(variables, x, train=...)`` with ``x`` float32
        ``[B, H, W, C]`` (NHWC, already normalised) returning logits ``[B, num_classes]``.
      input_shape: ``(H, W, C)`` of one input image.
      num_classes: number of output classes.
      layers: ordered weight layers for the norms module (see :mod:`jaxscale.models.layers`).
      has_batch_stats: the module has a ``batch_stats`` collection (BatchNorm).
      has_dropout: the module uses a ``"dropout"`` rng when ``train=True``.
      init_fn: ``key -> variables`` (``{"params": ..., ["batch_stats": ...]}``) implementing the
        protocol's initialisation *including* the init-factor scaling (PROTOCOL §2.4).
      hyper: the resolved architecture hyper-parameters (for the manifest).
    """

    family: str
    module: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[WeightLayer, ...]
    has_batch_stats: bool
    has_dropout: bool
    init_fn: Callable[[jax.Array], dict]
    hyper: Mapping[str, Any]

    def init(self, key: jax.Array) -> dict:
        return self.init_fn(key)

    def apply(
        self,
        variables: Mapping[str, Any],
        x: jax.Array,
        *,
        train: bool,
        rng: Optional[jax.Array] = None,
    ) -> tuple[jax.Array, dict]:
        """Forward pass. Returns ``(logits [B, classes], new_model_state)``.

        ``new_model_state`` holds the updated non-parameter collections (``{"batch_stats": ...}``
        in train mode for BatchNorm models, else ``{}``). ``rng`` feeds dropout in train mode.
        """
        rngs = {"dropout": rng} if (train and self.has_dropout and rng is not None) else None
        if train and self.has_batch_stats:
            logits, new_state = self.module.apply(
                variables, x, train=True, rngs=rngs, mutable=["batch_stats"]
            )
            return logits, dict(new_state)
        logits = self.module.apply(variables, x, train=train, rngs=rngs)
        return logits, {}
