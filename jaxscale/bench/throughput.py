"""``jaxscale bench throughput``: training images/s of one seed, of S seeds one after another, and of
S seeds as one ensemble — same step, same code — plus FLOPs/image and MFU against a matmul peak
measured in the same run.

* **one seed**: ``jax.jit`` of the single-seed epoch (:func:`jaxscale.train.step.train_epoch`) on an
  unbatched state — no seed axis at all.
* **sequential**: that same compiled program called once per seed, each seed with its own state
  (the most favourable way to train seeds one at a time: no stacking, no copies).
* **ensemble**: the run's epoch program (:func:`jaxscale.train.loop.make_programs`) on a stacked
  state, for every seed batching in ``strategies`` (``loop``, ``vmap``, ``vmap:K`` = vmapped groups of
  K seeds, see :mod:`jaxscale.train.ensemble`); ``img_s_ensemble`` is the rate of the batching a run
  picks (the static rule, then the widest vmap group that fits in memory), measured at the
  benchmark's P like the others — not the best one in hindsight.

All timed programs — and a large matmul, the MFU reference — run interleaved (round-robin, median
over ``repeats`` rounds) so that load from other processes on a shared machine hits them alike;
ratios (``ensemble_over_sequential``, ``mfu``, ``single_seed_mfu``) are medians of per-round ratios. FLOPs per image come from XLA's cost analysis
of ONE compiled single-seed train step (not of the epoch: cost analysis counts a ``while``/``scan``
body once, whatever the trip count), divided by the batch size; for the CNN it is checked against a
count by hand (:func:`arithmetic_flops_per_image`).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.bench.common import bench_config, build_bench_experiment, machine_info, matmul_peak_runner
from jaxscale.errors import UsageError


def step_flops_per_image(exp) -> float:
    """FLOPs of one single-seed train step (XLA cost analysis of the compiled step) per image,
    norm update and optimiser included; NaN if the backend reports none.

    Traced with the patches convolution on the whole batch at once (the model's
    ``conv_chunk_bytes = 0``): the same arithmetic as the chunked one a run uses, but without the loop
    over chunks whose body XLA's cost analysis would count only once."""
    from jaxscale.train.state import seed_keys
    from jaxscale.train.step import init_state, train_step

    spec = dataclasses.replace(exp.spec, module=exp.spec.module.clone(conv_chunk_bytes=0))
    fns = dataclasses.replace(exp.fns, spec=spec)
    k = seed_keys(0)
    bs = exp.cfg.train.batch_size
    state = jax.eval_shape(functools.partial(init_state, fns), k["init"], k["train"], k["norms"])
    xb = jax.ShapeDtypeStruct((bs, *exp.dataset.x_train.shape[1:]), exp.dataset.x_train.dtype)
    yb = jax.ShapeDtypeStruct((bs,), jnp.int32)
    # the norm update as an average step has it: every step when norms.every == 1, else (rare
    # updates, amortised) none
    step = functools.partial(train_step, fns, update_norms=fns.norms.every == 1)
    compiled = jax.jit(step).lower(state, xb, yb).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost.get("flops", float("nan"))) / bs if cost else float("nan")


def arithmetic_flops_per_image(spec) -> Optional[float]:
    """Train-step FLOPs per image of the paper's CNN counted by hand (None for other families).

    Forward: 2 FLOPs per multiply-accumulate of every conv (3×3, 'same') and Linear. Backward: the
    input gradient and the weight gradient each cost one forward's MACs, except that the first layer
    needs no input gradient. Elementwise work (ReLU, pooling, bias, loss, optimiser, norms) is not
    counted, so XLA's figure is expected a few per cent higher."""
    if spec.family != "cnn":
        return None
    hyper = spec.hyper
    h, w, c = spec.input_shape
    macs = []
    for i, width in enumerate(hyper["convs"]):
        macs.append(h * w * 9 * c * width)
        c = width
        if (i + 1) % hyper["pool_every"] == 0:
            h, w = h // 2, w // 2
    feat = h * w * c
    for width in tuple(hyper["mlp"]) + (spec.num_classes,):
        macs.append(feat * width)
        feat = width
    return 2.0 * (3 * sum(macs) - macs[0])


