"""CNN, ResNet and ViT of the paper as Flax linen modules, built by name (PROTOCOL.md §2).

Usage::

    spec = build_model("cnn", "cifar10", input_shape=(32, 32, 3), num_classes=10, init_factor=1.0)
    variables = spec.init(jax.random.key(0))          # {"params": ...[, "batch_stats": ...]}
    logits, new_state = spec.apply(variables, x, train=True, rng=dropout_key)

``spec.layers``: the weight layers the norms use, in network order, traced from the module
(:func:`trace_layers` works on any Flax module). Files: ``cnn.py``, ``resnet.py``, ``vit.py`` (module,
presets, validation each), ``common.py`` (their shared settings and layers), ``init.py`` (PyTorch
initialisers), ``conv.py``, ``layers.py`` (tracing), ``registry.py`` (``build_model``, ``paper_rule``).
"""

from jaxscale.models.layers import WeightLayer, trace_layers
from jaxscale.models.registry import FAMILIES, PRESETS, build_model
from jaxscale.models.spec import ModelSpec

__all__ = ["FAMILIES", "PRESETS", "ModelSpec", "WeightLayer", "build_model", "trace_layers"]
