"""The experiment loop: for each P, an ensemble of seeds trained as one jitted program per epoch,
evaluated at the paper's logged epochs, into a :class:`~jaxscale.results.Curves`.

Host work per epoch is one dispatch; the host reads values back only at logged epochs (and, at most
about once a second, a loss for the progress line). The programs run on a device layout
(:mod:`jaxscale.train.sharding`); the loop checkpoints at epoch boundaries, resumes from them
(:mod:`jaxscale.train.checkpoint`) and stops cleanly on SIGTERM/SIGINT (:mod:`jaxscale.train.preemption`).
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
EpochHook = Callable[[int, int, Any], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Everything static about a run, built once from a validated config (:func:`build_experiment`).
    ``batching`` and the run's programs (:func:`make_programs`) come from one plan
    (:func:`plan_programs`), made on first use and kept: building alone compiles nothing."""

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
    def strategy(self) -> str:
        """How each device's seeds run, e.g. ``"loop"``, ``"vmap"``, ``"vmap (groups of 4 seeds)"``."""
        return str(self.batching)


def build_experiment(cfg: Config, dataset: Optional[ArrayDataset] = None,
                     layout: Optional[Layout] = None) -> Experiment:
    """Load the dataset (unless given), build the model and the step ingredients, on ``layout``
    (default: planned from ``cfg.parallel`` over every device). Allocates nothing on the devices.
    Raises UsageError for what the config gets wrong that needs the dataset or the model to see;
    whether the run fits in device memory is checked when ``batching`` is first read."""
    if dataset is None:
        dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir, path=cfg.data.path)
    check_against_dataset(cfg, dataset.n_train)
    dtype, matmul = PRECISION_SETTINGS[cfg.train.precision]
    spec = build_model(cfg.model.family, cfg.model.preset, input_shape=dataset.input_shape,
                       num_classes=dataset.num_classes, init_factor=cfg.model.init_factor, init=cfg.model.init,
                       dtype=dtype, precision=matmul, conv_impl=cfg.model.conv_impl, **dict(cfg.model.arch))
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


def stacked_seed_keys(seeds) -> dict[str, jax.Array]:
    """``{"data"|"init"|"train"|"norms": uint32 [S, 2]}`` for the given seed values."""
    ks = [seed_keys(int(s)) for s in seeds]
    return {k: jnp.stack([d[k] for d in ks]) for k in ks[0]}


def make_programs(exp: Experiment, layout: Optional[Layout] = None) -> dict[str, Any]:
    """The run's jitted ensemble functions on ``layout`` (default: the experiment's), batching
    seeds as :func:`plan_programs` plans them."""
    return exp._plan[0] if layout in (None, exp.layout) else plan_programs(exp, layout)[0]


def build_programs(exp: Experiment, layout: Layout, group: Optional[int]) -> dict[str, Any]:
    """The jitted ensemble functions of a run on ``layout`` with ``group`` seeds vmapped side by side
    (:func:`~jaxscale.train.ensemble.seed_map`: None = all of a device's seeds, K = groups of K), each
    the map over seeds and devices of a single-seed function of :mod:`jaxscale.train.step`. Per-seed
    arguments and outputs are global ``[seeds_padded, ...]`` arrays; ``eval``'s metrics and
    ``nonfinite`` come back replicated, so every process can read all seeds."""
    fns = data_parallel_fns(exp.fns, DATA, layout.data)
    bs = exp.cfg.train.batch_size
    eval_bs = exp.cfg.data.eval_batch_size

    def _eval_chunks(n):  # eval_batches of range(n) (static shapes) with a float32 mask
        idx, mask = eval_batches(n, min(eval_bs, n))
        return idx, mask.astype(np.float32)

    # per-seed (0) and shared (None) arguments: (states, subsets, x_train, y_train[, x_test, y_test], epoch)
    epoch_axes, eval_axes = (0, 0, None, None, None), (0, 0, None, None, None, None, None)
    epoch_block = seed_map(functools.partial(step_lib.train_epoch, fns, bs), epoch_axes, group, inplace={0: 0})

    def eval_one(state, subset, x_tr, y_tr, x_te, y_te, epoch):
        key = step_lib.eval_key(state, epoch)
        tr_pos, tr_mask = _eval_chunks(subset.shape[0])
        te_idx, te_mask = _eval_chunks(x_te.shape[0])
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
    """The run's programs on ``layout`` and how they batch seeds: the static rule picks loop or vmap
    (:func:`~jaxscale.train.ensemble.batching_kind`), and the vmap group is the widest whose epoch and
    evaluation programs, compiled for the first P from abstract arrays (nothing is allocated), fit in
    ``parallel.memory_limit_gb`` or the devices' free memory (:func:`~jaxscale.train.ensemble.choose_group`).
    The chosen programs stay compiled for the first P (a ``pmap`` layout is measured on the equivalent
    ``jit`` layout and compiles its own). Raises UsageError when one seed at a time does not fit."""
    ds, Ps = exp.dataset, exp.cfg.train.P
    on = dataclasses.replace(layout, api="jit")

    def seeded(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on.seed_sharding), tree)

    key = seeded(jax.ShapeDtypeStruct((layout.seeds_padded, 2), jnp.uint32))
    train, test = ((jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on.replicated),
                    jax.ShapeDtypeStruct(y.shape, jnp.int32, sharding=on.replicated))
                   for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)))
    epoch = jax.ShapeDtypeStruct((), jnp.int32)
    built: dict[Any, dict] = {}

    def need(group):
        progs = built[group] = build_programs(exp, on, group)
        states = seeded(jax.eval_shape(progs["init"], key, key, key))
        subsets = seeded(jax.eval_shape(lambda k: progs["subsets"](k, ds.n_train, Ps[0]), key))
        peak = peak_bytes([progs["epoch"].lower(states, subsets, *train, epoch).compile(),
                           progs["eval"].lower(states, subsets, *train, *test, epoch).compile()])
        # plus the larger subsets of the largest P
        return None if peak is None else peak + (max(Ps) - Ps[0]) * layout.per_group * subsets.dtype.itemsize

    kind = batching_kind(exp.cfg.parallel.ensemble, exp.spec.family)
    limit = memory_limit_bytes(list(layout.mesh.devices.flat), exp.cfg.parallel.memory_limit_gb)
    batching = choose_group(kind, layout.per_group, need, limit)
    return built[batching.group] if layout.api == "jit" else build_programs(exp, layout, batching.group), batching


