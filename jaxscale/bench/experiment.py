"""``jaxscale bench experiment CONFIG``: the projected wall time of a whole config on this device.

A short measured run of the config's real programs (its model, seeds, strategy, norms; synthetic
pixels of the dataset's exact shape for MNIST/CIFAR) gives the time of one training epoch and one
evaluation at a measured P; both scale linearly (training with P, evaluation with P + test-set size).
The projection sums them over all P, the epochs and the logged epochs — for the ensemble program and
for the same seeds trained one after another with the S=1 program.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from jaxscale.bench.common import DATASET_SHAPES, synthetic_dataset


def _measure(exp, S: int, P: int, repeats: int) -> tuple[float, float]:
    """Median seconds of one training epoch and of one logged-epoch evaluation, S seeds at size P."""
    from jaxscale.train.loop import make_programs, stacked_seed_keys

    progs = make_programs(exp)
    keys = stacked_seed_keys(range(S))
    ds = exp.dataset
    x, y = jax.device_put(ds.x_train), jax.device_put(ds.y_train)
    xt, yt = jax.device_put(ds.x_test), jax.device_put(ds.y_test)
    states = progs["init"](keys["init"], keys["train"], keys["norms"])
    subsets = progs["subsets"](keys["data"], ds.n_train, P)
    ep, ev = [], []
    for i in range(repeats + 1):  # the first round compiles
        t0 = time.perf_counter()
        states, m = progs["epoch"](states, subsets, x, y, jnp.int32(i + 1))
        jax.block_until_ready(m)
        t1 = time.perf_counter()
        out, states = progs["eval"](states, subsets, x, y, xt, yt, jnp.int32(i + 1))
        jax.block_until_ready(out)
        t2 = time.perf_counter()
        if i:
            ep.append(t1 - t0)
            ev.append(t2 - t1)
    return statistics.median(ep), statistics.median(ev)


def project(cfg, *, P_measure: int = 512, repeats: int = 2, sequential: bool = True) -> dict:
    from jaxscale.train.loop import build_experiment

    name = cfg.data.dataset
    n_test = DATASET_SHAPES[name][3] if name in DATASET_SHAPES else None
    P_measure = min(P_measure, min(cfg.train.P))
    ds = synthetic_dataset(name, n_train=max(max(cfg.train.P), P_measure), n_test=n_test or 1000)
    n_test = ds.x_test.shape[0]
    cfg_m = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, P=(P_measure,)))
    exp = build_experiment(cfg_m, ds)
    S, T = cfg.train.seeds, cfg.train.epochs
    n_log = len(exp.epochs_logged)

    def total(epoch_s, eval_s):
        return sum(T * epoch_s * P / P_measure + n_log * eval_s * (P + n_test) / (P_measure + n_test)
                   for P in cfg.train.P)

    ens_epoch, ens_eval = _measure(exp, S, P_measure, repeats)
    res = {
        "config": cfg.name, "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "seeds": S, "epochs": T, "P": list(cfg.train.P), "logged_epochs": n_log, "P_measure": P_measure,
        "ensemble_strategy": exp.strategy,
        "ensemble_epoch_s": ens_epoch, "ensemble_eval_s": ens_eval,
        "projected_ensemble_s": total(ens_epoch, ens_eval),
    }
    if sequential:
        one_epoch, one_eval = _measure(exp, 1, P_measure, repeats)
        res.update(single_epoch_s=one_epoch, single_eval_s=one_eval,
                   projected_sequential_s=S * total(one_epoch, one_eval))
        res["speedup"] = res["projected_sequential_s"] / res["projected_ensemble_s"]
    return res


def format_projection(r: dict) -> str:
    from jaxscale.progress import fmt_duration

    lines = [
        f"{r['config']}: {len(r['P'])} P × {r['seeds']} seeds × {r['epochs']} epochs ({r['logged_epochs']} logged) "
        f"on {r['backend']} ({r['device']}), measured at P={r['P_measure']}",
        f"  ensemble ({r['ensemble_strategy']}): epoch {r['ensemble_epoch_s']:.3f} s, eval {r['ensemble_eval_s']:.3f} s "
        f"-> projected {fmt_duration(r['projected_ensemble_s'])} ({r['projected_ensemble_s'] / 3600:.2f} h)",
    ]
    if "projected_sequential_s" in r:
        lines.append(
            f"  one seed at a time: epoch {r['single_epoch_s']:.3f} s, eval {r['single_eval_s']:.3f} s "
            f"-> projected {fmt_duration(r['projected_sequential_s'])} ({r['projected_sequential_s'] / 3600:.2f} h); "
            f"ensemble is {r['speedup']:.2f}x faster")
    return "\n".join(lines)
