"""``jaxscale bench norms``: what in-graph norms cost a train step, next to the official approach.

In one run, for an S-seed ensemble: the median train-step time without norms (``norms.every = 0``),
with the power-iteration update in every step (``every = 1``), and the official approach — an exact
SVD of every weight matrix, jitted on the same device. All three are timed interleaved (ABCABC…) so
that load from other processes hits them alike.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax

from jaxscale.bench.common import bench_config, build_bench_experiment


def norms_overhead(model: str = "cnn", dataset: str = "cifar10", *, seeds: int = 8, steps: int = 4,
                   repeats: int = 5, power_iterations: int = 1, convention: str = "paper",
                   ensemble: str = "auto") -> dict:
    from jaxscale.bench.common import epoch_runner
    from jaxscale.norms import exact_norms

    P = steps * 128
    runners, exps = {}, {}
    for name, every in (("no_norms", 0), ("with_norms", 1)):
        cfg = bench_config(model, dataset, seeds=seeds, P=P, norms_every=every, ensemble=ensemble)
        cfg = dataclasses.replace(cfg, norms=dataclasses.replace(
            cfg.norms, power_iterations=power_iterations, convention=convention))
        exp = build_bench_experiment(cfg, dataset, n_train=max(P, 1024))
        exps[name] = exp
        runners[name] = epoch_runner(exp, P)  # the seed batching a run of this config uses
        jax.block_until_ready(runners[name]())  # compile
        jax.block_until_ready(runners[name]())  # warm
    # The official approach: full SVD of every (flattened) weight matrix, for every seed, jitted.
    exp = exps["no_norms"]
    from jaxscale.train.loop import make_programs, stacked_seed_keys

    keys = stacked_seed_keys(range(seeds))
    states = make_programs(exp)["init"](keys["init"], keys["train"], keys["norms"])
    svd_fn = jax.jit(jax.vmap(lambda p: exact_norms(exp.fns.norms, p)))
    jax.block_until_ready(svd_fn(states.params))
    # all three timed round-robin (ABCABC...), so that load from other processes hits them alike
    times = {k: [] for k in runners}
    svd_times = []
    for _ in range(repeats):
        for k, r in runners.items():
            t0 = time.perf_counter()
            jax.block_until_ready(r())
            times[k].append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        jax.block_until_ready(svd_fn(states.params))
        svd_times.append(time.perf_counter() - t0)

    step_s = statistics.median(times["no_norms"])
    step_n = statistics.median(times["with_norms"])
    svd_s = statistics.median(svd_times)
    return {
        "model": model, "dataset": dataset, "seeds": seeds, "batch_size": 128,
        "power_iterations": power_iterations, "convention": convention, "ensemble": exp.strategy,
        "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
        "step_s": step_s, "step_with_norms_s": step_n, "overhead_fraction": step_n / step_s - 1.0,
        "svd_s": svd_s, "svd_over_step": svd_s / step_s,
        "samples": {"step_s": times["no_norms"], "step_with_norms_s": times["with_norms"],
                    "svd_s": svd_times},
    }


def format_norms(r: dict) -> str:
    return "\n".join([
        f"{r['model']} on {r['dataset']}-shaped data, {r['seeds']} seeds ({r['ensemble']}), batch {r['batch_size']}, "
        f"{r['backend']} ({r['device']}), convention {r['convention']}",
        f"  train step, no norms                     {r['step_s'] * 1e3:>9.2f} ms",
        f"  train step, norms every step ({r['power_iterations']} it.)     {r['step_with_norms_s'] * 1e3:>9.2f} ms"
        f"   overhead {r['overhead_fraction']:+.1%}",
        f"  official approach: exact SVD of all layers {r['svd_s'] * 1e3:>8.2f} ms   = {r['svd_over_step']:.2f} train steps",
    ])