def parse_group(strategy: str):
    """A benchmark strategy name -> ``seed_map``'s group: ``"loop"`` -> 1, ``"vmap"`` -> None (all
    seeds), ``"vmap:K"`` -> K (vmapped groups of K seeds); UsageError otherwise."""
    s = strategy.strip()
    if s in ("loop", "vmap"):
        return 1 if s == "loop" else None
    k = s.split(":", 1)[1] if s.startswith("vmap:") else ""
    if not (k.isdigit() and int(k) >= 1):
        raise UsageError(f"--strategies: {strategy!r} is not loop, vmap or vmap:K (K >= 1 seeds per vmapped group)")
    return int(k)


def group_name(group) -> str:
    """Inverse of :func:`parse_group`."""
    return "vmap" if group is None else "loop" if group == 1 else f"vmap:{group}"


def throughput(model: str, dataset: str, *, seeds: int = 8, P: int = 512, precision: str = "fp32",
               repeats: int = 3, strategies: Optional[Sequence[str]] = None, norms_every: int = 1,
               preset: Optional[str] = None, batch_size: int = 128, conv_impl: str = "auto",
               ensemble: str = "auto") -> dict:
    """Measure, in one run: img/s of one seed, of ``seeds`` seeds trained one after another with the
    one-seed program, and of the ensemble program for each seed batching in ``strategies`` (default:
    ``loop`` and ``vmap``) plus the one a run picks (``ensemble`` = ``parallel.ensemble``). Returns the
    JSON-able result (see the module docstring and ``format_throughput``)."""
    from jaxscale.train import step as step_lib
    from jaxscale.train.loop import build_programs, make_programs, stacked_seed_keys

    info = machine_info()
    cfg = bench_config(model, dataset, seeds=seeds, P=P, precision=precision, norms_every=norms_every,
                       preset=preset, batch_size=batch_size, conv_impl=conv_impl, ensemble=ensemble)
    exp = build_bench_experiment(cfg, dataset, n_train=max(P, 2048))  # plans the run's seed batching
    ds, layout = exp.dataset, exp.layout
    pick = group_name(exp.batching.group)
    names = list(dict.fromkeys([group_name(parse_group(s)) for s in (strategies or ("loop", "vmap"))] + [pick]))
    progs = {n: make_programs(exp) if n == pick else build_programs(exp, layout, parse_group(n)) for n in names}

    keys = {k: layout.put_seeded(np.asarray(v)) for k, v in stacked_seed_keys(range(layout.seeds_padded)).items()}
    subs = progs[pick]["subsets"](keys["data"], ds.n_train, P)
    x, y = layout.put_replicated(ds.x_train), layout.put_replicated(ds.y_train.astype(np.int32))
    one = jax.jit(functools.partial(step_lib.train_epoch, exp.fns, batch_size), donate_argnums=(0,))
    stacked = progs[pick]["init"](keys["init"], keys["train"], keys["norms"])
    per_seed = [jax.tree.map(lambda a, i=i: jnp.copy(a[i]), stacked) for i in range(seeds)]
    box = {"seq": per_seed, "ens": stacked, "epoch": 0}

    def run_single():
        box["epoch"] += 1
        box["seq"][0], m = one(box["seq"][0], subs[0], x, y, jnp.int32(box["epoch"]))
        return m

    def run_sequential():
        # the baseline: a host loop of the one-seed program, each seed with its own state
        box["epoch"] += 1
        ms = []
        for i in range(seeds):
            box["seq"][i], m = one(box["seq"][i], subs[i], x, y, jnp.int32(box["epoch"]))
            ms.append(m)
        return ms

    def run_ensemble(n):
        box["epoch"] += 1
        box["ens"], m = progs[n]["epoch"](box["ens"], subs, x, y, np.int32(box["epoch"]))
        return m

    runners = {"single": run_single, "sequential": run_sequential,
               **{f"ensemble:{n}": functools.partial(run_ensemble, n) for n in names}}
    compile_s, times = {}, {k: [] for k in runners}
    for k, r in runners.items():  # first call: compile (+ run); second: warm
        t0 = time.perf_counter()
        jax.block_until_ready((r(), box["ens"]))
        compile_s[k] = time.perf_counter() - t0
        jax.block_until_ready((r(), box["ens"]))
    peak_run = matmul_peak_runner(precision)
    peaks = []
    # Round-robin: every round times everything once, the matmul peak included, so each round's
    # ratios compare measurements taken seconds apart (the load of a shared machine changes
    # over minutes); figures are medians over rounds, ratios medians of per-round ratios.
    for _ in range(repeats):
        peaks.append(peak_run())
        for k, r in runners.items():
            t0 = time.perf_counter()
            jax.block_until_ready((r(), box["ens"], box["seq"]))
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak_round = [max(p.values()) for p in peaks]
    ens = {n: {"img_s": seeds * P / med[f"ensemble:{n}"], "epoch_s": med[f"ensemble:{n}"],
               "samples_s": times[f"ensemble:{n}"], "compile_s": compile_s[f"ensemble:{n}"]} for n in names}
    flops_img = step_flops_per_image(exp)
    flops_arith = arithmetic_flops_per_image(exp.spec)
    img_s_single = P / med["single"]
    img_s_seq = seeds * P / med["sequential"]
    img_s_ens = ens[pick]["img_s"]
    achieved = flops_img * img_s_ens
    peak_flops = statistics.median(peak_round)
    ens_key = f"ensemble:{pick}"
    ratio = statistics.median(ts / te for ts, te in zip(times["sequential"], times[ens_key]))
    mfu = statistics.median(flops_img * seeds * P / te / pk for te, pk in zip(times[ens_key], peak_round))
    mfu1 = statistics.median(flops_img * P / t1 / pk for t1, pk in zip(times["single"], peak_round))
    return {
        "model": model, "preset": cfg.model.preset, "dataset": dataset, "precision": precision, "seeds": seeds, "P": P,
        "batch_size": batch_size, "conv_impl": exp.spec.hyper.get("conv_impl", conv_impl),
        "norms_every": norms_every, "repeats": repeats, **info,
        "img_s_single": img_s_single,
        "img_s_sequential": img_s_seq,
        "img_s_ensemble": img_s_ens,
        "ensemble_strategy": pick,
        "seed_batching": dataclasses.asdict(exp.batching),
        "ensemble_by_strategy": ens,
        "best_strategy_in_hindsight": max(ens, key=lambda n: ens[n]["img_s"]),
        "ensemble_over_sequential": ratio,
        "flops_per_img": flops_img,
        "flops_per_img_arithmetic": flops_arith,
        "achieved_flops": achieved,
        "peak_flops": peak_flops,
        "peak_by_source": {k: statistics.median(p[k] for p in peaks) for k in peaks[0]},
        "mfu": mfu,
        "single_seed_achieved_flops": flops_img * img_s_single,
        "single_seed_mfu": mfu1,
        "samples_s": {"single": times["single"], "sequential": times["sequential"], "peak_flops": peak_round},
        "compile_s": compile_s,
    }


