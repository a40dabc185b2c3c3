"""How S independent seeds become one run: the batching strategy is swappable, the step is not.

Every strategy maps the SAME single-seed function (:mod:`jaxscale.train.step`) over a leading seed
axis, so they all give the same numbers (to float tolerance: XLA may order reductions differently):

* ``"vmap"``: ``jax.vmap`` — one wide program. Dense layers become batched matmuls; convolutions
  become grouped convolutions (``conv_impl="xla"``) or batched matmuls (``"patches"``). Best where
  per-op launch cost dominates (GPUs, small models).
* ``"loop"``: the seeds run one after another *inside* one jitted program (``lax.map``, or a
  ``fori_loop`` updating the stacked state in place: no per-seed dispatch, no grouped convolutions).
* ``"chunk:K"``: a loop over groups of K seeds (``lax.map``, or a ``fori_loop`` plus one remainder
  group when outputs are updated in place), ``vmap`` inside a group — the seed-batch size per
  device: the widest program that fits in memory (``K >= S`` is ``vmap``, ``K = 1`` is ``loop``).
* ``"sequential"``: a *host* loop calling the jitted one-seed program once per seed, reading seed
  ``i`` out of the stacked state and writing it back in place (donated buffers). This is the honest
  "never slower than training the seeds one at a time" baseline, kept in the same stacked layout as
  the others so that evaluation, checkpoints and devices do not care which strategy ran.

``"auto"`` is resolved by :func:`choose_strategy`: a short calibration (a couple of steps of every
candidate, on the actual model, backend, seed count, batch size and precision), cached in memory
per (backend, device kind, model hyper-parameters, seeds, batch size, precision, norm settings).

Measured on XLA:CPU (benchmarks/RESULTS.md): one seed's epoch spends ~98 % of its time
inside kernels, so batching seeds cannot remove per-op overhead there; vmap makes every tensor S
times larger (falling out of cache) and was slower than a loop; ``loop``/``sequential`` tie.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.errors import UsageError

#: strategy kinds; a strategy string is one of these, ``"chunk:K"`` or ``"auto"``
KINDS = ("vmap", "loop", "chunk", "sequential")

#: below this many training images (seeds x sum(P) x epochs) "auto" does not calibrate: such a run is
#: over in about a minute on a CPU, and calibrating (compiling every candidate) would cost more than
#: the best choice could save
MIN_CALIBRATION_IMAGES = 200_000

Compile = Callable[[Callable, tuple, tuple], Callable]


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A parsed strategy: ``kind`` in :data:`KINDS`; ``chunk`` = seeds per group (``"chunk"`` only)."""

    kind: str
    chunk: int = 0

    def __str__(self) -> str:
        return f"chunk:{self.chunk}" if self.kind == "chunk" else self.kind

    @property
    def in_program(self) -> bool:
        """Whether the whole ensemble is one traced program (everything but ``"sequential"``)."""
        return self.kind != "sequential"


