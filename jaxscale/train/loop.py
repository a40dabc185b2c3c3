"""The experiment loop: for each P, an ensemble of seeds trained as one jitted program per epoch,
evaluated at the paper's logged epochs, into a :class:`~jaxscale.results.Curves`.

Host work per epoch is one dispatch; the host only reads values back at logged epochs (and, at most
about once a second, a loss for the progress line). The programs run on a device layout
(:mod:`jaxscale.train.sharding`: seeds and/or each seed's batch split over devices and hosts), and the
loop checkpoints at epoch boundaries and resumes from them (:mod:`jaxscale.train.checkpoint`), stopping
cleanly on SIGTERM/SIGINT (:mod:`jaxscale.train.preemption`).
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.config import Config, check_against_dataset
from jaxscale.data import ArrayDataset
from jaxscale.errors import UsageError
from jaxscale.models.spec import ModelSpec
from jaxscale.results import Curves
from jaxscale.train import distributed
from jaxscale.train import step as step_lib
from jaxscale.train.checkpoint import Checkpoints
from jaxscale.train.ensemble import SeedBatching, batching_kind, choose_group, memory_limit_bytes, peak_bytes, seed_map
from jaxscale.train.norm_tracking import NormTracker
from jaxscale.train.optim import make_optimizer
from jaxscale.train.preemption import Interrupted, StopFlag
from jaxscale.train.schedule import logged_epochs
from jaxscale.train.sharding import DATA, Layout, data_parallel_fns, distribute, local_rows, plan_layout
from jaxscale.train.precision import resolve_precision
from jaxscale.train.state import seed_keys

ProgressFn = Callable[[dict], None]


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Everything static about a run, built once from a validated config (see :func:`build_experiment`):
    the device ``layout``, how its seeds are batched (``batching``) and the run's jitted ``programs``
    (:func:`make_programs`), already compiled for the first P."""

    cfg: Config
    dataset: ArrayDataset
    spec: ModelSpec
    fns: step_lib.StepFns
    epochs_logged: np.ndarray
    layout: Layout
    batching: Optional[SeedBatching] = None
    programs: Optional[dict] = None

    @property
    def strategy(self) -> str:
        """How each device's seeds run, e.g. ``"loop"``, ``"vmap"``, ``"vmap (groups of 4 seeds)"``."""
        return str(self.batching)

    @property
    def norm_names(self) -> tuple[str, ...]:
        from jaxscale.norms import NORM_NAMES

        return NORM_NAMES


def build_experiment(cfg: Config, dataset: Optional[ArrayDataset] = None,
                     layout: Optional[Layout] = None) -> Experiment:
    """Load the dataset (unless given), build the model and the step ingredients, and plan the run on
    ``layout`` (default: planned from ``cfg.parallel`` over every device): how seeds are batched, from
    XLA's memory analysis of the run's compiled programs (:func:`plan_programs`). Allocates nothing
    on the devices. Raises UsageError for anything the config gets wrong that needs the dataset or
    the model to see, and for a run that cannot fit in device memory."""
    from jaxscale.data import load_dataset
    from jaxscale.data.presets import default_preprocessing
    from jaxscale.data.transforms import preprocess
    from jaxscale.models import build_model

    if dataset is None:
        dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    check_against_dataset(cfg, dataset.n_train)
    precision = resolve_precision(cfg.train.precision)
    spec = build_model(
        cfg.model.family,
        cfg.model.preset,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        init_factor=cfg.model.init_factor,
        init=cfg.model.init,
        dtype=precision.dtype,
        precision=precision.matmul,
        conv_impl=cfg.model.conv_impl,
        **dict(cfg.model.arch),
    )
    pre = default_preprocessing(cfg.model.family, cfg.data.dataset)
    mean = cfg.data.mean if cfg.data.mean is not None else pre["mean"]
    std = cfg.data.std if cfg.data.std is not None else pre["std"]
    channels = dataset.input_shape[-1]
    if len(mean) not in (1, channels):
        raise UsageError(f"data.mean has {len(mean)} values but {dataset.name} images have {channels} channels: give 1 or {channels}")
    augment = cfg.data.augment if cfg.data.augment is not None else pre["augment"]
    augment_eval = cfg.data.augment_eval if cfg.data.augment_eval is not None else (augment != "none")
    common = dict(pixel_max=dataset.pixel_max, mean=tuple(mean), std=tuple(std))
    prep_train = functools.partial(preprocess, augment=augment, **common)
    prep_eval = functools.partial(preprocess, augment=augment if augment_eval else "none", **common)
    tracker = NormTracker(
        family=spec.family,
        layers=spec.layers,
        convention=cfg.norms.convention,
        power_iterations=cfg.norms.power_iterations,
        every=cfg.norms.every,
        exact_steps=cfg.norms.exact_steps if cfg.norms.every > 0 else 0,
    )
    fns = step_lib.StepFns(spec=spec, tx=make_optimizer(cfg.train), prep_train=prep_train,
                           prep_eval=prep_eval, norms=tracker)
    exp = Experiment(cfg=cfg, dataset=dataset, spec=spec, fns=fns,
                     epochs_logged=logged_epochs(cfg.train.epochs, cfg.train.log_points),
                     layout=layout or plan_layout(cfg.parallel, cfg.train.seeds))
    programs, batching = plan_programs(exp, exp.layout)
    return dataclasses.replace(exp, batching=batching, programs=programs)


