"""Devices: the ensemble on a 2-D ``("seeds", "data")`` device mesh — the one train step, transformed.

* **seed-parallel** (``parallel.data = 1``): the leading seed axis of every per-seed array (train
  state, subsets, keys) is split over ``"seeds"``; each device runs the ensemble program
  (:func:`~jaxscale.train.ensemble.seed_map` of the single-seed step) on its block of seeds, with no
  communication at all. The training and test images are replicated on every device.
* **data-parallel** (``parallel.data = D > 1``): every seed is held by a group of ``D`` devices.
  :func:`data_parallel_fns` wraps two ingredients of the *same* step: the model's ``apply`` runs on
  this device's ``1/D`` of the batch and all-gathers the logits (so the loss, the error and the
  non-finite flag are those of the whole batch), and the optimiser ``psum``s the gradients over
  ``"data"``. Every device of a group then holds the same copy of the seed's state. By design,
  **BatchNorm** normalises with per-shard statistics (as PyTorch DDP without SyncBatchNorm; the
  running statistics are averaged over the shards) and **dropout** draws independent masks per
  shard; models with neither (the paper's CNN) give the one-device numbers to float tolerance.

The seed count is padded to a multiple of the number of seed groups with extra seeds (the next seed
values) whose results are dropped. ``api = "jit"``: ``jax.jit`` of ``jax.shard_map`` over the mesh
(multi-host capable, the default); ``"pmap"``: ``jax.pmap`` over one of the two axes (one process).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxscale.config import ParallelConfig
from jaxscale.errors import UsageError
from jaxscale.models.spec import ModelSpec

SEEDS, DATA = "seeds", "data"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the seeds of an ensemble live (equal layouts place the same seeds on the same devices).

    Attributes:
      mesh: device mesh with axes ``("seeds", "data")`` and shape ``(groups, data)``.
      seeds: number of real seeds S.
      seeds_padded: ``groups * per_group`` >= S; seeds ``S .. seeds_padded-1`` are padding.
      api: ``"jit"`` or ``"pmap"``.
    """

    mesh: Mesh
    seeds: int
    seeds_padded: int
    api: str = "jit"

    @property
    def groups(self) -> int:
        return self.mesh.shape[SEEDS]

    @property
    def data(self) -> int:
        return self.mesh.shape[DATA]

    @property
    def per_group(self) -> int:
        return self.seeds_padded // self.groups

    @property
    def n_devices(self) -> int:
        return self.groups * self.data

    @property
    def seed_sharding(self) -> NamedSharding:
        """Leading (seed) axis split over ``"seeds"``, replicated over ``"data"``."""
        return NamedSharding(self.mesh, PartitionSpec(SEEDS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def needs_sync(self) -> bool:
        """Whether the epoch program contains collectives (data-parallel) or spans processes: the
        host then waits for each epoch before queuing the next (queued collective programs have
        deadlocked on fake CPU devices, TOOLCHAIN.md)."""
        return self.data > 1 or jax.process_count() > 1

    def describe(self) -> str:
        pad = self.seeds_padded - self.seeds
        kind = "seed-parallel" if self.data == 1 else f"data-parallel x{self.data}"
        return (f"{self.seeds} seeds on {self.n_devices} device(s) [{self.api}, {kind}: "
                f"{self.groups} group(s) x {self.per_group} seed(s)"
                + (f", {pad} padding seed(s)" if pad else "") + "]")

    def put_seeded(self, x: np.ndarray) -> jax.Array:
        """A host array ``[seeds_padded, ...]`` (the same on every process) as a global array split
        over the seed groups; each process materialises only its own devices' blocks."""
        x = np.asarray(x)
        assert x.shape[0] == self.seeds_padded, (x.shape, self.seeds_padded)
        return jax.make_array_from_callback(x.shape, self.seed_sharding, lambda idx: x[idx])

    def put_replicated(self, x: np.ndarray) -> jax.Array:
        """A host array (the same on every process) replicated on every device of the mesh."""
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])


