"""The experiment loop: for each P, an ensemble of seeds trained as one jitted program per epoch,
evaluated at the paper's logged epochs, into a :class:`~jaxscale.results.Curves`.

Host work per epoch is one dispatch; the host only reads values back at logged epochs (and, at most
about once a second, a loss for the progress line).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.config import Config, check_against_dataset
from jaxscale.data import ArrayDataset
from jaxscale.models.spec import ModelSpec
from jaxscale.results import Curves
from jaxscale.train import step as step_lib
from jaxscale.train.ensemble import resolve_strategy, seed_map
from jaxscale.train.norm_tracking import NormTracker
from jaxscale.train.optim import make_optimizer
from jaxscale.train.schedule import logged_epochs
from jaxscale.train.state import seed_keys

ProgressFn = Callable[[dict], None]


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Everything static about a run, built once from a validated config (see :func:`build_experiment`)."""

    cfg: Config
    dataset: ArrayDataset
    spec: ModelSpec
    fns: step_lib.StepFns
    strategy: str
    epochs_logged: np.ndarray

    @property
    def norm_names(self) -> tuple[str, ...]:
        from jaxscale.norms import NORM_NAMES

        return NORM_NAMES


def build_experiment(cfg: Config, dataset: Optional[ArrayDataset] = None) -> Experiment:
    """Load the dataset (unless given), build the model and the step ingredients. Raises UsageError
    for anything the config gets wrong that needs the dataset or the model to see."""
    from jaxscale.data import load_dataset
    from jaxscale.data.presets import default_preprocessing
    from jaxscale.data.transforms import preprocess
    from jaxscale.models import build_model

    if dataset is None:
        dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    check_against_dataset(cfg, dataset.n_train)
    dtype = {"fp32": jnp.float32, "tf32": jnp.float32, "bf16": jnp.bfloat16}[cfg.train.precision]
    spec = build_model(
        cfg.model.family,
        cfg.model.preset,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        init_factor=cfg.model.init_factor,
        init=cfg.model.init,
        dtype=dtype,
        conv_impl=cfg.model.conv_impl,
        **dict(cfg.model.arch),
    )
    pre = default_preprocessing(cfg.model.family, cfg.data.dataset)
    mean = cfg.data.mean if cfg.data.mean is not None else pre["mean"]
    std = cfg.data.std if cfg.data.std is not None else pre["std"]
    channels = dataset.input_shape[-1]
    if len(mean) not in (1, channels):
        from jaxscale.errors import UsageError

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
    )
    fns = step_lib.StepFns(spec=spec, tx=make_optimizer(cfg.train), prep_train=prep_train,
                           prep_eval=prep_eval, norms=tracker)
    return Experiment(
        cfg=cfg,
        dataset=dataset,
        spec=spec,
        fns=fns,
        strategy=resolve_strategy(cfg.parallel.ensemble, spec.family),
        epochs_logged=logged_epochs(cfg.train.epochs, cfg.train.log_points),
    )


# ------------------------------------------------------------------------------------------------
# Jitted ensemble programs (built from the single-seed functions of step.py)


def stacked_seed_keys(seeds) -> dict[str, jax.Array]:
    """``{"data"|"init"|"train"|"norms": uint32 [S, 2]}`` for the given seed values."""
    ks = [seed_keys(int(s)) for s in seeds]
    return {k: jnp.stack([d[k] for d in ks]) for k in ks[0]}


def make_programs(exp: Experiment) -> dict[str, Callable]:
    """The jitted ensemble functions of a run; every one maps a single-seed function over seeds."""
    fns, strat = exp.fns, exp.strategy
    bs = exp.cfg.train.batch_size
    eval_bs = exp.cfg.data.eval_batch_size

    def init_one(init_key, train_key, norm_key):
        return step_lib.init_state(fns, init_key, train_key, norm_key)

    def subset_one(data_key, n_train, P):
        from jaxscale.data.sampling import subset_indices

        return subset_indices(data_key, n_train, P)

    def epoch_all(states, subsets, x, y, epoch):
        f = functools.partial(step_lib.train_epoch, fns, bs)
        return seed_map(f, strat, (0, 0, None, None, None))(states, subsets, x, y, epoch)

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
        out = {k: jnp.where(state.nonfinite, jnp.nan, v.astype(jnp.float32)) for k, v in out.items()}
        return out, state.replace(norm_state=norm_state)

    def eval_all(states, subsets, x_tr, y_tr, x_te, y_te, epoch):
        return seed_map(eval_one, strat, (0, 0, None, None, None, None, None))(
            states, subsets, x_tr, y_tr, x_te, y_te, epoch)

    return {
        "init": jax.jit(jax.vmap(init_one)),
        "subsets": jax.jit(jax.vmap(subset_one, in_axes=(0, None, None)), static_argnums=(1, 2)),
        "epoch": jax.jit(epoch_all, donate_argnums=(0,)),
        "eval": jax.jit(eval_all, donate_argnums=(0,)),
    }


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