# ------------------------------------------------------------------------------------------------
# Jitted ensemble programs (built from the single-seed functions of step.py)


def stacked_seed_keys(seeds) -> dict[str, jax.Array]:
    """``{"data"|"init"|"train"|"norms": uint32 [S, 2]}`` for the given seed values."""
    ks = [seed_keys(int(s)) for s in seeds]
    return {k: jnp.stack([d[k] for d in ks]) for k in ks[0]}


def make_programs(exp: Experiment, layout: Optional[Layout] = None) -> dict[str, Any]:
    """The run's jitted ensemble functions on ``layout`` (default: the experiment's), batching seeds
    as planned: ``exp.programs`` on the experiment's layout (already compiled for the first P), else
    planned for ``layout`` (:func:`plan_programs`). See :func:`build_programs`."""
    layout = layout or exp.layout
    if layout == exp.layout and exp.programs is not None:
        return exp.programs
    return plan_programs(exp, layout)[0]


def build_programs(exp: Experiment, layout: Layout, group: Optional[int]) -> dict[str, Any]:
    """The jitted ensemble functions of a run on ``layout`` with ``group`` seeds vmapped side by side
    (:func:`~jaxscale.train.ensemble.seed_map`: None = all of a device's seeds, K >= 1 = groups of K);
    every one maps a single-seed function of :mod:`jaxscale.train.step` over seeds and devices.

    Per-seed arguments and outputs are global ``[seeds, ...]`` arrays (split over the layout's seed
    groups; the seed count must be a multiple of ``layout.groups``). ``eval``'s metrics and
    ``nonfinite`` come back replicated, so every process can read all seeds. The returned dict also
    holds the ``layout``.
    """
    fns = data_parallel_fns(exp.fns, DATA, layout.data)
    bs = exp.cfg.train.batch_size
    eval_bs = exp.cfg.data.eval_batch_size

    def epoch_block(states, subsets, x, y, epoch):
        f = functools.partial(step_lib.train_epoch, fns, bs)
        return seed_map(f, (0, 0, None, None, None), group, inplace={0: 0})(states, subsets, x, y, epoch)

    def eval_one(state, subset, x_tr, y_tr, x_te, y_te, epoch):
        key = step_lib.eval_key(state, epoch)
        tr_idx, tr_mask = _chunks(subset, eval_bs)
        te_idx, te_mask = _chunks(jnp.arange(x_te.shape[0], dtype=jnp.int32), eval_bs)
        tr = step_lib.evaluate(fns, state, tr_idx, tr_mask, x_tr, y_tr, jax.random.fold_in(key, 0))
        te = step_lib.evaluate(fns, state, te_idx, te_mask, x_te, y_te, jax.random.fold_in(key, 1))
        logs, norm_state = fns.norms.read(state.params, state.norm_state)
        out = {"train_error": tr["error"], "train_loss": tr["loss"], "test_error": te["error"],
               "test_loss": te["loss"], **{f"log_{k}": v for k, v in logs.items()}}
        # A diverged seed reports NaN everywhere (argmax of NaN logits would look like a number).
        # Its flag is set by the first step with a non-finite loss; if the epoch's last update made the
        # weights non-finite, the losses evaluated here already show it, so flag it now.
        bad = state.nonfinite | ~jnp.isfinite(tr["loss"]) | ~jnp.isfinite(te["loss"])
        out = {k: jnp.where(bad, jnp.nan, v.astype(jnp.float32)) for k, v in out.items()}
        return out, state.replace(norm_state=norm_state, nonfinite=bad)

    def eval_block(states, subsets, x_tr, y_tr, x_te, y_te, epoch):
        return seed_map(eval_one, (0, 0, None, None, None, None, None), group, inplace={1: 0})(
            states, subsets, x_tr, y_tr, x_te, y_te, epoch)

    # init runs once: a loop keeps one seed's peak memory and costs nothing measurable
    init_block = seed_map(functools.partial(step_lib.init_state, fns), (0, 0, 0), 1)

    @functools.lru_cache(maxsize=None)
    def subsets_program(n_train: int, P: int):
        from jaxscale.data.sampling import subset_indices

        return distribute(jax.vmap(functools.partial(subset_indices, n_train=n_train, P=P)), layout, (0,))

    def subsets(data_keys, n_train, P):
        return subsets_program(int(n_train), int(P))(data_keys)

    return {
        "layout": layout,
        "init": distribute(init_block, layout, (0, 0, 0)),
        "subsets": subsets,
        "epoch": distribute(epoch_block, layout, (0, 0, None, None, None), donate_argnums=(0,)),
        "eval": distribute(eval_block, layout, (0, 0, None, None, None, None, None),
                           out_replicated=(True, False), donate_argnums=(0,)),
        "nonfinite": distribute(lambda s: s.nonfinite, layout, (0,), out_replicated=True),
    }


