"""Numeric precision of training: ``train.precision = "fp32" | "tf32" | "bf16"``.

Two independent knobs make up a precision:

* the **compute dtype** of activations and matmul/conv operands (the model's ``dtype``): float32 for
  ``fp32``/``tf32``, bfloat16 for ``bf16``. Parameters, optimiser state, logits, the loss and every
  norm stay float32 (the models cast logits to float32; :func:`jaxscale.train.step.cross_entropy`
  reduces in float32; the norms use float32 parameters) — bf16 is mixed precision with fp32 master
  weights, never a bf16 copy of the state;
* the **matmul precision** of float32 matmuls and convolutions, which XLA reads while *tracing*
  (``jax.default_matmul_precision``): on NVIDIA GPUs since Ampere the default lets cuDNN/cuBLAS use
  TF32 (10-bit mantissa) for float32 operands, so ``fp32`` must ask for ``"highest"`` to get true
  float32 products, as the paper's PyTorch code had (PyTorch's default for matmuls is full fp32).
  ``tf32`` asks for ``"tensorfloat32"``. On CPU float32 matmuls are exact fp32 whatever is asked.

The matmul precision is part of JAX's trace context: a jitted function traced inside
:func:`precision_context` compiles with that precision, and the context is part of jit's cache key, so
the same function called outside the context is traced again (with the default). Hence the programs
of a run must be *called* inside the context every time (:func:`with_precision`,
:func:`apply_precision`), not merely built inside it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxscale.errors import UsageError

PRECISIONS = ("fp32", "tf32", "bf16")

#: jax.default_matmul_precision value per precision (None: leave JAX's default)
_MATMUL_PRECISION = {"fp32": "highest", "tf32": "tensorfloat32", "bf16": None}
_DTYPE = {"fp32": jnp.float32, "tf32": jnp.float32, "bf16": jnp.bfloat16}


def check_precision(precision: str) -> str:
    """Return ``precision`` if valid, else raise :class:`UsageError` naming the choices."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}: "
                         "set train.precision (or --precision) to fp32, tf32 or bf16")
    return precision


def compute_dtype(precision: str) -> Any:
    """The model's compute dtype: ``jnp.float32`` for fp32/tf32, ``jnp.bfloat16`` for bf16."""
    return _DTYPE[check_precision(precision)]


def matmul_precision(precision: str) -> str | None:
    """The ``jax.default_matmul_precision`` name used for ``precision`` (None = JAX's default)."""
    return _MATMUL_PRECISION[check_precision(precision)]


def precision_context(precision: str) -> contextlib.AbstractContextManager:
    """Context manager under which traced float32 matmuls/convs get ``precision``'s matmul precision
    (``fp32`` -> HIGHEST, ``tf32`` -> TF32, ``bf16`` -> JAX's default: the operands are bf16 anyway)."""
    name = matmul_precision(precision)
    return contextlib.nullcontext() if name is None else jax.default_matmul_precision(name)


def with_precision(fn: Callable, precision: str) -> Callable:
    """``fn`` called inside :func:`precision_context` — wrap a *jitted* program with this so that it is
    traced (on first call, and on every retrace) with the right matmul precision."""
    if matmul_precision(precision) is None:
        return fn

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with precision_context(precision):
            return fn(*args, **kwargs)

    return call


def apply_precision(programs: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """A copy of a ``make_programs`` dict with every callable wrapped by :func:`with_precision`
    (non-callables, e.g. the ``layout``, are kept as they are)."""
    return {k: with_precision(v, precision) if callable(v) else v for k, v in programs.items()}