def run_experiment(
    exp: Experiment,
    *,
    progress: Optional[ProgressFn] = None,
    programs: Optional[dict] = None,
) -> tuple[Curves, RunStats]:
    """Train every P of the config, all seeds at once, and return the learning curves.

    ``progress`` receives dicts ``{"event": "epoch"|"log"|"P_done", "P", "P_index", "n_P", "epoch",
    "epochs", "loss", "img_per_s", "eta_s", ...}``; training itself never prints.
    """
    cfg = exp.cfg
    seeds = np.asarray(cfg.seed_values(), np.int64)
    curves = Curves.empty(cfg.train.P, seeds, exp.epochs_logged, exp.norm_names)
    programs = programs or make_programs(exp)
    keys = stacked_seed_keys(seeds)
    ds = exp.dataset
    x_tr, y_tr = jax.device_put(ds.x_train), jax.device_put(ds.y_train.astype(np.int32))
    x_te, y_te = jax.device_put(ds.x_test), jax.device_put(ds.y_test.astype(np.int32))
    logged = {int(e): i for i, e in enumerate(exp.epochs_logged)}
    T = cfg.train.epochs
    S = len(seeds)
    total_imgs = sum(cfg.train.P) * T * S
    done_imgs = 0
    stats = RunStats()
    t_run = time.perf_counter()
    # Throughput clock: counts only synced training intervals, excluding each P's first (compiling)
    # epoch and the evaluations at logged epochs.
    steady_time, steady_imgs = 0.0, 0

    for pi, P in enumerate(cfg.train.P):
        t_P = time.perf_counter()
        states = programs["init"](keys["init"], keys["train"], keys["norms"])
        subsets = programs["subsets"](keys["data"], ds.n_train, int(P))
        compile_s, P_steady_time, P_steady_imgs = 0.0, 0.0, 0
        mark, pending = time.perf_counter(), 0
        for epoch in range(1, T + 1):
            states, m = programs["epoch"](states, subsets, x_tr, y_tr, jnp.int32(epoch))
            done_imgs += P * S
            if epoch > 1:
                pending += P * S
            is_log = epoch in logged
            if epoch == 1 or is_log or epoch == T or time.perf_counter() - mark > 1.0:
                loss = float(np.nanmean(np.asarray(m["loss"])))  # syncs
                now = time.perf_counter()
                if epoch == 1:
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
                out, states = programs["eval"](states, subsets, x_tr, y_tr, x_te, y_te, jnp.int32(epoch))
                out = jax.device_get(out)
                ti = logged[epoch]
                for k, v in out.items():
                    curves.values[k][pi, :, ti] = np.asarray(v, np.float64)
                mark = time.perf_counter()  # evaluation time is not training throughput
                if progress:
                    progress({"event": "log", "P": int(P), "P_index": pi, "epoch": epoch,
                              "test_error": float(np.nanmean(out["test_error"])),
                              "train_error": float(np.nanmean(out["train_error"]))})
        steady_time += P_steady_time
        steady_imgs += P_steady_imgs
        bad = np.asarray(jax.device_get(states.nonfinite))
        stats.nonfinite += [{"P": int(P), "seed": int(seeds[i])} for i in np.flatnonzero(bad)]
        wall = time.perf_counter() - t_P
        stats.per_P.append({"P": int(P), "wall_s": wall, "compile_s": compile_s,
                            "img_per_s": P_steady_imgs / P_steady_time if P_steady_time > 0 else float("nan")})
        if progress:
            progress({"event": "P_done", "P": int(P), "P_index": pi, "n_P": len(cfg.train.P), "wall_s": wall})
    stats.wall_s = time.perf_counter() - t_run
    return curves, stats
