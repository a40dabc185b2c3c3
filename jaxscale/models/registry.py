"""Build any model family by name: ``build_model(family, preset, input_shape=..., num_classes=...)``.

A preset is a dict of architecture hyper-parameters (PROTOCOL.md §2 tables, plus ``digits`` for the
offline 8×8×1 dataset and ``tiny`` for tests); keyword overrides replace single fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.config import CONV_IMPLS, FAMILIES, INITS
from jaxscale.models import cnn, resnet, vit
from jaxscale.models.common import require
from jaxscale.models.conv import PATCH_CHUNK_BYTES, resolve_conv_impl
from jaxscale.models.layers import WeightLayer, trace
from jaxscale.models.spec import ModelSpec

# family -> (its file: PRESETS and validate, its module class)
_FAMILIES = {"cnn": (cnn, cnn.CNN), "resnet": (resnet, resnet.ResNet), "vit": (vit, vit.ViT)}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {f: _FAMILIES[f][0].PRESETS for f in FAMILIES}
_DTYPES = ("float32", "bfloat16")

#: ``train.precision`` -> the model's ``(dtype, precision)``: its compute dtype and the precision of
#: its matmuls/convolutions. Parameters, optimiser state, logits, the loss and the norms stay float32
#: (bf16 is mixed precision with fp32 master weights). ``fp32`` asks for HIGHEST because NVIDIA GPUs
#: since Ampere default to TF32 for float32 operands, while the paper's PyTorch matmuls were true fp32;
#: ``tf32`` asks for TF32 (HIGH); bf16 operands need no request. On CPU float32 is exact either way.
PRECISION_SETTINGS = {"fp32": (jnp.float32, jax.lax.Precision.HIGHEST),
                      "tf32": (jnp.float32, jax.lax.Precision.HIGH), "bf16": (jnp.bfloat16, None)}


def _coerce(family: str, key: str, value: Any, reference: Any) -> Any:
    """An override checked against the type of the preset's value (positive int tuple, positive int or
    float); TOML/JSON lists become tuples (Flax module fields must be hashable)."""
    where = f"{family} override {key}={value!r}"
    if isinstance(reference, tuple):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value)
        require(ok, f"{where} is not a list of positive integers; write e.g. {key}={list(reference)}")
        return tuple(int(v) for v in value)
    if isinstance(reference, int):
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
        require(ok, f"{where} is not a positive integer; write e.g. {key}={reference}")
        return int(value)
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)
    require(ok, f"{where} is not a finite number; write e.g. {key}={reference}")
    return float(value)


def build_model(family: str, preset: str = "tiny", *, input_shape: tuple[int, int, int], num_classes: int,
                init_factor: float = 1.0, init: str = "head", dtype: Any = jnp.float32, conv_impl: str = "auto",
                precision: Any = None, conv_chunk_bytes: int = PATCH_CHUNK_BYTES, **overrides: Any) -> ModelSpec:
    """A model family with a preset architecture, the protocol's init and init factor (PROTOCOL §2.4).

    Args:
      family, preset: ``"cnn" | "resnet" | "vit"``; ``"mnist" | "cifar10" | "cifar100" | "digits" | "tiny"``.
      input_shape, num_classes: ``(H, W, C)`` of one (normalised, NHWC) image and the class count, from the
        dataset (so the ``cifar10`` CNN on 32×32×3 has the protocol's 16 876 106 parameters).
      init: ``"head"`` (every family) or ``"old"`` (ViT only: the ViT-MNIST runs' init).
      dtype: compute dtype (``float32`` or ``bfloat16``); params and logits are always float32.
      conv_impl: ``"xla"``, ``"patches"`` or ``"auto"`` (patches on CPU, xla elsewhere), same function
        either way; conv_chunk_bytes: the patches' chunk size (:func:`jaxscale.models.conv.conv2d`).
      precision: matmul/convolution ``jax.lax.Precision`` (None = JAX's default; :data:`PRECISION_SETTINGS`).
      **overrides: replace single preset fields, e.g. ``convs=(8, 16)``, ``dropout=0.0``.

    Raises:
      UsageError: unknown family/preset/init/override, or hyper-parameters that do not fit the input.
    """
    require(family in PRESETS, f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    presets = PRESETS[family]
    require(preset in presets, f"unknown {family} preset {preset!r}; choose one of {', '.join(presets)}")
    hyper = dict(presets[preset])
    for key, value in overrides.items():
        require(key in hyper, f"unknown {family} option {key!r}; valid options: {', '.join(hyper)}")
        hyper[key] = _coerce(family, key, value, presets[preset][key])
    fam, module_cls = _FAMILIES[family]
    require(isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
            and all(isinstance(v, (int, np.integer)) and v >= 1 for v in input_shape),
            f"input_shape={input_shape!r} is not (H, W, C) with positive integers; pass the dataset's image shape")
    input_shape = tuple(int(v) for v in input_shape)
    require(isinstance(num_classes, (int, np.integer)) and num_classes >= 2,
            f"num_classes={num_classes!r} is not an integer >= 2; pass the dataset's class count")
    inits = INITS if family == "vit" else ("head",)  # the others' older scripts had the same init
    require(init in inits, f"unknown {family} init {init!r}; choose one of {', '.join(inits)}")
    require(isinstance(init_factor, (int, float, np.number)) and not isinstance(init_factor, bool)
            and math.isfinite(init_factor) and init_factor > 0,
            f"init_factor={init_factor!r} is not a positive number; use e.g. 1.0 (PyTorch scale) or 0.05")
    try:
        dtype_name = jnp.dtype(dtype).name
    except TypeError:
        dtype_name = str(dtype)
    require(dtype_name in _DTYPES, f"unsupported compute dtype {dtype_name!r}; choose one of {', '.join(_DTYPES)}")
    fam.validate(hyper, input_shape)
    require(conv_impl in CONV_IMPLS, f"unknown conv_impl {conv_impl!r}; choose one of {', '.join(CONV_IMPLS)}")
    conv_impl = resolve_conv_impl(conv_impl)
    module = module_cls(num_classes=int(num_classes), init_factor=float(init_factor), dtype=jnp.dtype(dtype_name),
                        conv_impl=conv_impl, precision=precision, conv_chunk_bytes=int(conv_chunk_bytes),
                        **hyper, **(dict(init_scheme=init) if family == "vit" else {}))

    # train=False: BatchNorm creates its running statistics, dropout needs no rng.
    dummy = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    layers, variables, dropout = trace(module, dummy, train=False)

    @jax.jit  # one compiled program instead of hundreds of eagerly dispatched ops (seconds on CPU)
    def init_fn(key: jax.Array) -> dict:
        return dict(module.init({"params": key}, jnp.zeros(dummy.shape, dummy.dtype), train=False))

    return ModelSpec(family=family, module=module, input_shape=input_shape, num_classes=int(num_classes),
                     layers=paper_rule(family, layers, variables["params"]), has_batch_stats="batch_stats" in variables,
                     has_dropout=dropout, init=init_fn,
                     hyper=dict(family=family, preset=preset, **hyper, init=init, init_factor=float(init_factor),
                                dtype=dtype_name, input_shape=input_shape, num_classes=int(num_classes),
                                conv_impl=conv_impl))


def paper_rule(family: str, layers: tuple[WeightLayer, ...], params: Any) -> tuple[WeightLayer, ...]:
    """The family's weight layers as the paper's norm code sees them (PROTOCOL §5), from the traced ones.

    * ViT: the stacked ``(D, 3D)`` in-projection is three matrices Q, K, V (``out_slice``) and the
      out-projection is named ``o``, as the official code lists them;
    * ResNet: only the stem conv and the fc are ``in_paper`` (the official code never reaches the
      convs inside the BasicBlocks); the ``bartlett`` convention still uses every layer;
    * CNN: every layer, as traced.

    ``params``: the params (or their shapes), for the in-projection's width.
    """
    out = []
    for i, layer in enumerate(layers):
        base, _, leaf = layer.name.rpartition("/")
        if family == "vit" and leaf == "in_proj":
            d = layer.kernel(params).shape[-1] // 3
            out += [dataclasses.replace(layer, name=f"{base}/{qkv}", out_slice=(j * d, (j + 1) * d))
                    for j, qkv in enumerate("qkv")]
        elif family == "vit" and leaf == "out_proj":
            out.append(dataclasses.replace(layer, name=f"{base}/o"))
        else:
            out.append(dataclasses.replace(layer, in_paper=family != "resnet" or i in (0, len(layers) - 1)))
    return tuple(out)