def parse_strategy(strategy: str) -> Strategy:
    """``"vmap" | "loop" | "sequential" | "chunk:K"`` -> :class:`Strategy`; :class:`UsageError` otherwise
    (``"auto"`` is not a strategy: resolve it with :func:`choose_strategy` first)."""
    s = str(strategy).strip()
    if s in ("vmap", "loop", "sequential"):
        return Strategy(s)
    if s.startswith("chunk:"):
        try:
            k = int(s.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return Strategy("chunk", k)
    raise UsageError(f"ensemble strategy {strategy!r} is not one of auto, vmap, loop, sequential, chunk:K "
                     "(K = seeds per vmapped group, e.g. chunk:4): fix parallel.ensemble")


def check_strategy(strategy: str) -> str:
    """Validate a requested strategy (``"auto"`` allowed) and return it normalised."""
    return "auto" if str(strategy).strip() == "auto" else str(parse_strategy(strategy))


def resolve_strategy(strategy: str, family: str, backend: str | None = None) -> str:
    """Static default without measuring: ``"auto"`` -> ``"loop"`` for conv-heavy families on CPU, else
    ``"vmap"``; any other strategy is returned validated. :func:`choose_strategy` measures instead."""
    if strategy != "auto":
        return check_strategy(strategy)
    backend = backend or jax.default_backend()
    if backend == "cpu" and family in ("cnn", "resnet"):
        return "loop"
    return "vmap"


# ------------------------------------------------------------------------------------------------
# Mapping a single-seed function over seeds


def _split_args(args: Sequence[Any], in_axes: tuple) -> tuple:
    return tuple(a for a, ax in zip(args, in_axes) if ax == 0)


def _merge_args(args: Sequence[Any], in_axes: tuple, per_seed: Sequence[Any]) -> list:
    it = iter(per_seed)
    return [next(it) if ax == 0 else a for a, ax in zip(args, in_axes)]


def seed_map(fn: Callable, strategy: str, in_axes: Sequence[Any],
             inplace: Optional[Mapping[int, int]] = None) -> Callable:
    """Map ``fn(*args)`` over axis 0 of the args whose ``in_axes`` entry is 0 (others are shared), as a
    *traceable* function (put it inside ``jit``/``shard_map``). Outputs gain a leading seed axis.

    ``strategy``: ``"vmap"``, ``"loop"`` or ``"chunk:K"``. ``"sequential"`` is a host loop, not a
    traceable function: build it with :func:`ensemble_program`.

    ``inplace``: ``{output position: argument position}`` (``fn`` then returns a tuple) — outputs with
    the per-seed structure of a per-seed argument, such as the new train state of an epoch for the old
    one. ``"loop"``/``"chunk:K"`` then carry that argument through a ``fori_loop`` over the seeds and
    overwrite seed ``i``'s slot in place, so a donated stacked state is updated where it lies instead
    of being sliced into a second stacked copy (``lax.map``'s outputs): one ensemble state in memory
    instead of two. ``vmap`` ignores it. Same values either way.
    """
    in_axes = tuple(in_axes)
    if any(ax not in (0, None) for ax in in_axes):
        raise ValueError(f"in_axes entries must be 0 or None, got {in_axes}")
    st = parse_strategy(strategy)
    if st.kind == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if st.kind == "sequential":
        raise ValueError("the 'sequential' strategy is a host-side loop: build it with ensemble_program()")
    inplace = dict(inplace or {})
    for j in inplace.values():
        if in_axes[j] != 0:
            raise ValueError(f"inplace argument {j} must be per-seed (in_axes 0)")

    def mapped(*args):
        if len(args) != len(in_axes):
            raise TypeError(f"expected {len(in_axes)} arguments, got {len(args)}")
        if inplace:
            return _inplace_map(fn, args, in_axes, inplace, st.chunk or 1)

        def one(sliced):
            return fn(*_merge_args(args, in_axes, sliced))

        # chunk:K is lax.map's own batch_size: vmap over groups of K seeds, a loop over the groups
        # (and one vmapped call for a remainder group when K does not divide S)
        return jax.lax.map(one, _split_args(args, in_axes), batch_size=st.chunk or None)

    return mapped


def _inplace_map(fn: Callable, args: Sequence[Any], in_axes: tuple, inplace: Mapping[int, int], k: int):
    """``seed_map``'s loop over groups of ``k`` seeds (``vmap`` inside a group of more than one) with
    the ``inplace`` outputs written into their arguments' stacked buffers, carried by ``fori_loop``;
    a remainder group (``k`` not dividing S) runs once after the loop."""
    n = jax.tree.leaves(_split_args(args, in_axes))[0].shape[0]
    k = min(k, n)  # chunk:K with K >= S is one vmapped group

    def take(a, start, size):
        if k == 1:
            return jax.lax.dynamic_index_in_dim(a, start, 0, keepdims=False)
        return jax.lax.dynamic_slice_in_dim(a, start, size, 0)

    def put(buf, v, start, size):
        v = v.astype(buf.dtype)
        if k == 1:
            return jax.lax.dynamic_update_index_in_dim(buf, v, start, 0)
        return jax.lax.dynamic_update_slice_in_dim(buf, v, start, 0)

    def run_group(start, size, carried, bufs):
        call = fn if k == 1 else jax.vmap(fn, in_axes=in_axes)
        cur = list(args)
        for j, v in carried.items():
            cur[j] = v
        sliced = [jax.tree.map(lambda a: take(a, start, size), x) if ax == 0 else x
                  for x, ax in zip(cur, in_axes)]
        outs = call(*sliced)
        if not isinstance(outs, tuple):
            raise TypeError("seed_map(..., inplace=...) needs fn to return a tuple")
        carried = dict(carried)
        bufs = dict(bufs)
        for pos, o in enumerate(outs):
            if pos in inplace:
                j = inplace[pos]
                carried[j] = jax.tree.map(lambda b, v: put(b, v, start, size), carried[j], o)
            else:
                bufs[pos] = jax.tree.map(lambda b, v: put(b, v, start, size), bufs[pos], o)
        return carried, bufs

    # the non-in-place outputs' stacked buffers, shaped from one seed's abstract outputs
    one_shapes = jax.eval_shape(lambda *a: _one_seed_outputs(fn, a, in_axes), *args)
    bufs = {pos: jax.tree.map(lambda s: jnp.zeros((n,) + s.shape, s.dtype), o)
            for pos, o in enumerate(one_shapes) if pos not in inplace}
    carried = {j: args[j] for j in sorted(set(inplace.values()))}
    n_groups, rem = divmod(n, k)

    def body(g, c):
        return run_group(g * k, k, *c)

    carried, bufs = jax.lax.fori_loop(0, n_groups, body, (carried, bufs))
    if rem:
        carried, bufs = run_group(n_groups * k, rem, carried, bufs)
    return tuple(carried[inplace[pos]] if pos in inplace else bufs[pos] for pos in range(len(one_shapes)))


def _one_seed_outputs(fn: Callable, args: Sequence[Any], in_axes: tuple):
    """``fn``'s outputs for seed 0 of ``args`` (trace only: used under ``eval_shape``)."""
    sliced = [jax.tree.map(lambda a: a[0], x) if ax == 0 else x for x, ax in zip(args, in_axes)]
    return fn(*sliced)


def _jit(fn: Callable, in_axes: tuple, donate_argnums: tuple) -> Callable:
    del in_axes  # plain jit: every argument is a whole (global) array
    return jax.jit(fn, donate_argnums=donate_argnums)


def ensemble_program(
    fn: Callable,
    strategy: str,
    in_axes: Sequence[Any],
    *,
    n_seeds: int,
    compile: Compile = _jit,
    donate_argnums: tuple[int, ...] = (),
    inplace: Optional[Mapping[int, int]] = None,
    sync_each: Optional[bool] = None,
) -> Callable:
    """A host callable running ``fn`` for every seed with ``strategy``, compiled by ``compile``.

    Args:
      fn: single-seed function returning a tuple of pytrees.
      strategy: ``"vmap" | "loop" | "chunk:K" | "sequential"``.
      in_axes: 0 (per-seed, leading seed axis) or None (shared) per argument.
      n_seeds: seeds in one block (what the traced function sees: ``S`` with plain ``jit``, the seeds
        per device group under ``shard_map``); only ``"sequential"`` needs it.
      compile: ``compile(block_fn, in_axes, donate_argnums) -> callable`` turning a traceable function
        over a block of seeds into a program (default: ``jax.jit``; the experiment loop passes its
        device-layout ``distribute``).
      donate_argnums: arguments whose buffers the program may reuse.
      inplace: ``{output position: argument position}`` — outputs with the per-seed structure of a
        per-seed argument (e.g. the new train state of an epoch, output 0, for the old one, arg 0).
        ``"sequential"``, ``"loop"`` and ``"chunk:K"`` write them back into that argument's stacked
        buffer in place instead of allocating a second stacked copy; ``"vmap"`` ignores it.
      sync_each: ``"sequential"`` only: wait for each seed's program before queuing the next.
        ``None`` (default): on the CPU backend only, where queuing many programs that hold
        collectives (a data-parallel layout) without syncing deadlocked XLA:CPU (TOOLCHAIN.md). The
        seeds form a chain through the in-place stacked state anyway, so waiting costs one dispatch
        latency per seed and epoch (measured: 8 CIFAR-10 CNN seeds, 6.6 s an epoch either way, same
        numbers). Accelerators queue freely. (A hang once blamed on queued CNN epochs was the
        batched-QR deadlock, see :func:`jaxscale.norms.power._orthonormal_rows`.)

    Returns ``program(*args)`` with the same outputs (stacked over seeds) for every strategy.
    """
    in_axes = tuple(in_axes)
    st = parse_strategy(strategy)
    if st.in_program:
        return compile(seed_map(fn, str(st), in_axes, inplace), in_axes, tuple(donate_argnums))
    return _sequential_program(fn, in_axes, n_seeds, compile, tuple(donate_argnums), dict(inplace or {}), sync_each)


def _sequential_program(fn, in_axes, n_seeds, compile, donate_argnums, inplace, sync_each) -> Callable:
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    for j in inplace.values():
        if in_axes[j] != 0:
            raise ValueError(f"inplace argument {j} must be per-seed (in_axes 0)")

    def block(i, *args):
        sliced = _split_args(args, in_axes)
        sliced = [jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False), x)
                  for x in sliced]
        outs = fn(*_merge_args(args, in_axes, sliced))
        if not isinstance(outs, tuple):
            raise TypeError("ensemble_program(strategy='sequential') needs fn to return a tuple")
        res = []
        for k, o in enumerate(outs):
            if k in inplace:
                res.append(jax.tree.map(
                    lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v.astype(buf.dtype), i, 0),
                    args[inplace[k]], o))
            else:
                res.append(jax.tree.map(lambda v: v[None], o))
        return tuple(res)

    # The in-place buffers are always donated (otherwise every seed's call would copy the whole
    # stacked state); if the caller did not donate one, it is copied once per call instead.
    inplace_args = sorted(set(inplace.values()))
    copy_first = [j for j in inplace_args if j not in donate_argnums]
    prog = compile(block, (None,) + in_axes, tuple(j + 1 for j in inplace_args))
    copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t))
    # Pieces of a non-in-place output are [groups, ...] (one seed of every device group); seed g*n+i
    # of the global ensemble is piece i of group g.
    stack = jax.jit(lambda pieces: jax.tree.map(
        lambda *p: jnp.stack(p, axis=1).reshape((-1,) + p[0].shape[1:]), *pieces))

    sync = (jax.default_backend() == "cpu") if sync_each is None else bool(sync_each)

    def program(*args):
        args = list(args)
        for j in copy_first:
            args[j] = copy(args[j])
        collected: dict[int, list] = {}
        n_out = None
        for i in range(n_seeds):
            outs = prog(np.int32(i), *args)
            n_out = len(outs)
            for k, o in enumerate(outs):
                if k in inplace:
                    args[inplace[k]] = o
                else:
                    collected.setdefault(k, []).append(o)
            if sync:
                jax.block_until_ready(outs)
        return tuple(args[inplace[k]] if k in inplace else stack(collected[k]) for k in range(n_out))

    return program


