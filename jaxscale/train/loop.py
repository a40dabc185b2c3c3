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
from jaxscale.data import ArrayDataset, load_dataset
from jaxscale.data.presets import default_preprocessing
from jaxscale.data.sampling import eval_batches, subset_indices
from jaxscale.data.transforms import preprocess
from jaxscale.errors import UsageError
from jaxscale.models import build_model
from jaxscale.models.registry import PRECISION_SETTINGS
from jaxscale.models.spec import ModelSpec
from jaxscale.results import Curves
from jaxscale.train import distributed
from jaxscale.train import step as step_lib
from jaxscale.train.checkpoint import Checkpoints
from jaxscale.train.ensemble import SeedBatching, batching_kind, choose_group, memory_limit_bytes, peak_bytes, seed_map
from jaxscale.norms import NORM_NAMES, Norms
from jaxscale.train.optim import make_optimizer
from jaxscale.train.preemption import Interrupted, StopFlag
from jaxscale.train.schedule import logged_epochs
from jaxscale.train.sharding import DATA, Layout, data_parallel_fns, distribute, local_rows, plan_layout
from jaxscale.train.state import seed_keys

ProgressFn = Callable[[dict], None]


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Everything static about a run, built once from a validated config (see :func:`build_experiment`):
    the device ``layout``, how its seeds are batched (``batching``) and the run's jitted ``programs``
    (:func:`make_programs`). The last two come from one plan (:func:`plan_programs`: compiles the
    programs for the first P), made on first use and kept: building alone compiles nothing."""

    cfg: Config
    dataset: ArrayDataset
    spec: ModelSpec
    fns: step_lib.StepFns
    epochs_logged: np.ndarray
    layout: Layout

    @functools.cached_property
    def _plan(self) -> tuple[dict, SeedBatching]:
        return plan_programs(self, self.layout)

    @property
    def batching(self) -> SeedBatching:
        """How the seeds are batched; raises UsageError when one seed at a time does not fit."""
        return self._plan[1]

    @property
    def programs(self) -> dict:
        return self._plan[0]

    @property
    def strategy(self) -> str:
        """How each device's seeds run, e.g. ``"loop"``, ``"vmap"``, ``"vmap (groups of 4 seeds)"``."""
        return str(self.batching)


def build_experiment(cfg: Config, dataset: Optional[ArrayDataset] = None,
                     layout: Optional[Layout] = None) -> Experiment:
    """Load the dataset (unless given), build the model and the step ingredients, and plan the run on
    ``layout`` (default: planned from ``cfg.parallel`` over every device). Allocates nothing on the
    devices. Raises UsageError for anything the config gets wrong that needs the dataset or the model
    to see; whether the run fits in device memory is checked when ``batching`` is first read."""
    if dataset is None:
        dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, path=cfg.data.path)
    check_against_dataset(cfg, dataset.n_train)
    dtype, matmul = PRECISION_SETTINGS[cfg.train.precision]
    spec = build_model(
        cfg.model.family,
        cfg.model.preset,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        init_factor=cfg.model.init_factor,
        init=cfg.model.init,
        dtype=dtype,
        precision=matmul,
        conv_impl=cfg.model.conv_impl,
        **dict(cfg.model.arch),
    )
    pre = default_preprocessing(cfg.model.family, cfg.data.dataset, dataset)
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
    norms = Norms(spec.layers, cfg.norms.convention, spec.family,
                  power_iterations=cfg.norms.power_iterations, every=cfg.norms.every)
    fns = step_lib.StepFns(spec=spec, tx=make_optimizer(cfg.train), prep_train=prep_train,
                           prep_eval=prep_eval, norms=norms)
    return Experiment(cfg=cfg, dataset=dataset, spec=spec, fns=fns,
                      epochs_logged=logged_epochs(cfg.train.epochs, cfg.train.log_points),
                      layout=layout or plan_layout(cfg.parallel, cfg.train.seeds))


# ------------------------------------------------------------------------------------------------
# Jitted ensemble programs (built from the single-seed functions of step.py)


def stacked_seed_keys(seeds) -> dict[str, jax.Array]:
    """``{"data"|"init"|"train"|"norms": uint32 [S, 2]}`` for the given seed values."""
    ks = [seed_keys(int(s)) for s in seeds]
    return {k: jnp.stack([d[k] for d in ks]) for k in ks[0]}