def plan_programs(exp: Experiment, layout: Layout) -> tuple[dict[str, Any], SeedBatching]:
    """The run's programs on ``layout`` and how they batch seeds: the static rule
    (:func:`~jaxscale.train.ensemble.batching_kind`) picks loop or vmap, and the vmap group size is
    the widest whose epoch and evaluation programs, compiled for the first P from abstract arrays
    (nothing is allocated), fit in ``parallel.memory_limit_gb`` or the devices' free memory
    (:func:`~jaxscale.train.ensemble.choose_group`). The chosen programs stay compiled: the run's
    first P reuses them (``pmap`` layouts are measured on the equivalent ``jit`` layout and compile
    their own). Raises UsageError when one seed at a time does not fit."""
    cfg = exp.cfg
    measure_on = dataclasses.replace(layout, api="jit")
    built: dict[Any, dict] = {}

    def need(group):
        progs = built[group] = build_programs(exp, measure_on, group)
        return _programs_bytes(exp, progs, measure_on)

    kind = batching_kind(cfg.parallel.ensemble, exp.spec.family)
    limit = memory_limit_bytes(list(layout.mesh.devices.flat), cfg.parallel.memory_limit_gb)
    batching = choose_group(kind, layout.per_group, need, limit)
    programs = built[batching.group] if layout.api == "jit" else build_programs(exp, layout, batching.group)
    return programs, batching