def epoch_program(fns, batch_size: int, strategy: str, n_seeds: int, compile: Compile = _jit) -> Callable:
    """``program(states, subsets, x, y, epoch) -> (states, {"loss": [S]})``: one training epoch of
    every seed (:func:`jaxscale.train.step.train_epoch`) with ``strategy``, states donated."""
    from jaxscale.train import step as step_lib

    f = functools.partial(step_lib.train_epoch, fns, batch_size)
    return ensemble_program(f, strategy, (0, 0, None, None, None), n_seeds=n_seeds, compile=compile,
                            donate_argnums=(0,), inplace={0: 0})


def init_program(fns, compile: Compile = _jit) -> Callable:
    """``program(init_keys, train_keys, norm_keys) -> stacked train state`` (keys ``uint32 [S, 2]``):
    the one-seed :func:`jaxscale.train.step.init_state` mapped over seeds with ``lax.map`` in one
    program compiled by ``compile`` (a run passes its device layout's). ``lax.map``, not ``vmap``:
    init runs once, so a loop costs nothing measurable, and it keeps one seed's peak memory.
    Same values as initialising each seed alone."""
    from jaxscale.train import step as step_lib

    one = functools.partial(step_lib.init_state, fns)
    return compile(seed_map(one, "loop", (0, 0, 0)), (0, 0, 0), ())