def layout_shape(par: ParallelConfig, n_seeds: int, n_devices: int, n_processes: int = 1) -> tuple[int, int, int]:
    """``(groups, data, per_group)`` for ``n_seeds`` seeds on ``n_devices`` devices (pure arithmetic).

    Rules: ``data = 0`` (auto) is 1 when there are at least as many seeds as devices, else the largest
    divisor ``D`` of the device count with ``devices / D >= seeds`` (every seed its own group).
    ``seeds_per_device = 0`` spreads the seeds over ``devices // data`` groups; ``N > 0`` uses
    ``ceil(seeds / N)`` groups of ``N`` seeds. Raises :class:`UsageError` when the request does not fit.
    """
    n = n_devices
    if par.api == "pmap" and n_processes > 1:
        raise UsageError("parallel.api = \"pmap\" runs in one process only: use parallel.api = \"jit\" for multi-host runs")
    D = par.data or (1 if par.seeds_per_device or n_seeds >= n else  # 0 = auto
                     max(d for d in range(1, n + 1) if n % d == 0 and n // d >= n_seeds))
    if D > n:
        raise UsageError(f"parallel.data = {D} but only {n} device(s) are available: use parallel.data <= {n}")
    if par.seeds_per_device:
        per = par.seeds_per_device
        groups = math.ceil(n_seeds / per)
        if groups * D > n:
            need = math.ceil(n_seeds / (n // D))
            raise UsageError(
                f"parallel.seeds_per_device = {per} with {n_seeds} seeds and parallel.data = {D} needs "
                f"{groups * D} devices, but {n} are available: use seeds_per_device >= {need} (or 0 = spread evenly)")
    else:
        groups = n // D
        per = math.ceil(n_seeds / groups)
    if n_processes > 1 and groups * D != n:
        raise UsageError(
            f"this layout uses {groups * D} of the {n} devices of the {n_processes} processes, but a multi-host run "
            "must use them all: set parallel.seeds_per_device = 0 and a parallel.data that divides the device count")
    if par.api == "pmap" and groups > 1 and D > 1:
        raise UsageError(f"parallel.api = \"pmap\" maps one axis only, but this layout has {groups} seed groups x "
                         f"{D} data shards: use parallel.api = \"jit\", or parallel.data = 1 or {n}")
    return groups, D, per


def plan_layout(par: ParallelConfig, n_seeds: int, devices: Optional[Sequence[Any]] = None) -> Layout:
    """The :class:`Layout` for ``n_seeds`` seeds from ``parallel.*`` over ``devices`` (default: every
    device of every process); see :func:`layout_shape` for the rules."""
    devices = list(jax.devices() if devices is None else devices)
    groups, D, per = layout_shape(par, n_seeds, len(devices), jax.process_count())
    mesh = Mesh(np.array(devices[:groups * D], dtype=object).reshape(groups, D), (SEEDS, DATA))
    return Layout(mesh=mesh, seeds=n_seeds, seeds_padded=groups * per, api=par.api)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gather_batch(local: jax.Array, axis: str, size: int) -> jax.Array:
    """All-gather this device's ``[m, ...]`` slice into the group's ``[m * size, ...]`` batch.

    Backward: every device computes the *same* whole-batch loss from the gathered logits, so the
    cotangent of the gathered array is identical on all of them; this device's share of the gradient
    is just its own slice (no sum — summing the identical copies would count the loss ``size`` times).
    """
    return jax.lax.all_gather(local, axis, tiled=True)


def _own_slice(axis, size, _res, g):
    m = g.shape[0] // size
    return (jax.lax.dynamic_slice_in_dim(g, jax.lax.axis_index(axis) * m, m),)


_gather_batch.defvjp(lambda local, axis, size: (_gather_batch(local, axis, size), None), _own_slice)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _scale_cotangent(x: jax.Array, scale: float) -> jax.Array:
    """Identity forward; the gradient flowing back is multiplied by ``scale``."""
    return x


_scale_cotangent.defvjp(lambda x, scale: (x, None), lambda scale, _res, g: (g * scale,))


@dataclasses.dataclass(frozen=True)
class BatchShardedSpec(ModelSpec):
    """A :class:`ModelSpec` whose ``apply`` runs on this device's slice of the batch along the mesh
    axis ``axis`` of size ``size`` and returns the whole batch's logits (see the module docstring).
    Must be called inside ``shard_map``/``pmap`` with that axis bound."""

    axis: str = DATA
    size: int = 1

    def apply(self, variables, x, *, train, rng=None):
        n = x.shape[0]
        if n % self.size == 0:
            i = jax.lax.axis_index(self.axis)
            m = n // self.size
            local = jax.lax.dynamic_slice_in_dim(x, i * m, m)
            if rng is not None:
                rng = jax.random.fold_in(rng, i)  # independent dropout masks per shard
            logits, new_state = ModelSpec.apply(self, variables, local, train=train, rng=rng)
            logits = _gather_batch(logits, self.axis, self.size)
        else:
            # e.g. the kept last partial batch: computed whole on every device of the group; the psum
            # of the optimiser then adds `size` copies of gradient/size = the one-device gradient.
            logits, new_state = ModelSpec.apply(self, variables, x, train=train, rng=rng)
            logits = _scale_cotangent(logits, 1.0 / self.size)
        # Running BatchNorm statistics: averaged over the shards so every replica stays identical.
        new_state = jax.tree.map(lambda v: jax.lax.pmean(v, self.axis), new_state)
        return logits, new_state


def psum_gradients(tx: optax.GradientTransformation, axis: str) -> optax.GradientTransformation:
    """``tx`` with its incoming gradients summed over the mesh axis ``axis`` first. Same state pytree
    as ``tx`` (so checkpoints do not depend on the layout)."""

    def update(updates, state, params=None, **extra):
        return tx.update(jax.lax.psum(updates, axis), state, params, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update)


def data_parallel_fns(fns: Any, axis: str, size: int) -> Any:
    """The step ingredients (:class:`~jaxscale.train.step.StepFns`) for data parallelism over the
    mesh axis ``axis`` of ``size`` devices; ``size == 1`` returns ``fns`` unchanged."""
    if size == 1:
        return fns
    spec = fns.spec
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(ModelSpec)}
    return dataclasses.replace(fns, spec=BatchShardedSpec(**fields, axis=axis, size=size),
                               tx=psum_gradients(fns.tx, axis))


def distribute(fn: Callable, layout: Layout, in_axes: Sequence[Optional[int]], *, out_replicated: Any = False,
               donate_argnums: tuple[int, ...] = ()) -> Callable:
    """Run ``fn``, an ensemble function over a *block* of seeds, on every device of ``layout``; returns
    a callable taking and returning global ``[seeds_padded, ...]`` arrays.

    ``in_axes``: 0 (a per-seed argument: each device gets its group's ``[per_group, ...]`` block) or
    None (shared, replicated) per argument; every output has a leading seed axis. ``out_replicated``:
    a pytree prefix of the outputs with bools, True = gathered onto every device (so every process can
    read it), False = split over the seed groups. ``donate_argnums``: reused buffers (``jit`` only).
    """
    in_axes = tuple(in_axes)
    if layout.api == "pmap":
        return _distribute_pmap(fn, layout, in_axes)
    in_specs = tuple(PartitionSpec(SEEDS) if a == 0 else PartitionSpec() for a in in_axes)
    mapped = jax.shard_map(fn, mesh=layout.mesh, in_specs=in_specs, out_specs=PartitionSpec(SEEDS),
                           check_vma=False)
    out_shardings = jax.tree.map(lambda rep: layout.replicated if rep else layout.seed_sharding, out_replicated)
    return jax.jit(mapped, out_shardings=out_shardings, donate_argnums=donate_argnums)


def _distribute_pmap(fn: Callable, layout: Layout, in_axes: tuple) -> Callable:
    """``jax.pmap`` over one mesh axis: the seed groups (seed-parallel) or the data shards of a single
    group (data-parallel). pmap-in-pmap is not available in this JAX (pmap is built on shard_map), so
    both at once is the ``jit`` API's job (:func:`plan_layout` refuses it for ``pmap``)."""
    G, D, per = layout.groups, layout.data, layout.per_group
    devices = list(layout.mesh.devices.reshape(-1))
    axis = SEEDS if D == 1 else DATA
    # pmap wants its inputs split over its own 1-D device axis: move them there (device to device)
    split = NamedSharding(Mesh(np.array(devices, dtype=object), (axis,)), PartitionSpec(axis))
    mapped = jax.pmap(fn, axis_name=axis, in_axes=in_axes if D == 1 else 0, devices=devices)

    def call(*args):
        if D == 1:
            args = [jax.tree.map(lambda a: jax.device_put(a.reshape((G, per) + a.shape[1:]), split), x)
                    if ax == 0 else x for x, ax in zip(args, in_axes)]
            return jax.tree.map(lambda o: o.reshape((G * per,) + o.shape[2:]), mapped(*args))
        # pmap maps over an explicit axis: every device of the group gets the same copy...
        args = jax.tree.map(lambda a: jax.device_put(jnp.broadcast_to(a, (D,) + jnp.shape(a)), split), args)
        # ...and, as all of them end with the same result, the first one is kept
        return jax.tree.map(lambda o: o[0], mapped(*args))

    return call


def local_rows(x: jax.Array, n: int) -> np.ndarray:
    """The rows ``< n`` of a ``[seeds_padded, ...]`` array that live on this process (the host never
    needs another process's rows for progress display)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)[:n]
    rows = {}  # keyed by seed: the devices of a data-parallel group hold copies of the same rows
    for sh in x.addressable_shards:
        start = sh.index[0].start or 0
        rows.update({start + j: r for j, r in enumerate(np.asarray(sh.data)) if start + j < n})
    return np.stack([rows[k] for k in sorted(rows)]) if rows else np.zeros((0,) + x.shape[1:], x.dtype)