@dataclasses.dataclass
class RunStats:
    wall_s: float = 0.0
    per_P: list = dataclasses.field(default_factory=list)  # {"P", "wall_s", "compile_s", "img_per_s"}
    nonfinite: list = dataclasses.field(default_factory=list)  # {"P", "seed"} of diverged seeds
    #: where this invocation started: None (from scratch) or {"step", "P", "epoch"} of the checkpoint
    resumed_from: Optional[dict] = None
    #: wall time of the earlier invocations of this run (before the checkpoint it resumed from)
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


def choose_resume(checkpoints: Checkpoints, cfg: Config) -> Optional[tuple[int, dict]]:
    """The newest usable checkpoint of this training config as ``(step, meta)``, or ``None`` to start
    from scratch. Raises :class:`UsageError` (and changes nothing) when they belong to another config."""
    found = checkpoints.choose()
    if found is not None and found[1].get("config") != training_fingerprint(cfg):
        raise UsageError(
            f"{checkpoints.directory} holds checkpoints of a different training config: resume with the "
            "config (and --set/--P/--seeds/--epochs flags) it was started with, or pass --restart to start over")
    return found


def run_experiment(exp: Experiment, *, progress: Optional[ProgressFn] = None, layout: Optional[Layout] = None,
                   checkpoints: Optional[Checkpoints] = None, resume: Any = "auto", stop: Optional[StopFlag] = None,
                   on_epoch: Optional[EpochHook] = None) -> tuple[Curves, RunStats]:
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
    if checkpoints is not None and resume == "auto":
        resume = choose_resume(checkpoints, exp.cfg)
    run = RunLoop(exp, layout, checkpoints, progress, stop)
    start_pi, start_epoch, states = run.resume(resume if checkpoints is not None else None)
    for pi in range(start_pi, len(run.Ps)):
        if pi > start_pi:
            run.stop_point(pi - 1, run.T, states)  # a stop between two Ps saves the finished one
        if pi > start_pi or states is None:  # else: the state restored mid-P
            states = run.init(pi)
        states = run.train_P(pi, start_epoch + 1 if pi == start_pi else 1, states, on_epoch)
    run.stats.wall_s = time.perf_counter() - run.t_run
    return run.curves, run.stats


def _per_s(seconds_images) -> float:
    seconds, images = seconds_images
    return float(images / seconds) if seconds > 0 else float("nan")


