"""How S independent seeds become one program: the batching strategy is swappable, the step is not.

``seed_map(fn, strategy, in_axes)`` maps a *single-seed* function over a leading seed axis:

* ``"vmap"``: ``jax.vmap`` — one wide program. Dense layers become batched matmuls (fast everywhere);
  convolutions become grouped convolutions, which XLA:CPU runs slowly (TOOLCHAIN.md: 2.7x slower than
  a loop for 8 seeds).
* ``"loop"``: ``jax.lax.map`` — the seeds run one after another *inside* the same jitted program (no
  per-seed dispatch, no grouped convs), the right choice for conv nets on CPU.

``"auto"`` resolves per backend and model family (:func:`resolve_strategy`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax


def resolve_strategy(strategy: str, family: str, backend: str | None = None) -> str:
    """``"auto"`` -> ``"loop"`` for conv-heavy families on CPU, else ``"vmap"``."""
    if strategy != "auto":
        return strategy
    backend = backend or jax.default_backend()
    if backend == "cpu" and family in ("cnn", "resnet"):
        return "loop"
    return "vmap"


def seed_map(fn: Callable, strategy: str, in_axes: Sequence[Any]) -> Callable:
    """Map ``fn(*args)`` over axis 0 of the args whose ``in_axes`` entry is 0 (others are shared).

    Outputs gain a leading seed axis. ``strategy`` is ``"vmap"`` or ``"loop"``.
    """
    in_axes = tuple(in_axes)
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if strategy != "loop":
        raise ValueError(f"unknown ensemble strategy {strategy!r}")

    def mapped(*args):
        assert len(args) == len(in_axes), (len(args), in_axes)
        per_seed = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

        def one(sliced):
            it = iter(sliced)
            full = [next(it) if ax == 0 else a for a, ax in zip(args, in_axes)]
            return fn(*full)

        return jax.lax.map(one, per_seed)

    return mapped
