"""Patches convolution, whole batch vs chunks of the batch (the models' ``conv_chunk_bytes``).

Two measurements, each side by side in one run (round-robin, medians), so the ratios survive a noisy
shared machine:

1. layers: forward + backward (input and kernel gradients) of one 3x3 'same' convolution, inside a
   ``lax.scan`` of 4 steps as in a training epoch, for the CIFAR-10 CNN's three layers at batch 128,
   with patches chunks of 0 (whole batch), 1, 3 and 8 MiB;
2. model: one seed's training epoch (``jaxscale.train.step.train_epoch``, norms every step) of the
   CIFAR-10 CNN (or ``--model resnet``), with whole-batch patches vs the default chunking.

Results: benchmarks/RESULTS.md.

    python benchmarks/conv_chunking.py [--model cnn|resnet] [--P 256] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _layer_runner(shape, chunk_bytes, steps=4):
    import jax
    import jax.numpy as jnp

    from jaxscale.models.conv import conv2d

    b, h, w, cin, cout = shape
    x = jax.random.normal(jax.random.PRNGKey(0), (b, h, w, cin))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, cin, cout)) * 0.1

    def loss(k, x):
        return jnp.sum(jnp.tanh(conv2d(x, k, (1, 1), ((1, 1), (1, 1)), "patches", chunk_bytes)))

    grad = jax.grad(loss, argnums=(0, 1))

    def run(k, x):
        def body(c, _):
            k, x = c
            dk, dx = grad(k, x)
            return (k - 1e-6 * dk, x - 1e-6 * dx), None

        return jax.lax.scan(body, (k, x), None, length=steps)[0]

    compiled = jax.jit(run).lower(k, x).compile()
    return lambda: compiled(k, x), steps


def _model_runner(model, P, chunk_bytes):
    import dataclasses

    from jaxscale.bench.common import bench_config, build_bench_experiment, epoch_runner

    cfg = bench_config(model, "cifar10", seeds=1, P=P, precision="fp32", norms_every=1, conv_impl="patches")
    exp = build_bench_experiment(cfg, "cifar10", n_train=max(P, 2048))
    spec = dataclasses.replace(exp.spec, module=exp.spec.module.clone(conv_chunk_bytes=chunk_bytes))
    return epoch_runner(dataclasses.replace(exp, fns=dataclasses.replace(exp.fns, spec=spec)), P, group=1)


def _round_robin(runners: dict, repeats: int) -> dict:
    import jax

    for r in runners.values():
        jax.block_until_ready(r())
    times = {n: [] for n in runners}
    for _ in range(repeats):
        for n, r in runners.items():
            t = time.perf_counter()
            jax.block_until_ready(r())
            times[n].append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn", choices=("cnn", "resnet"))
    ap.add_argument("--P", type=int, default=256, help="training images in the timed model epoch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from jaxscale.bench.common import machine_info
    from jaxscale.models.conv import PATCH_CHUNK_BYTES

    mib = 2**20
    layers = {}
    for shape in [(128, 32, 32, 3, 32), (128, 32, 32, 32, 64), (128, 16, 16, 64, 128)]:
        runners, steps = {}, 4
        for cb in (0, 1 * mib, PATCH_CHUNK_BYTES, 8 * mib):
            fn, steps = _layer_runner(shape, cb)
            runners[cb] = fn
        times = _round_robin(runners, args.repeats)
        med = {cb: statistics.median(t) / steps for cb, t in times.items()}
        layers["x".join(map(str, shape))] = {
            "ms_per_step": {f"{cb // mib}MiB" if cb else "whole": 1e3 * m for cb, m in med.items()},
            "whole_over_default": med[0] / med[PATCH_CHUNK_BYTES],
        }
    model = _round_robin({"whole": _model_runner(args.model, args.P, 0),
                          "chunked": _model_runner(args.model, args.P, PATCH_CHUNK_BYTES)}, args.repeats)
    med = {n: statistics.median(t) for n, t in model.items()}
    out = {**machine_info(), "model": args.model, "P": args.P, "repeats": args.repeats,
           "default_chunk_bytes": PATCH_CHUNK_BYTES, "layers_fwd_bwd_batch128": layers,
           "model_epoch_s": {n: med[n] for n in med}, "model_img_s": {n: args.P / med[n] for n in med},
           "model_samples_s": model, "model_chunked_over_whole": med["whole"] / med["chunked"]}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, r in layers.items():
            print(f"layer {name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in r["ms_per_step"].items())
                  + f"  -> default chunking {r['whole_over_default']:.2f}x whole batch")
        print(f"{args.model} one seed, P={args.P}: whole {out['model_img_s']['whole']:.1f} img/s, chunked "
              f"{out['model_img_s']['chunked']:.1f} img/s -> {out['model_chunked_over_whole']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