def init_states(fns, keys: Mapping[str, jax.Array]) -> Any:
    """A stacked ensemble train state on the default device from ``keys``
    (``{"init"|"train"|"norms": [S, 2]}``), by :func:`init_program` (benchmarks; a run uses its
    layout's program from :func:`jaxscale.train.loop.make_programs`)."""
    return init_program(fns)(keys["init"], keys["train"], keys["norms"])


# ------------------------------------------------------------------------------------------------
# "auto": a short calibration, cached


@dataclasses.dataclass(frozen=True)
class EnsembleChoice:
    """The strategy a run uses and why.

    Attributes:
      strategy: the concrete strategy (never ``"auto"``).
      requested: what the config asked for (``"auto"`` or a strategy).
      reason: ``"requested"``, ``"one seed"``, ``"calibrated"``, ``"cached"`` or ``"static default: ..."``.
      seeds: seeds per block the choice was made for.
      timings_s: candidate -> median seconds of one calibration epoch (``calib_steps`` steps of every
        seed); a candidate that could not run maps to its error message instead.
      calib_steps: optimiser steps per seed in a calibration epoch.
      calibration_s: wall seconds the calibration took (0 when not calibrated in this call).
    """

    strategy: str
    requested: str
    reason: str
    seeds: int
    timings_s: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    calib_steps: int = 0
    calibration_s: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"timings_s": dict(self.timings_s)}