class RunLoop:
    """The named steps of :func:`run_experiment` over its shared state (the arrays on the devices,
    the curves and statistics so far): :meth:`resume`, :meth:`init` and :meth:`train_P` of each P,
    :meth:`evaluate` at logged epochs and :meth:`stop_point` (checkpoint policy, stop requests)."""

    def __init__(self, exp: Experiment, layout: Optional[Layout] = None, checkpoints: Optional[Checkpoints] = None,
                 progress: Optional[ProgressFn] = None, stop: Optional[StopFlag] = None):
        cfg, ds, lay = exp.cfg, exp.dataset, layout or exp.layout
        self.cfg, self.layout, self.programs, self.n_train = cfg, lay, make_programs(exp, lay), ds.n_train
        self.checkpoints, self.progress, self.stop = checkpoints, progress, stop
        self.T, self.S, self.Ps = cfg.train.epochs, cfg.train.seeds, cfg.train.P
        # padding seeds are just the next seed values: trained, then dropped
        keys = stacked_seed_keys(cfg.train.seed_start + np.arange(lay.seeds_padded))
        self.keys = {k: lay.put_seeded(np.asarray(v)) for k, v in keys.items()}
        self.train_data = lay.put_replicated(ds.x_train), lay.put_replicated(ds.y_train.astype(np.int32))
        self.test_data = lay.put_replicated(ds.x_test), lay.put_replicated(ds.y_test.astype(np.int32))
        self.logged = {int(e): i for i, e in enumerate(exp.epochs_logged)}
        self.curves = Curves.empty(self.Ps, cfg.seed_values(), exp.epochs_logged, NORM_NAMES)
        self.stats = RunStats(layout=lay.describe())
        self.t_run, self.saved_step, self.subsets = time.perf_counter(), -1, None
        self.steady = np.zeros(2)  # seconds and images of the finished Ps' steady training (see train_P)

    def _emit(self, **ev) -> None:
        if self.progress:
            self.progress(ev)

    def init(self, pi: int) -> Any:
        """Fresh ensemble state for P index ``pi`` (and that P's training subsets)."""
        self.t_P = time.perf_counter()
        self.subsets = self.programs["subsets"](self.keys["data"], self.n_train, int(self.Ps[pi]))
        return self.programs["init"](self.keys["init"], self.keys["train"], self.keys["norms"])

    def resume(self, resume: Optional[tuple[int, dict]]) -> tuple[int, int, Any]:
        """Restore curves, statistics and (mid-P) the ensemble state of checkpoint ``resume = (step,
        meta)``; returns where to continue: ``(P index, epochs done in it, restored state or None)``.
        A checkpoint that cannot be read back is unusable: an unverified one is reported, deleted and
        the run starts over; a verified one stops the run with the fix."""
        if resume is None:
            return 0, 0, None
        (step, meta), ck = resume, self.checkpoints
        pi, epoch = int(meta["P_index"]), int(meta["epoch"])
        try:
            values = ck.restore_curves(step)
            states = self._restore_state(step, int(meta["seeds_padded"]), self.init(pi)) if 0 < epoch < self.T else None
        except Exception as e:  # noqa: BLE001 — any failure to read it back means unusable
            reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
            if step not in ck.unverified:
                raise UsageError(f"checkpoint {ck.step_dir(step)} could not be restored ({reason}): "
                                 "pass --restart to start over") from None
            ck.discard(step, f"unusable ({reason})")
            return 0, 0, None
        for k, v in values.items():
            if k in self.curves.values and v.shape == self.curves.values[k].shape:
                self.curves.values[k][...] = v
        st, P = meta["stats"], int(self.Ps[pi])
        self.stats = dataclasses.replace(self.stats, per_P=list(st["per_P"]), nonfinite=list(st["nonfinite"]),
                                         earlier_wall_s=float(st["wall_s"]),
                                         resumed_from={"step": step, "P": P, "epoch": epoch})
        self.saved_step = step
        self._emit(event="resume", step=step, P=P, P_index=pi, n_P=len(self.Ps), epoch=epoch, epochs=self.T)
        return (pi + 1, 0, None) if epoch >= self.T else (pi, epoch, states)  # a complete P: the next one

    def _restore_state(self, step: int, saved_pad: int, fresh: Any) -> Any:
        """The ensemble state of ``step``, saved with ``saved_pad`` seeds (padding included), in the
        shape of ``fresh`` (a new ensemble on this layout): a state saved with another seed padding
        has its real seeds copied into ``fresh``, so a run can resume on another number of devices."""
        lay = self.layout
        sharding = lay.seed_sharding if saved_pad % lay.groups == 0 else lay.replicated
        saved = self.checkpoints.restore_state(step, jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((saved_pad,) + a.shape[1:], a.dtype, sharding=sharding), fresh))
        if saved_pad == lay.seeds_padded:
            return saved
        n = min(saved_pad, lay.seeds_padded)
        merge = jax.jit(lambda old, new: jax.tree.map(lambda o, f: f.at[:n].set(o[:n]), old, new),
                        out_shardings=lay.seed_sharding)
        return merge(saved, fresh)

    def train_P(self, pi: int, first_epoch: int, states: Any, on_epoch: Optional[EpochHook] = None) -> Any:
        """Epochs ``first_epoch..T`` of P index ``pi`` from ``states`` (and the subsets of
        :meth:`init`); returns the final states. Images/s and the ETA count synced training intervals
        only: the first (compiling) epoch and the evaluations are left out."""
        P, T, S = int(self.Ps[pi]), self.T, self.S
        steady = np.zeros(2)  # this P's steady seconds and images
        mark, synced = time.perf_counter(), first_epoch
        for epoch in range(first_epoch, T + 1):
            states, m = self.programs["epoch"](states, self.subsets, *self.train_data, np.int32(epoch))
            if on_epoch is not None:
                states = on_epoch(pi, epoch, states)
            if self.layout.needs_sync:
                jax.block_until_ready(states)
            first, is_log = epoch == first_epoch, epoch in self.logged
            if first or is_log or epoch == T or time.perf_counter() - mark > 1.0:
                loss = float(np.nanmean(local_rows(m["loss"], S)))  # syncs
                now = time.perf_counter()
                if first:
                    compile_s = now - self.t_P
                else:
                    steady += (now - mark, (epoch - synced) * P * S)
                mark, synced = now, epoch
                rate = _per_s(self.steady + steady)
                left = S * (P * (T - epoch) + T * sum(self.Ps[pi + 1:]))
                self._emit(event="epoch", P=P, P_index=pi, n_P=len(self.Ps), epoch=epoch, epochs=T, loss=loss,
                           img_per_s=rate, eta_s=left / rate if rate > 0 else float("nan"))
            if is_log:
                states = self.evaluate(pi, epoch, states)
                mark = time.perf_counter()  # evaluation time is not training throughput
            if epoch == T:
                bad = np.asarray(jax.device_get(self.programs["nonfinite"](states)))[:S]
                self.stats.nonfinite += [{"P": P, "seed": int(self.curves.seeds[i])} for i in np.flatnonzero(bad)]
                self.stats.per_P.append({"P": P, "wall_s": time.perf_counter() - self.t_P, "compile_s": compile_s,
                                         "img_per_s": _per_s(steady)})
            self.stop_point(pi, epoch, states)
        self.steady += steady
        self._emit(event="P_done", P=P, P_index=pi, n_P=len(self.Ps), wall_s=self.stats.per_P[-1]["wall_s"])
        return states

    def evaluate(self, pi: int, epoch: int, states: Any) -> Any:
        """Evaluate every seed at the logged ``epoch`` into that column of P index ``pi``'s curves;
        returns the states (their norm vectors re-converged by the evaluation)."""
        out, states = self.programs["eval"](states, self.subsets, *self.train_data, *self.test_data, np.int32(epoch))
        ti = self.logged[epoch]
        for k, v in jax.device_get(out).items():
            self.curves.values[k][pi, :, ti] = np.asarray(v)[:self.S]
        mean = {k: float(np.nanmean(self.curves.values[k][pi, :, ti])) for k in ("test_error", "train_error")}
        self._emit(event="log", P=int(self.Ps[pi]), P_index=pi, epoch=epoch, **mean)
        return states

    def stop_point(self, pi: int, epoch: int, states: Any) -> None:
        """An epoch boundary: save a checkpoint when the policy, the run's last epoch or a stop request
        asks for one, then raise :class:`Interrupted` on a stop request."""
        stopping = self.stop is not None and distributed.any_process(self.stop.requested)
        ck, step, P = self.checkpoints, pi * self.T + epoch, int(self.Ps[pi])
        last = pi == len(self.Ps) - 1 and epoch == self.T
        if ck is not None and step != self.saved_step and (stopping or last or ck.due(epoch)):
            stats = {"per_P": self.stats.per_P, "nonfinite": self.stats.nonfinite,
                     "wall_s": self.stats.earlier_wall_s + time.perf_counter() - self.t_run}
            ck.save(step, states, self.curves.values, {
                "format": 1, "P_index": pi, "P": P, "epoch": epoch, "epochs": self.T, "seeds": self.S,
                "seeds_padded": self.layout.seeds_padded, "config": training_fingerprint(self.cfg), "stats": stats})
            self.saved_step = step
            self._emit(event="checkpoint", step=step, P=P, P_index=pi, epoch=epoch)
        if stopping:
            if ck is not None:
                ck.wait()
            raise Interrupted(self.stop.signum or signal.SIGTERM, P, epoch,
                              str(ck.directory) if ck is not None else None)
