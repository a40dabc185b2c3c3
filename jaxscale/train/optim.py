"""Optimisers of the protocol (PROTOCOL §3.3) as optax transforms."""

from __future__ import annotations

import optax

from jaxscale.config import TrainConfig


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Adam / SGD with *coupled* L2 (PyTorch ``weight_decay``: ``wd*θ`` added to the gradient before
    the moments), AdamW with *decoupled* decay (``θ -= lr*wd*θ`` beside the Adam step).

    Adam hyper-parameters are PyTorch's: β = (0.9, 0.999), ε = 1e-8 outside the square root. There is
    no schedule, warm-up or clipping (PROTOCOL §3.3). Decay applies to every parameter, biases and
    BatchNorm affine ones included, as in ``torch.optim``.
    """
    lr, wd = cfg.lr, cfg.weight_decay
    if cfg.optimizer == "adamw":
        return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
    base = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8) if cfg.optimizer == "adam" else optax.sgd(lr)
    if wd == 0.0:
        return base
    return optax.chain(optax.add_decayed_weights(wd), base)