def format_throughput(r: dict) -> str:
    S = r["seeds"]
    lines = [
        f"{r['model']}/{r['preset']} on {r['dataset']}-shaped data, {r['precision']}, batch {r['batch_size']}, "
        f"P={r['P']}, conv {r['conv_impl']}, {r['backend']} ({r['device']}), load {r['load_average_1_5_15']}",
        f"  one seed                        {r['img_s_single']:>10,.0f} img/s",
        f"  {S} seeds one after another     {r['img_s_sequential']:>10,.0f} img/s",
    ]
    for k, v in r["ensemble_by_strategy"].items():
        mark = "  <- a run's choice" if k == r["ensemble_strategy"] else ""
        lines.append(f"  {S} seeds ensemble {k:>12}   {v['img_s']:>10,.0f} img/s{mark}")
    b = r["seed_batching"]
    mem = (f"needs {b['need_bytes'] / 1e9:.3g} GB of {b['limit_bytes'] / 1e9:.3g} GB"
           if b["need_bytes"] is not None and b["limit_bytes"] is not None else "memory not checked")
    arith = r["flops_per_img_arithmetic"]
    lines += [
        f"  a run's choice: {r['ensemble_strategy']} ({b['kind']} by the static rule; {mem} per device)",
        f"  ensemble / sequential            {r['ensemble_over_sequential']:>10.2f}x",
        f"  FLOPs per image (XLA, one step)  {r['flops_per_img']:>10.4g}"
        + (f"   (by hand: {arith:.4g}, XLA/hand {r['flops_per_img'] / arith:.3f})" if arith else ""),
        f"  achieved (ensemble)              {r['achieved_flops']:>10.3g} FLOP/s",
        f"  matmul peak (measured now)       {r['peak_flops']:>10.3g} FLOP/s",
        f"  MFU ensemble / one seed          {r['mfu']:>10.1%} / {r['single_seed_mfu']:.1%}",
    ]
    return "\n".join(lines)
