"""``jaxscale bench experiment CONFIG``: the projected wall time of a whole config on this device.

A short measured run of the config's real programs — its model, seeds, precision, norms, batch size,
device layout and the seed batching a run of it picks (:func:`jaxscale.train.loop.plan_programs`:
the static rule, then the widest vmap group that fits in memory) — times:

* one training epoch at a measured P (a multiple of the batch size), after two compiling rounds;
* one logged-epoch evaluation (train subset + test set, in ``eval_batch_size`` chunks, norms read)
  over a shortened test set;
* the compilation of the epoch and evaluation programs and the initialisation of the seeds.

The projection then adds up what the config will do: for every P, compile once (init: once), ``epochs``
training epochs (time proportional to P: every epoch is ``P / batch`` steps of the same program) and
one evaluation per logged epoch (time proportional to the number of evaluation chunks, from P and the
real test-set size). The same is projected for training the seeds one at a time with the one-seed
program on one device (compiled once per P, run S times). Pixels are synthetic for MNIST/CIFAR shapes (speed does not depend on them);
``digits`` is the real bundled set.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import jax
import numpy as np

from jaxscale.bench.common import DATASET_SHAPES, machine_info, synthetic_dataset


def _measure(exp, layout, group, P: int, n_test: int, repeats: int) -> dict:
    """Seconds of: compile (epoch + eval), init (first time: compile included), one steady-state
    training epoch (median of ``repeats`` after two warm-up rounds), one evaluation over P train +
    ``n_test`` test images (median), for the seeds of ``layout`` batched by ``group``
    (:func:`jaxscale.train.loop.build_programs`, compiled afresh here)."""
    from jaxscale.train.loop import build_programs, stacked_seed_keys

    ds = exp.dataset
    progs = build_programs(exp, layout, group)
    keys = {k: layout.put_seeded(np.asarray(v)) for k, v in stacked_seed_keys(range(layout.seeds_padded)).items()}
    x, y = layout.put_replicated(ds.x_train), layout.put_replicated(ds.y_train.astype(np.int32))
    xt, yt = layout.put_replicated(ds.x_test[:n_test]), layout.put_replicated(ds.y_test[:n_test].astype(np.int32))
    t0 = time.perf_counter()
    states = progs["init"](keys["init"], keys["train"], keys["norms"])
    subsets = progs["subsets"](keys["data"], ds.n_train, P)
    jax.block_until_ready((states, subsets))
    init_s = time.perf_counter() - t0
    ep, ev, warm = [], [], []
    for i in range(repeats + 2):  # rounds 0 and 1 compile (and warm up)
        t0 = time.perf_counter()
        states, m = progs["epoch"](states, subsets, x, y, np.int32(1 + i))
        jax.block_until_ready(m)
        t1 = time.perf_counter()
        out, states = progs["eval"](states, subsets, x, y, xt, yt, np.int32(i + 1))
        jax.block_until_ready(out)
        t2 = time.perf_counter()
        (ep if i >= 2 else warm).append(t1 - t0)
        (ev if i >= 2 else warm).append(t2 - t1)
    epoch_s, eval_s = statistics.median(ep), statistics.median(ev)
    # the warm-up rounds' excess over timed rounds is compilation (and first-touch allocation)
    compile_s = max(0.0, sum(warm) - 2 * (epoch_s + eval_s))
    return {"epoch_s": epoch_s, "eval_s": eval_s, "compile_s": compile_s, "init_s": init_s,
            "epoch_samples_s": ep, "eval_samples_s": ev}


def project(cfg, *, P_measure: int = 512, repeats: int = 1, sequential: bool = True, n_test_measure: int = 0,
            seeds_measure: int = 0) -> dict:
    """Projected wall time of ``cfg`` (see the module docstring). ``n_test_measure``: test images in
    the measured evaluation (default ``2 * eval_batch_size``); ``seeds_measure``: measure the ensemble
    with this many seeds and scale the time by ``S / seeds_measure`` (0 = all S; the run's vmap group
    size is kept, so scaling is exact for ``loop`` and groups, an upper bound for one ``vmap`` of all
    seeds, which gains from more seeds)."""
    from jaxscale.train.loop import build_experiment
    from jaxscale.config import ParallelConfig
    from jaxscale.train.sharding import plan_layout

    name = cfg.data.dataset
    bs = cfg.train.batch_size
    ebs = cfg.data.eval_batch_size
    S, T = cfg.train.seeds, cfg.train.epochs
    # measured P: a multiple of the batch size (whole steps), at most the smallest P of the config
    P_measure = max(bs, min(P_measure, min(cfg.train.P)) // bs * bs) if min(cfg.train.P) >= bs else min(cfg.train.P)
    n_test_real = DATASET_SHAPES[name][3] if name in DATASET_SHAPES else None
    n_test_measure = n_test_measure or 2 * ebs
    ds = synthetic_dataset(name, n_train=max(max(cfg.train.P), P_measure), n_test=n_test_measure)
    n_test_real = n_test_real or ds.x_test.shape[0]
    n_test_measure = min(n_test_measure, ds.x_test.shape[0])
    cfg_m = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, P=(P_measure,)))
    exp = build_experiment(cfg_m, ds)  # plans the run: its layout and seed batching
    n_log = len(exp.epochs_logged)
    S_m = min(S, seeds_measure) if seeds_measure else S
    layout_m = exp.layout if S_m == S else plan_layout(cfg.parallel, S_m)
    group = exp.batching.group
    if group is not None and 1 < layout_m.per_group <= group:  # a group as wide as all measured seeds
        group = None
    exp_m = dataclasses.replace(exp, cfg=dataclasses.replace(cfg_m, train=dataclasses.replace(cfg_m.train, seeds=S_m)))

    def chunks(P, n_test):
        return math.ceil(P / ebs) + math.ceil(n_test / ebs)

    def total(m, n_seeds_scale):
        # per P: the epoch and eval programs compile again (the subset size is a shape); the init
        # program compiles once (its time is charged to the first P)
        per_P = []
        for i, P in enumerate(cfg.train.P):
            train = T * m["epoch_s"] * P / P_measure
            ev = n_log * m["eval_s"] * chunks(P, n_test_real) / chunks(P_measure, n_test_measure)
            per_P.append(m["compile_s"] + (m["init_s"] if i == 0 else 0.0) + n_seeds_scale * (train + ev))
        return per_P

    ens = _measure(exp_m, layout_m, group, P_measure, n_test_measure, repeats)
    per_P_ens = total(ens, S / S_m)
    res = {
        "config": cfg.name, **machine_info(),
        "seeds": S, "epochs": T, "P": list(cfg.train.P), "logged_epochs": n_log, "batch_size": bs,
        "precision": cfg.train.precision, "P_measure": P_measure, "n_test_measure": n_test_measure,
        "n_test": n_test_real, "seeds_measured": S_m, "repeats": repeats,
        "ensemble_strategy": exp.strategy, "seed_batching": dataclasses.asdict(exp.batching),
        "ensemble_epoch_s": ens["epoch_s"], "ensemble_eval_s": ens["eval_s"],
        "ensemble_compile_s": ens["compile_s"], "ensemble_init_s": ens["init_s"],
        "projected_ensemble_per_P_s": per_P_ens,
        "projected_ensemble_s": sum(per_P_ens),
    }
    res["projected_ensemble_h"] = res["projected_ensemble_s"] / 3600
    if sequential:
        one_cfg = dataclasses.replace(cfg_m, train=dataclasses.replace(cfg_m.train, seeds=1))
        one_device = plan_layout(ParallelConfig(data=1), 1, devices=jax.devices()[:1])
        one = _measure(dataclasses.replace(exp, cfg=one_cfg), one_device, None, P_measure, n_test_measure, repeats)
        per_P_seq = total(one, S)
        res.update(single_epoch_s=one["epoch_s"], single_eval_s=one["eval_s"], single_compile_s=one["compile_s"],
                   projected_sequential_per_P_s=per_P_seq, projected_sequential_s=sum(per_P_seq))
        res["projected_sequential_h"] = res["projected_sequential_s"] / 3600
        res["speedup"] = res["projected_sequential_s"] / res["projected_ensemble_s"]
    return res


def format_projection(r: dict) -> str:
    from jaxscale.progress import fmt_duration

    scaled = f", measured with {r['seeds_measured']} seeds and scaled" if r["seeds_measured"] != r["seeds"] else ""
    lines = [
        f"{r['config']}: {len(r['P'])} P × {r['seeds']} seeds × {r['epochs']} epochs ({r['logged_epochs']} logged), "
        f"{r['precision']}, on {r['backend']} ({r['device']}), load {r['load_average_1_5_15']}; "
        f"measured at P={r['P_measure']}{scaled}",
        f"  ensemble ({r['ensemble_strategy']}): epoch {r['ensemble_epoch_s']:.3f} s, "
        f"eval {r['ensemble_eval_s']:.3f} s, compile {r['ensemble_compile_s']:.1f} s "
        f"-> projected {fmt_duration(r['projected_ensemble_s'])} ({r['projected_ensemble_h']:.2f} h)",
    ]
    if "projected_sequential_s" in r:
        lines.append(
            f"  one seed at a time: epoch {r['single_epoch_s']:.3f} s, eval {r['single_eval_s']:.3f} s "
            f"-> projected {fmt_duration(r['projected_sequential_s'])} ({r['projected_sequential_h']:.2f} h); "
            f"ensemble is {r['speedup']:.2f}x faster")
    return "\n".join(lines)