def _programs_bytes(exp: Experiment, programs: dict, layout: Layout) -> Optional[int]:
    """Per-device bytes the run needs with ``programs`` (:func:`~jaxscale.train.ensemble.peak_bytes`
    of its epoch and evaluation programs, compiled here for the first P from abstract arrays, plus
    the larger subsets of the largest P)."""
    ds, Ps = exp.dataset, exp.cfg.train.P
    n = layout.seeds_padded

    def abstract(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    def seeded(tree):
        return jax.tree.map(lambda s: abstract(s.shape, s.dtype, layout.seed_sharding), tree)

    key = abstract((n, 2), jnp.uint32, layout.seed_sharding)
    states = seeded(jax.eval_shape(programs["init"], key, key, key))
    subsets = seeded(jax.eval_shape(lambda k: programs["subsets"](k, ds.n_train, Ps[0]), key))
    x_tr, x_te = (abstract(a.shape, a.dtype, layout.replicated) for a in (ds.x_train, ds.x_test))
    y_tr, y_te = (abstract(a.shape, jnp.int32, layout.replicated) for a in (ds.y_train, ds.y_test))
    epoch = jax.ShapeDtypeStruct((), jnp.int32)
    compiled = [programs["epoch"].lower(states, subsets, x_tr, y_tr, epoch).compile(),
                programs["eval"].lower(states, subsets, x_tr, y_tr, x_te, y_te, epoch).compile()]
    peak = peak_bytes(compiled)
    if peak is None:
        return None
    return peak + (max(Ps) - Ps[0]) * layout.per_group * subsets.dtype.itemsize


def _chunks(idx: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """Pad ``idx [n]`` to ``[ceil(n/c), c]`` chunks with a float mask (static shapes)."""
    n = idx.shape[0]
    c = min(chunk, n)
    n_chunks = -(-n // c)
    pad = n_chunks * c - n
    mask = jnp.concatenate([jnp.ones(n, jnp.float32), jnp.zeros(pad, jnp.float32)]).reshape(n_chunks, c)
    idx = jnp.concatenate([idx, jnp.zeros(pad, idx.dtype)]).reshape(n_chunks, c)
    return idx, mask


# ------------------------------------------------------------------------------------------------
# The host loop


@dataclasses.dataclass
class RunStats:
    wall_s: float = 0.0
    per_P: list = dataclasses.field(default_factory=list)  # {"P", "wall_s", "compile_s", "img_per_s"}
    nonfinite: list = dataclasses.field(default_factory=list)  # {"P", "seed"} of diverged seeds
    #: where this session started: None (from scratch) or {"step", "P", "epoch"} of the checkpoint
    resumed_from: Optional[dict] = None
    #: wall time of earlier sessions of this run (before the checkpoint it resumed from)
    earlier_wall_s: float = 0.0
    layout: str = ""


def training_fingerprint(cfg: Config) -> dict:
    """The parts of the config a checkpoint depends on: everything except how it is run
    ([parallel], [checkpoint]), names and the data path. Resuming with a different one is refused."""
    d = cfg.to_dict()
    for k in ("name", "description", "parallel", "checkpoint"):
        d.pop(k, None)
    d["data"].pop("data_dir", None)
    return d


EpochHook = Callable[[int, int, Any], Any]


def run_experiment(
    exp: Experiment,
    *,
    progress: Optional[ProgressFn] = None,
    programs: Optional[dict] = None,
    layout: Optional[Layout] = None,
    checkpoints: Optional[Checkpoints] = None,
    stop: Optional[StopFlag] = None,
    on_epoch: Optional[EpochHook] = None,
) -> tuple[Curves, RunStats]:
    """Train every P of the config, all seeds at once, and return the learning curves.

    Args:
      progress: receives dicts ``{"event": "epoch"|"log"|"P_done", "P", "P_index", "n_P", "epoch",
        "epochs", "loss", "img_per_s", "eta_s", ...}``, plus ``"checkpoint"`` (``step``, ``P``,
        ``epoch``) after each save and ``"resume"`` (``step``, ``P``, ``P_index``, ``epoch``) when
        continuing from a checkpoint; training itself never prints.
      programs: from :func:`make_programs` (built here if omitted, for ``layout``).
      layout: device layout (default: planned from ``cfg.parallel`` over all devices).
      checkpoints: if given, resume from its newest usable checkpoint and save by its policy; on
        ``stop`` a checkpoint is always saved.
      stop: checked after every epoch; when set, the run saves a checkpoint (if ``checkpoints``) and
        raises :class:`~jaxscale.train.preemption.Interrupted`.
      on_epoch: ``f(P_index, epoch, states) -> states`` applied after each training epoch (before
        evaluation); for fault-injection tests and experiments.
    """
    cfg = exp.cfg
    T = cfg.train.epochs
    S = cfg.train.seeds
    if programs is not None:
        layout = programs["layout"]
    layout = layout or plan_layout(cfg.parallel, S)
    programs = programs or make_programs(exp, layout)
    seeds = np.asarray(cfg.seed_values(), np.int64)
    # padding seeds are just the next seed values: trained, then dropped
    all_seeds = cfg.train.seed_start + np.arange(layout.seeds_padded, dtype=np.int64)
    curves = Curves.empty(cfg.train.P, seeds, exp.epochs_logged, exp.norm_names)
    keys = {k: layout.put_seeded(np.asarray(v)) for k, v in stacked_seed_keys(all_seeds).items()}
    ds = exp.dataset
    x_tr, y_tr = layout.put_replicated(ds.x_train), layout.put_replicated(ds.y_train.astype(np.int32))
    x_te, y_te = layout.put_replicated(ds.x_test), layout.put_replicated(ds.y_test.astype(np.int32))
    logged = {int(e): i for i, e in enumerate(exp.epochs_logged)}
    stats = RunStats(layout=layout.describe())
    t_run = time.perf_counter()

    start_pi, start_epoch, resume_step = 0, 0, None
    if checkpoints is not None:
        found = checkpoints.choose()
        if found is not None:
            resume_step, meta = found
            if meta.get("config") != training_fingerprint(cfg):
                raise UsageError(
                    f"{checkpoints.directory} holds checkpoints of a different training config: resume with the "
                    "config (and --set/--P/--seeds/--epochs flags) it was started with, or pass --restart to start over")
            start_pi, start_epoch = int(meta["P_index"]), int(meta["epoch"])
            stats.per_P, stats.nonfinite = list(meta["stats"]["per_P"]), list(meta["stats"]["nonfinite"])
            stats.earlier_wall_s = float(meta["stats"]["wall_s"])
            stats.resumed_from = {"step": resume_step, "P": int(cfg.train.P[start_pi]), "epoch": start_epoch}
            for k, v in checkpoints.restore_curves(resume_step).items():
                if k in curves.values and v.shape == curves.values[k].shape:
                    curves.values[k][...] = v
            if progress:
                progress({"event": "resume", "step": resume_step, "P": int(cfg.train.P[start_pi]),
                          "P_index": start_pi, "n_P": len(cfg.train.P), "epoch": start_epoch, "epochs": T})
            if start_epoch >= T:  # that P was complete: continue with the next one
                start_pi, start_epoch = start_pi + 1, 0

    # images counted from where this session starts, for the ETA
    total_imgs = (sum(cfg.train.P[start_pi:]) * T - (cfg.train.P[start_pi] * start_epoch if start_pi < len(cfg.train.P) else 0)) * S
    done_imgs = 0
    # Throughput clock: counts only synced training intervals, excluding each P's first (compiling)
    # epoch and the evaluations at logged epochs.
    steady_time, steady_imgs = 0.0, 0

    def meta_for(pi: int, epoch: int) -> dict:
        return {"format": 1, "P_index": pi, "P": int(cfg.train.P[pi]), "epoch": epoch, "epochs": T,
                "seeds": S, "seeds_padded": layout.seeds_padded, "config": training_fingerprint(cfg),
                "stats": {"per_P": stats.per_P, "nonfinite": stats.nonfinite,
                          "wall_s": stats.earlier_wall_s + time.perf_counter() - t_run}}

    for pi, P in enumerate(cfg.train.P):
        if pi < start_pi:
            continue
        t_P = time.perf_counter()
        states = programs["init"](keys["init"], keys["train"], keys["norms"])
        subsets = programs["subsets"](keys["data"], ds.n_train, int(P))
        first_epoch = 1
        if resume_step is not None and pi == start_pi and start_epoch > 0:
            states = _restore_state(checkpoints, resume_step, states, layout)
            first_epoch = start_epoch + 1
        compile_s, P_steady_time, P_steady_imgs = 0.0, 0.0, 0
        mark, pending = time.perf_counter(), 0
        for epoch in range(first_epoch, T + 1):
            states, m = programs["epoch"](states, subsets, x_tr, y_tr, np.int32(epoch))
            if on_epoch is not None:
                states = on_epoch(pi, epoch, states)
            if layout.needs_sync:
                jax.block_until_ready(states)
            done_imgs += P * S
            if epoch > first_epoch:
                pending += P * S
            is_log = epoch in logged
            if epoch == first_epoch or is_log or epoch == T or time.perf_counter() - mark > 1.0:
                loss = float(np.nanmean(local_rows(m["loss"], S)))  # syncs
                now = time.perf_counter()
                if epoch == first_epoch:
                    compile_s = now - t_P
                else:
                    P_steady_time += now - mark
                    P_steady_imgs += pending
                mark, pending = now, 0
                if progress:
                    tot_t, tot_i = steady_time + P_steady_time, steady_imgs + P_steady_imgs
                    img_s = tot_i / tot_t if tot_t > 0 else float("nan")
                    eta = (total_imgs - done_imgs) / img_s if tot_t > 0 else float("nan")
                    progress({"event": "epoch", "P": int(P), "P_index": pi, "n_P": len(cfg.train.P),
                              "epoch": epoch, "epochs": T, "loss": loss, "img_per_s": img_s, "eta_s": eta})
            if is_log:
                out, states = programs["eval"](states, subsets, x_tr, y_tr, x_te, y_te, np.int32(epoch))
                out = jax.device_get(out)
                ti = logged[epoch]
                for k, v in out.items():
                    curves.values[k][pi, :, ti] = np.asarray(v, np.float64)[:S]
                mark = time.perf_counter()  # evaluation time is not training throughput
                if progress:
                    progress({"event": "log", "P": int(P), "P_index": pi, "epoch": epoch,
                              "test_error": float(np.nanmean(curves.values["test_error"][pi, :, ti])),
                              "train_error": float(np.nanmean(curves.values["train_error"][pi, :, ti]))})
            if epoch == T:
                steady_time += P_steady_time
                steady_imgs += P_steady_imgs
                bad = np.asarray(jax.device_get(programs["nonfinite"](states)))[:S]
                stats.nonfinite += [{"P": int(P), "seed": int(seeds[i])} for i in np.flatnonzero(bad)]
                wall = time.perf_counter() - t_P
                stats.per_P.append({"P": int(P), "wall_s": wall, "compile_s": compile_s,
                                    "img_per_s": P_steady_imgs / P_steady_time if P_steady_time > 0 else float("nan")})
            stopping = stop is not None and distributed.any_process(stop.requested)
            if checkpoints is not None and (stopping or checkpoints.due(epoch)):
                step = pi * T + epoch
                checkpoints.save(step, states, curves.values, meta_for(pi, epoch))
                if progress:
                    progress({"event": "checkpoint", "step": step, "P": int(P), "P_index": pi, "epoch": epoch})
            if stopping:
                if checkpoints is not None:
                    checkpoints.wait()
                raise Interrupted(stop.signum or signal.SIGTERM, int(P), epoch,
                                  str(checkpoints.directory) if checkpoints is not None else None)
        if progress:
            progress({"event": "P_done", "P": int(P), "P_index": pi, "n_P": len(cfg.train.P),
                      "wall_s": stats.per_P[-1]["wall_s"]})
    stats.wall_s = time.perf_counter() - t_run
    return curves, stats


def _restore_state(checkpoints: Checkpoints, step: int, fresh: Any, layout: Layout) -> Any:
    """Restore the ensemble state of checkpoint ``step`` into the shape of ``fresh`` (a freshly
    initialised ensemble on ``layout``). A checkpoint written on a layout with another seed padding is
    restored at its saved size and its real seeds are copied into ``fresh`` (padding seeds are
    dropped anyway), so a run can resume on a different number of devices."""
    saved_pad = int(checkpoints.read_meta(step)["seeds_padded"])
    if saved_pad == layout.seeds_padded:
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=layout.seed_sharding), fresh)
        return checkpoints.restore_state(step, target)
    sharding = layout.seed_sharding if saved_pad % layout.groups == 0 else layout.replicated
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((saved_pad,) + a.shape[1:], a.dtype, sharding=sharding), fresh)
    saved = checkpoints.restore_state(step, target)
    n = min(saved_pad, layout.seeds_padded)
    merge = jax.jit(lambda old, new: jax.tree.map(lambda o, f: f.at[:n].set(o[:n]), old, new),
                    out_shardings=layout.seed_sharding)
    return merge(saved, fresh)
