"""How S independent seeds become one program, and how many of them run side by side.

:func:`seed_map` maps the SAME single-seed function (:mod:`jaxscale.train.step`) over a leading seed
axis in one traced program: ``vmap`` over all seeds (one wide program, best where per-op launch cost
dominates: GPUs, small models), a loop over seeds inside the program (one seed's activations in
memory), or vmapped groups of K seeds looped; same numbers to float tolerance. A run picks the shape
by a static rule (:func:`batching_kind`), then, for ``"vmap"``, the largest K whose compiled programs
fit in the device's free memory (:func:`choose_group`); one that does not fit even one seed at a time
is refused before anything is allocated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxscale.errors import UsageError

#: families whose convolutions XLA:CPU runs faster one seed at a time than vmapped (see batching_kind)
LOOP_ON_CPU = ("cnn", "resnet")


def batching_kind(requested: str, family: str, backend: Optional[str] = None) -> str:
    """``parallel.ensemble`` (``"auto" | "vmap" | "loop"``) -> ``"vmap"`` or ``"loop"``. ``"auto"`` is
    ``"loop"`` for :data:`LOOP_ON_CPU` families on XLA:CPU, where one seed's epoch spends ~98 % of its
    time inside kernels (benchmarks/RESULTS.md): batching seeds removes no per-op overhead while vmap
    makes every tensor S times larger (falling out of cache) and was slower. Else ``"vmap"``."""
    if requested != "auto":
        return requested
    backend = backend or jax.default_backend()
    return "loop" if backend == "cpu" and family in LOOP_ON_CPU else "vmap"


def seed_map(fn: Callable, in_axes: Sequence[Any], group: Optional[int] = None,
             inplace: Optional[Mapping[int, int]] = None) -> Callable:
    """Map ``fn(*args)`` over axis 0 of the args whose ``in_axes`` entry is 0 (others are shared), as a
    *traceable* function (put it inside ``jit``/``shard_map``). Outputs gain a leading seed axis.

    ``group``: ``None`` = ``jax.vmap`` over all seeds; ``K >= 1`` = a ``fori_loop`` over groups of K
    seeds, ``vmap`` inside a group (K = 1: no vmap; K >= S: one group; a remainder group runs once
    after the loop), each group's outputs written into stacked buffers.

    ``inplace``: ``{output position: argument position}`` (``fn`` then returns a tuple) — outputs with
    the per-seed structure of a per-seed argument, such as the new train state of an epoch for the old
    one. The loop writes them into that argument's buffers, so a donated stacked state is updated
    where it lies instead of into a second stacked copy: one ensemble state in memory instead of two.
    ``group=None`` ignores it. Same values either way.
    """
    in_axes = tuple(in_axes)
    if any(ax not in (0, None) for ax in in_axes):
        raise ValueError(f"in_axes entries must be 0 or None, got {in_axes}")
    if group is None:
        return jax.vmap(fn, in_axes=in_axes)
    if group < 1:
        raise ValueError(f"group must be None or >= 1, got {group}")
    inplace = dict(inplace or {})
    if any(in_axes[j] != 0 for j in inplace.values()):
        raise ValueError(f"inplace arguments must be per-seed (in_axes 0), got {inplace}")
    # without in-place outputs fn may return any pytree: it is then the one output
    tupled = fn if inplace else (lambda *a: (fn(*a),))

    def mapped(*args):
        n = jax.tree.leaves([a for a, ax in zip(args, in_axes) if ax == 0])[0].shape[0]
        k = min(group, n)
        call = tupled if k == 1 else jax.vmap(tupled, in_axes=in_axes)

        def run_group(start, size, bufs):
            cur = list(args)
            for pos, j in inplace.items():
                cur[j] = bufs[pos]  # read from the buffers being written: no second copy

            def take(a):
                return (jax.lax.dynamic_index_in_dim(a, start, 0, keepdims=False) if k == 1
                        else jax.lax.dynamic_slice_in_dim(a, start, size, 0))

            def put(b, v):
                v = v.astype(b.dtype)
                return (jax.lax.dynamic_update_index_in_dim(b, v, start, 0) if k == 1
                        else jax.lax.dynamic_update_slice_in_dim(b, v, start, 0))

            outs = call(*[jax.tree.map(take, a) if ax == 0 else a for a, ax in zip(cur, in_axes)])
            return [jax.tree.map(put, b, o) for b, o in zip(bufs, outs)]

        # the other outputs' stacked buffers, shaped from seed 0's abstract outputs
        shapes = jax.eval_shape(lambda *a: tupled(*[jax.tree.map(lambda x: x[0], x) if ax == 0 else x
                                                    for x, ax in zip(a, in_axes)]), *args)
        bufs = [args[inplace[pos]] if pos in inplace else
                jax.tree.map(lambda s: jnp.zeros((n,) + s.shape, s.dtype), o) for pos, o in enumerate(shapes)]
        n_groups, rem = divmod(n, k)
        bufs = jax.lax.fori_loop(0, n_groups, lambda g, b: run_group(g * k, k, b), bufs)
        if rem:
            bufs = run_group(n_groups * k, rem, bufs)
        return tuple(bufs) if inplace else bufs[0]

    return mapped


@dataclasses.dataclass(frozen=True)
class SeedBatching:
    """How a block of seeds (the seeds of one device group) runs in a run's programs.

    Attributes:
      kind: ``"loop"`` or ``"vmap"`` (:func:`batching_kind`).
      seeds: seeds per block.
      group: seeds vmapped side by side: ``None`` = all of them, else K (1 for ``"loop"``).
      need_bytes: XLA's estimate of the device memory the run's programs need per device with this
        grouping (None where the backend has no memory analysis).
      limit_bytes: the memory they had to fit in (None = unknown: not checked).
    """

    kind: str
    seeds: int
    group: Optional[int]
    need_bytes: Optional[int] = None
    limit_bytes: Optional[int] = None

    def __str__(self) -> str:
        return ("vmap" if self.group is None else "loop" if self.kind == "loop"
                else f"vmap (groups of {self.group} seeds)")


def memory_limit_bytes(devices: Sequence[Any], override_gb: float = 0.0) -> Optional[int]:
    """Bytes one device of ``devices`` may use: ``override_gb`` (GB = 1e9 bytes) when > 0; else the
    least free memory of any of them (accelerators: ``memory_stats()`` limit minus use); else, for
    CPU devices, the host's available RAM shared by this process's devices. None when unknown."""
    if override_gb > 0:
        return int(override_gb * 1e9)
    free = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # backends without memory stats raise assorted errors: treat as unknown
            stats = None
        if stats and "bytes_limit" in stats:
            free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    if free:
        return min(free)
    host = _available_host_bytes()
    local = [d for d in devices if d.process_index == jax.process_index()]
    return None if host is None else host // max(1, len(local))


def _available_host_bytes() -> Optional[int]:
    """``MemAvailable`` of /proc/meminfo (Linux), else free physical pages; None when unknown."""
    with contextlib.suppress(OSError, StopIteration), open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def peak_bytes(compiled: Sequence[Any]) -> Optional[int]:
    """Device memory (per device) a run needs while running the compiled programs one after another:
    the arguments of the widest program (the resident arrays) plus the most any of them allocates
    beyond its arguments (outputs not aliased to donated inputs, temporaries). None without memory
    analysis."""
    try:
        stats = [c.memory_analysis() for c in compiled]
    except NotImplementedError:
        return None
    if any(m is None for m in stats):
        return None
    resident = max(int(m.argument_size_in_bytes) for m in stats)
    extra = max(int(m.output_size_in_bytes) - int(m.alias_size_in_bytes) + int(m.temp_size_in_bytes)
                for m in stats)
    return resident + extra


def choose_group(kind: str, seeds: int, need: Callable[[Optional[int]], Optional[int]],
                 limit: Optional[int]) -> SeedBatching:
    """The widest grouping of ``seeds`` seeds whose ``need(group)`` (bytes, from :func:`peak_bytes`
    of the programs built with that group) fits in ``limit``.

    ``"loop"`` only tries K = 1. ``"vmap"`` tries all seeds at once, then (if that is too big) K = 1,
    then the largest K the straight line through those two sizes allows, balanced over the groups
    (10 seeds with room for 6 run as 2 groups of 5), halving it until it fits. Raises
    :class:`UsageError` when even K = 1 does not fit. With ``limit`` or ``need`` unknown it takes the
    widest grouping unchecked."""
    def fits(b: Optional[int]) -> bool:
        return b is None or limit is None or b <= limit

    def result(group: Optional[int], b: Optional[int]) -> SeedBatching:
        return SeedBatching(kind, seeds, group, b, limit)

    def refuse(b: int) -> UsageError:
        return UsageError(
            f"{seeds} seed(s) per device need an estimated {b / 1e9:.3g} GB of device memory even one seed at a "
            f"time, more than the {limit / 1e9:.3g} GB available: use fewer seeds (train.seeds), more devices, "
            "a smaller model or batch, or set parallel.memory_limit_gb if the limit is wrong")

    if kind == "vmap":
        full = need(None)
        if fits(full):
            return result(None, full)
        if seeds == 1:
            raise refuse(full)
    one = need(1)
    if not fits(one):
        raise refuse(one)
    if kind == "loop":
        return result(1, one)
    per_seed = max(1.0, (full - one) / (seeds - 1))
    k = min(seeds - 1, 1 + int((limit - one) // per_seed))
    while k > 1:
        k = math.ceil(seeds / math.ceil(seeds / k))  # same number of groups, balanced
        b = need(k)
        if fits(b):
            return result(k, b)
        k //= 2
    return result(1, one)