class StrategyCache:
    """In-memory cache of calibrated choices (an explicit object: pass your own to isolate runs).

    Keys are :func:`calibration_key` tuples; the module-level :data:`DEFAULT_CACHE` is shared by the
    runs of one process (a sweep of P values or configs calibrates once per model/seeds/batch)."""

    def __init__(self) -> None:
        self._choices: dict[tuple, EnsembleChoice] = {}

    def get(self, key: tuple) -> Optional[EnsembleChoice]:
        return self._choices.get(key)

    def put(self, key: tuple, choice: EnsembleChoice) -> None:
        self._choices[key] = choice

    def clear(self) -> None:
        self._choices.clear()

    def __len__(self) -> int:
        return len(self._choices)


DEFAULT_CACHE = StrategyCache()


def calibration_key(fns, batch_size: int, n_seeds: int, precision: str, candidates: Sequence[str]) -> tuple:
    """What a calibrated choice depends on: backend and device kind, the model's resolved
    hyper-parameters (family, widths, dtype, conv impl, input shape, classes), seeds per block, batch
    size, precision, the in-step norm settings and the candidate list."""
    dev = jax.devices()[0]
    hyper = tuple(sorted((k, repr(v)) for k, v in dict(fns.spec.hyper).items()))
    norms = (fns.norms.convention, fns.norms.power_iterations, fns.norms.every)
    return (jax.default_backend(), str(dev.device_kind), fns.spec.family, hyper, tuple(fns.spec.input_shape),
            fns.spec.num_classes, int(n_seeds), int(batch_size), precision, norms, tuple(candidates))


def default_candidates(n_seeds: int, backend: str | None = None) -> tuple[str, ...]:
    """Strategies worth timing: ``sequential, loop, vmap``. Where ``vmap`` does not fit in memory,
    :func:`calibrate` adds the widest ``chunk:K`` (K = S/2, S/4, ...) that does — the seed-batch size
    per device, chosen automatically."""
    del n_seeds, backend  # the same list everywhere; kept as arguments for callers that specialise it
    return ("sequential", "loop", "vmap")