def make_programs(exp: Experiment, layout: Optional[Layout] = None) -> dict[str, Any]:
    """The run's jitted ensemble functions (:func:`build_programs`) on ``layout`` (default: the
    experiment's: ``exp.programs``), batching seeds as :func:`plan_programs` plans them."""
    return exp.programs if layout in (None, exp.layout) else plan_programs(exp, layout)[0]


def build_programs(exp: Experiment, layout: Layout, group: Optional[int]) -> dict[str, Any]:
    """The jitted ensemble functions of a run on ``layout`` with ``group`` seeds vmapped side by side
    (:func:`~jaxscale.train.ensemble.seed_map`: None = all of a device's seeds, K >= 1 = groups of K);
    every one maps a single-seed function of :mod:`jaxscale.train.step` over seeds and devices.

    Per-seed arguments and outputs are global ``[seeds, ...]`` arrays (split over the layout's seed
    groups; the seed count must be a multiple of ``layout.groups``). ``eval``'s metrics and
    ``nonfinite`` come back replicated, so every process can read all seeds.
    """
    fns = data_parallel_fns(exp.fns, DATA, layout.data)
    bs = exp.cfg.train.batch_size
    eval_bs = exp.cfg.data.eval_batch_size

    # per-seed (0) and shared (None) arguments: (states, subsets, x_train, y_train[, x_test, y_test], epoch)
    epoch_axes, eval_axes = (0, 0, None, None, None), (0, 0, None, None, None, None, None)
    epoch_block = seed_map(functools.partial(step_lib.train_epoch, fns, bs), epoch_axes, group, inplace={0: 0})

    def eval_one(state, subset, x_tr, y_tr, x_te, y_te, epoch):
        key = step_lib.eval_key(state, epoch)
        tr_pos, tr_mask = _eval_chunks(subset.shape[0], eval_bs)
        te_idx, te_mask = _eval_chunks(x_te.shape[0], eval_bs)
        tr = step_lib.evaluate(fns, state, subset[tr_pos], tr_mask, x_tr, y_tr, jax.random.fold_in(key, 0))
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

    eval_block = seed_map(eval_one, eval_axes, group, inplace={1: 0})
    # init runs once: a loop keeps one seed's peak memory and costs nothing measurable
    init_block = seed_map(functools.partial(step_lib.init_state, fns), (0, 0, 0), 1)

    @functools.lru_cache(maxsize=None)
    def subsets_program(n_train: int, P: int):
        return distribute(jax.vmap(functools.partial(subset_indices, n_train=n_train, P=P)), layout, (0,))

    def subsets(data_keys, n_train, P):
        return subsets_program(int(n_train), int(P))(data_keys)

    return {
        "init": distribute(init_block, layout, (0, 0, 0)),
        "subsets": subsets,
        "epoch": distribute(epoch_block, layout, epoch_axes, donate_argnums=(0,)),
        "eval": distribute(eval_block, layout, eval_axes, out_replicated=(True, False), donate_argnums=(0,)),
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


def _eval_chunks(n: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``range(n)`` in ``[ceil(n/c), c]`` chunks (``c = min(chunk, n)``: static shapes) with a float32
    mask of the real entries (:func:`~jaxscale.data.sampling.eval_batches`)."""
    idx, mask = eval_batches(n, min(chunk, n))
    return idx, mask.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# The host loop


@dataclasses.dataclass
class RunStats:
    wall_s: float = 0.0
    per_P: list = dataclasses.field(default_factory=list)  # {"P", "wall_s", "compile_s", "img_per_s"}
    nonfinite: list = dataclasses.field(default_factory=list)  # {"P", "seed"} of diverged seeds
    #: where this invocation started: None (from scratch) or {"step", "P", "epoch"} of the checkpoint
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


def choose_resume(checkpoints: Checkpoints, cfg: Config) -> Optional[tuple[int, dict]]:
    """The newest usable checkpoint of this training config as ``(step, meta)``, or ``None`` to start
    from scratch. Raises :class:`UsageError` (and changes nothing) when they belong to another config."""
    found = checkpoints.choose()
    if found is None:
        return None
    step, meta = found
    if meta.get("config") != training_fingerprint(cfg):
        raise UsageError(
            f"{checkpoints.directory} holds checkpoints of a different training config: resume with the "
            "config (and --set/--P/--seeds/--epochs flags) it was started with, or pass --restart to start over")
    return step, meta


class _Throughput:
    """Training images/s and ETA, timed over synced training intervals only: each P's first
    (compiling) epoch and the evaluations at logged epochs are left out."""

    def __init__(self, total_imgs: int):
        self.left, self.time, self.imgs = total_imgs, 0.0, 0  # images to go; steady seconds and images

    def start_P(self, t_P: float) -> None:
        self.t_P, self.P_start = t_P, (self.time, self.imgs)
        self.mark, self.pending = time.perf_counter(), 0

    def trained(self, imgs: int, first: bool) -> None:
        self.left -= imgs
        self.pending += 0 if first else imgs

    def synced(self, first: bool) -> None:
        now = time.perf_counter()
        if first:
            self.compile_s = now - self.t_P
        else:
            self.time, self.imgs = self.time + now - self.mark, self.imgs + self.pending
        self.mark, self.pending = now, 0

    def rates(self) -> tuple[float, float]:
        """(images/s, ETA seconds) of the run so far, NaN before any steady interval."""
        rate = self.imgs / self.time if self.time > 0 else float("nan")
        return rate, self.left / rate if rate > 0 else float("nan")

    def P_rate(self) -> float:
        """Images/s of the current P's steady intervals."""
        t0, i0 = self.P_start
        return (self.imgs - i0) / (self.time - t0) if self.time > t0 else float("nan")


def run_experiment(
    exp: Experiment,
    *,
    progress: Optional[ProgressFn] = None,
    layout: Optional[Layout] = None,
    checkpoints: Optional[Checkpoints] = None,
    resume: Any = "auto",
    stop: Optional[StopFlag] = None,
    on_epoch: Optional[EpochHook] = None,
) -> tuple[Curves, RunStats]:
    """Train every P of the config, all seeds at once, and return the learning curves.

    Args:
      progress: receives dicts ``{"event": "epoch"|"log"|"P_done", "P", "P_index", "n_P", "epoch",
        "epochs", "loss", "img_per_s", "eta_s", ...}``, plus ``"checkpoint"`` (``step``, ``P``,
        ``epoch``) after each save and ``"resume"`` (``step``, ``P``, ``P_index``, ``epoch``) when
        continuing from a checkpoint; training itself never prints.
      layout: device layout (default: the experiment's).
      checkpoints: if given, resume from ``resume`` and save by its policy, plus always after the
        last epoch of the run (so results can be rewritten without training) and on ``stop``.
      resume: ``(step, meta)`` of a checkpoint or ``None`` (start from scratch); ``"auto"``:
        :func:`choose_resume`.
      stop: checked after every epoch and before each P starts; when set, the run saves a checkpoint
        at that epoch boundary (if ``checkpoints``) and raises
        :class:`~jaxscale.train.preemption.Interrupted`.
      on_epoch: ``f(P_index, epoch, states) -> states`` applied after each training epoch (before
        evaluation); for fault-injection tests and experiments.
    """
    cfg = exp.cfg
    T, S, Ps = cfg.train.epochs, cfg.train.seeds, cfg.train.P
    layout = layout or exp.layout
    programs = make_programs(exp, layout)
    if checkpoints is not None and resume == "auto":
        resume = choose_resume(checkpoints, cfg)
    run = _Run(exp, programs, layout, checkpoints, progress, stop)
    start_pi, start_epoch, states = run.resume(resume if checkpoints is not None else None)
    clock = _Throughput((sum(Ps[start_pi:]) * T - (Ps[start_pi] * start_epoch if start_pi < len(Ps) else 0)) * S)
    for pi in range(start_pi, len(Ps)):
        if pi > start_pi:
            run.stop_point(pi - 1, T, states)  # a stop between two Ps saves the finished one
        if not (pi == start_pi and states is not None):  # else: the state restored mid-P
            states = run.init(pi)
        states = run.train_P(pi, start_epoch + 1 if pi == start_pi else 1, states, clock, on_epoch)
    run.stats.wall_s = time.perf_counter() - run.t_run
    return run.curves, run.stats


class _Run:
    """The steps of :func:`run_experiment` over its shared state: resume, per-P training, logged
    evaluation, the checkpoint policy and stop handling."""

    def __init__(self, exp, programs, layout, checkpoints, progress, stop):
        cfg = exp.cfg
        self.exp, self.cfg, self.programs, self.layout = exp, cfg, programs, layout
        self.checkpoints, self.progress, self.stop = checkpoints, progress, stop
        self.T, self.S, self.Ps = cfg.train.epochs, cfg.train.seeds, cfg.train.P
        self.seeds = np.asarray(cfg.seed_values(), np.int64)
        # padding seeds are just the next seed values: trained, then dropped
        all_seeds = cfg.train.seed_start + np.arange(layout.seeds_padded, dtype=np.int64)
        self.keys = {k: layout.put_seeded(np.asarray(v)) for k, v in stacked_seed_keys(all_seeds).items()}
        ds = exp.dataset
        self.train_data = layout.put_replicated(ds.x_train), layout.put_replicated(ds.y_train.astype(np.int32))
        self.test_data = layout.put_replicated(ds.x_test), layout.put_replicated(ds.y_test.astype(np.int32))
        self.logged = {int(e): i for i, e in enumerate(exp.epochs_logged)}
        self.curves = Curves.empty(self.Ps, self.seeds, exp.epochs_logged, NORM_NAMES)
        self.stats = RunStats(layout=layout.describe())
        self.t_run = time.perf_counter()
        self.saved_step = -1
        self.subsets = None

    def _emit(self, **ev) -> None:
        if self.progress:
            self.progress(ev)

    # -- resume ----------------------------------------------------------------------------------

    def init(self, pi: int) -> Any:
        """Fresh ensemble state for P index ``pi`` (and that P's training subsets)."""
        self.t_P = time.perf_counter()
        self.subsets = self.programs["subsets"](self.keys["data"], self.exp.dataset.n_train, int(self.Ps[pi]))
        return self.programs["init"](self.keys["init"], self.keys["train"], self.keys["norms"])

    def resume(self, resume: Optional[tuple[int, dict]]) -> tuple[int, int, Any]:
        """Restore curves, statistics and (mid-P) the ensemble state of ``resume``; returns
        ``(P index, epochs done in it, restored state or None)``. A checkpoint that cannot be read
        back is unusable: an unverified one is reported, deleted and the run starts over; a verified
        one stops the run with the fix."""
        if resume is None:
            return 0, 0, None
        step, meta = resume
        pi, epoch = int(meta["P_index"]), int(meta["epoch"])
        try:
            values = self.checkpoints.restore_curves(step)
            states = None
            if 0 < epoch < self.T:
                states = _restore_state(self.checkpoints, step, int(meta["seeds_padded"]), self.init(pi),
                                        self.layout)
        except Exception as e:  # noqa: BLE001 — any failure to read it back means unusable
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
            if step not in self.checkpoints.unverified:
                raise UsageError(f"checkpoint {self.checkpoints.step_dir(step)} could not be restored ({reason}): "
                                 "pass --restart to start over") from None
            self.checkpoints.discard(step, f"unusable ({reason})")
            return 0, 0, None
        for k, v in values.items():
            if k in self.curves.values and v.shape == self.curves.values[k].shape:
                self.curves.values[k][...] = v
        st = meta["stats"]
        self.stats.per_P, self.stats.nonfinite = list(st["per_P"]), list(st["nonfinite"])
        self.stats.earlier_wall_s = float(st["wall_s"])
        self.stats.resumed_from = {"step": step, "P": int(self.Ps[pi]), "epoch": epoch}
        self.saved_step = step
        self._emit(event="resume", step=step, P=int(self.Ps[pi]), P_index=pi, n_P=len(self.Ps), epoch=epoch,
                   epochs=self.T)
        if epoch >= self.T:  # that P was complete: continue with the next one
            return pi + 1, 0, None
        return pi, epoch, states

    # -- per-P training --------------------------------------------------------------------------

    def train_P(self, pi: int, first_epoch: int, states: Any, clock: _Throughput, on_epoch) -> Any:
        """Epochs ``first_epoch..T`` of P index ``pi`` from ``states``; returns the final states."""
        P, T, S = int(self.Ps[pi]), self.T, self.S
        clock.start_P(self.t_P)
        x_tr, y_tr = self.train_data
        for epoch in range(first_epoch, T + 1):
            states, m = self.programs["epoch"](states, self.subsets, x_tr, y_tr, np.int32(epoch))
            if on_epoch is not None:
                states = on_epoch(pi, epoch, states)
            if self.layout.needs_sync:
                jax.block_until_ready(states)
            first = epoch == first_epoch
            clock.trained(P * S, first)
            is_log = epoch in self.logged
            if first or is_log or epoch == T or time.perf_counter() - clock.mark > 1.0:
                loss = float(np.nanmean(local_rows(m["loss"], S)))  # syncs
                clock.synced(first)
                img_s, eta = clock.rates()
                self._emit(event="epoch", P=P, P_index=pi, n_P=len(self.Ps), epoch=epoch, epochs=T, loss=loss,
                           img_per_s=img_s, eta_s=eta)
            if is_log:
                states = self.evaluate(pi, epoch, states)
                clock.mark = time.perf_counter()  # evaluation time is not training throughput
            if epoch == T:
                bad = np.asarray(jax.device_get(self.programs["nonfinite"](states)))[:S]
                self.stats.nonfinite += [{"P": P, "seed": int(self.seeds[i])} for i in np.flatnonzero(bad)]
                self.stats.per_P.append({"P": P, "wall_s": time.perf_counter() - clock.t_P,
                                         "compile_s": clock.compile_s, "img_per_s": clock.P_rate()})
            self.stop_point(pi, epoch, states)
        self._emit(event="P_done", P=P, P_index=pi, n_P=len(self.Ps), wall_s=self.stats.per_P[-1]["wall_s"])
        return states

    # -- logged evaluation -----------------------------------------------------------------------

    def evaluate(self, pi: int, epoch: int, states: Any) -> Any:
        """Evaluate every seed at a logged ``epoch`` into the curves; returns the updated states
        (their norm vectors are re-converged by the evaluation)."""
        out, states = self.programs["eval"](states, self.subsets, *self.train_data, *self.test_data, np.int32(epoch))
        out = jax.device_get(out)
        ti = self.logged[epoch]
        for k, v in out.items():
            self.curves.values[k][pi, :, ti] = np.asarray(v, np.float64)[:self.S]
        self._emit(event="log", P=int(self.Ps[pi]), P_index=pi, epoch=epoch,
                   test_error=float(np.nanmean(self.curves.values["test_error"][pi, :, ti])),
                   train_error=float(np.nanmean(self.curves.values["train_error"][pi, :, ti])))
        return states

    # -- checkpoint policy and stop handling -----------------------------------------------------

    def stop_point(self, pi: int, epoch: int, states: Any) -> None:
        """An epoch boundary: save a checkpoint when the policy or a stop request asks for one (and
        after the run's last epoch), then raise :class:`Interrupted` on a stop request."""
        stopping = self.stop is not None and distributed.any_process(self.stop.requested)
        ck = self.checkpoints
        step = pi * self.T + epoch
        last = pi == len(self.Ps) - 1 and epoch == self.T
        if ck is not None and step != self.saved_step and (stopping or last or ck.due(epoch)):
            ck.save(step, states, self.curves.values, self._meta(pi, epoch))
            self.saved_step = step
            self._emit(event="checkpoint", step=step, P=int(self.Ps[pi]), P_index=pi, epoch=epoch)
        if stopping:
            if ck is not None:
                ck.wait()
            raise Interrupted(self.stop.signum or signal.SIGTERM, int(self.Ps[pi]), epoch,
                              str(ck.directory) if ck is not None else None)

    def _meta(self, pi: int, epoch: int) -> dict:
        cfg = self.cfg
        return {"format": 1, "P_index": pi, "P": int(self.Ps[pi]), "epoch": epoch, "epochs": self.T,
                "seeds": self.S, "seeds_padded": self.layout.seeds_padded, "config": training_fingerprint(cfg),
                "stats": {"per_P": self.stats.per_P, "nonfinite": self.stats.nonfinite,
                          "wall_s": self.stats.earlier_wall_s + time.perf_counter() - self.t_run}}


def _restore_state(checkpoints: Checkpoints, step: int, saved_pad: int, fresh: Any, layout: Layout) -> Any:
    """Restore the ensemble state of checkpoint ``step``, saved with ``saved_pad`` seeds (padding
    included), into the shape of ``fresh`` (a freshly initialised ensemble on ``layout``). A state
    saved on a layout with another seed padding has its real seeds copied into ``fresh`` (padding
    seeds are dropped anyway), so a run can resume on a different number of devices."""
    sharding = layout.seed_sharding if saved_pad % layout.groups == 0 else layout.replicated
    saved = checkpoints.restore_state(step, jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((saved_pad,) + a.shape[1:], a.dtype, sharding=sharding), fresh))
    if saved_pad == layout.seeds_padded:
        return saved
    n = min(saved_pad, layout.seeds_padded)
    merge = jax.jit(lambda old, new: jax.tree.map(lambda o, f: f.at[:n].set(o[:n]), old, new),
                    out_shardings=layout.seed_sharding)
    return merge(saved, fresh)
