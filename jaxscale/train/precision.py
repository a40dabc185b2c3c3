"""Numeric precision of training: ``train.precision = "fp32" | "tf32" | "bf16"``.

Two independent knobs make up a precision, both fields of the model (so they are part of what
``jit`` traces and caches, whoever calls the programs):

* the **compute dtype** of activations and matmul/conv operands (the model's ``dtype``): float32 for
  ``fp32``/``tf32``, bfloat16 for ``bf16``. Parameters, optimiser state, logits, the loss and every
  norm stay float32 (the models cast logits to float32; :func:`jaxscale.train.step.cross_entropy`
  reduces in float32; the norms use float32 parameters) — bf16 is mixed precision with fp32 master
  weights, never a bf16 copy of the state;
* the **matmul precision** of the model's float32 matmuls and convolutions (the model's
  ``precision``, passed to every ``dot_general``/convolution): on NVIDIA GPUs since Ampere the
  default lets cuDNN/cuBLAS use TF32 (10-bit mantissa) for float32 operands, so ``fp32`` asks for
  ``HIGHEST`` to get true float32 products, as the paper's PyTorch code had (PyTorch's default for
  matmuls is full fp32); ``tf32`` asks for ``HIGH`` (TF32); ``bf16`` leaves the default (its operands
  are bf16 anyway). On CPU float32 matmuls are exact fp32 whatever is asked. The norms' own
  matmuls always ask for ``HIGHEST`` (:mod:`jaxscale.norms.power`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Precision:
    """``dtype``: the model's compute dtype; ``matmul``: its matmul precision (None = JAX's default)."""

    dtype: Any
    matmul: Optional[jax.lax.Precision]


_PRECISIONS = {
    "fp32": Precision(jnp.float32, jax.lax.Precision.HIGHEST),
    "tf32": Precision(jnp.float32, jax.lax.Precision.HIGH),
    "bf16": Precision(jnp.bfloat16, None),
}


def resolve_precision(name: str) -> Precision:
    """The :class:`Precision` of a ``train.precision`` value (validated by the config)."""
    return _PRECISIONS[name]