def memory_budget_bytes(fraction: float = 0.8) -> Optional[int]:
    """Bytes a calibration candidate's temporaries may use: ``fraction`` of the device's free memory
    (accelerators) or of physical memory (CPU); None when unknown."""
    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory stats raise assorted errors; treat as unknown
        stats = None
    if stats and "bytes_limit" in stats:
        return int(fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    try:
        return int(fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def choose_strategy(
    requested: str,
    fns,
    batch_size: int,
    n_seeds: int,
    x_train: Any,
    y_train: Any,
    *,
    precision: str = "fp32",
    total_images: Optional[int] = None,
    candidates: Optional[Sequence[str]] = None,
    calib_steps: int = 2,
    repeats: int = 3,
    min_images: int = MIN_CALIBRATION_IMAGES,
    cache: Optional[StrategyCache] = DEFAULT_CACHE,
    state: Any = None,
) -> EnsembleChoice:
    """Resolve ``requested`` (``"auto"`` or a strategy) for ``n_seeds`` seeds per block.

    ``"auto"``: one seed needs no choice (``vmap``); a run of fewer than ``min_images`` training images
    (``total_images``, when given) takes :func:`resolve_strategy`'s static default; otherwise the
    cached choice for :func:`calibration_key`, or a fresh :func:`calibrate` (then cached).

    Args:
      fns: the run's :class:`~jaxscale.train.step.StepFns`.
      x_train, y_train: the training images (uint8 ``[N,H,W,C]``) and int labels ``[N]``.
      precision: ``fp32 | tf32 | bf16`` (programs are traced in its matmul-precision context).
      state: optional stacked train state of ``n_seeds`` seeds to calibrate from (consumed: its
        buffers are donated); default: freshly initialised seeds 0..n_seeds-1.
    """
    requested = check_strategy(requested)
    if requested != "auto":
        return EnsembleChoice(requested, requested, "requested", n_seeds)
    if n_seeds <= 1:
        return EnsembleChoice("vmap", requested, "one seed", n_seeds)
    if total_images is not None and total_images < min_images:
        return EnsembleChoice(resolve_strategy("auto", fns.spec.family), requested,
                              f"static default: run of {total_images:,} training images < {min_images:,} "
                              "is too short to calibrate", n_seeds)
    candidates = tuple(check_strategy(c) for c in (candidates or default_candidates(n_seeds)))
    key = calibration_key(fns, batch_size, n_seeds, precision, candidates)
    if cache is not None and (hit := cache.get(key)) is not None:
        return dataclasses.replace(hit, reason="cached", calibration_s=0.0)
    t0 = time.perf_counter()
    timings = calibrate(fns, batch_size, n_seeds, x_train, y_train, candidates, precision=precision,
                        calib_steps=calib_steps, repeats=repeats, state=state)
    ok = {k: v for k, v in timings.items() if isinstance(v, float)}
    if not ok:
        raise UsageError(f"no ensemble strategy could run {n_seeds} seeds per device ({timings}): use fewer "
                         "seeds per device (parallel.seeds_per_device) or a smaller batch")
    best = _pick(ok)
    choice = EnsembleChoice(best, requested, "calibrated", n_seeds, timings,
                            calib_steps, time.perf_counter() - t0)
    if cache is not None:
        cache.put(key, choice)
    return choice


#: calibration times within this fraction of the fastest are a tie (a shared machine's noise between
#: rounds is larger); ties go to an in-program strategy over the host loop ``"sequential"``
TIE_FRACTION = 0.03


def _pick(timings: Mapping[str, float]) -> str:
    """The fastest candidate; within :data:`TIE_FRACTION` of it, an in-program strategy (one program
    for all seeds: no per-seed dispatch or host sync, the state updated in place) beats
    ``"sequential"``, the fallback."""
    fastest = min(timings.values())
    tied = [c for c, t in timings.items() if t <= fastest * (1 + TIE_FRACTION)]
    in_program = [c for c in tied if parse_strategy(c).in_program]
    return min(in_program or tied, key=timings.get)


def calibrate(
    fns,
    batch_size: int,
    n_seeds: int,
    x_train: Any,
    y_train: Any,
    candidates: Sequence[str],
    *,
    precision: str = "fp32",
    calib_steps: int = 2,
    repeats: int = 3,
    memory_budget: Optional[int] = None,
    state: Any = None,
) -> dict[str, Any]:
    """Median seconds of one short training epoch (``calib_steps`` full batches per seed) of
    ``n_seeds`` seeds for every candidate strategy, timed interleaved (ABCABC...) so that load from
    other processes hits all alike. Compilation and one warm-up epoch are not timed.

    A candidate whose compiled temporaries exceed ``memory_budget`` (default
    :func:`memory_budget_bytes`), or that fails with a runtime error (out of memory), maps to a string
    saying why instead of a time. The candidates share one evolving train state (values do not affect
    speed), so memory holds a single ensemble state: ``state`` (stacked, ``n_seeds`` seeds; consumed)
    or, by default, freshly initialised seeds.
    """
    from jaxscale.data.sampling import subset_indices
    from jaxscale.train import step as step_lib
    from jaxscale.train.precision import precision_context
    from jaxscale.train.state import seed_keys

    n_train = int(np.shape(y_train)[0])
    P = min(calib_steps * batch_size, n_train)
    budget = memory_budget if memory_budget is not None else memory_budget_bytes()
    ks = [seed_keys(s) for s in range(n_seeds)]
    keys = {k: jnp.stack([d[k] for d in ks]) for k in ks[0]}
    x, y = jnp.asarray(x_train), jnp.asarray(y_train).astype(jnp.int32)
    out: dict[str, Any] = {}
    e0 = 1
    with precision_context(precision):
        if state is None:
            state = init_states(fns, keys)
        subsets = jax.jit(jax.vmap(functools.partial(subset_indices, n_train=n_train, P=P)))(keys["data"])
        progs: dict[str, Callable] = {}
        pending = list(dict.fromkeys(candidates))
        while pending:
            c = pending.pop(0)
            try:
                st = parse_strategy(c)
                if st.in_program:
                    f = functools.partial(step_lib.train_epoch, fns, batch_size)
                    compiled = jax.jit(seed_map(f, c, (0, 0, None, None, None), {0: 0}),
                                       donate_argnums=(0,)).lower(
                        state, subsets, x, y, jnp.int32(e0)).compile()
                    need = _temp_bytes(compiled)
                    if budget is not None and need is not None and need > budget:
                        out[c] = f"needs {need / 2**30:.1f} GiB of temporaries > budget {budget / 2**30:.1f} GiB"
                        # too wide: try half as many seeds per vmapped group
                        k = (n_seeds if st.kind == "vmap" else st.chunk) // 2
                        if st.kind in ("vmap", "chunk") and k >= 2 and f"chunk:{k}" not in out:
                            pending.insert(0, f"chunk:{k}")
                        continue
                    progs[c] = compiled
                else:
                    progs[c] = epoch_program(fns, batch_size, c, n_seeds)
                state, m = progs[c](state, subsets, x, y, jnp.int32(e0))  # warm (compiles sequential)
                jax.block_until_ready(m)
            except (jax.errors.JaxRuntimeError, MemoryError) as e:
                progs.pop(c, None)
                out[c] = f"failed: {str(e).splitlines()[0][:200]}"
                if any(a.is_deleted() for a in jax.tree.leaves(state)):  # donated to the failed call
                    state = init_states(fns, keys)
        times: dict[str, list] = {c: [] for c in progs}
        for r in range(repeats):
            for c, prog in progs.items():
                t0 = time.perf_counter()
                state, m = prog(state, subsets, x, y, jnp.int32(e0 + 1 + r))
                jax.block_until_ready((state, m))
                times[c].append(time.perf_counter() - t0)
    for c in times:
        out[c] = float(statistics.median(times[c]))
    return out


def _temp_bytes(compiled) -> Optional[int]:
    try:
        ma = compiled.memory_analysis()
    except Exception:  # not every backend implements it; then memory is not checked
        return None
    return None if ma is None else int(getattr(ma, "temp_size_in_bytes", 0))
