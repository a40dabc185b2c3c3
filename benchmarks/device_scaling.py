"""Device scaling: training images/s on 1, 2 and 4 devices, seed-parallel vs data-parallel.

Each (device count, layout) runs in its own subprocess (a fake device count must be set before JAX
starts: ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` on CPU) under ``timeout -k 5``. The
worker builds the experiment's jitted epoch program on the layout, runs one epoch to compile, then
times ``--epochs`` epochs (each synced) and reports ``seeds x P x epochs / seconds``.

On CPU the fake devices share the same cores, so these figures only check that every layout runs
and what its overhead is; real scaling needs real devices:

    python benchmarks/device_scaling.py                       # CPU smoke check: 1, 2, 4 fake devices
    python benchmarks/device_scaling.py --real --devices 1,2,4,8   # a GPU/TPU host (first N devices)
    python benchmarks/device_scaling.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def worker(args) -> dict:
    import jax
    import numpy as np

    from jaxscale.config import ParallelConfig, config_from_dict
    from jaxscale.train.loop import build_experiment, make_programs, stacked_seed_keys
    from jaxscale.train.sharding import plan_layout

    raw = {"name": "scaling", "model": {"family": args.model, "preset": args.preset},
           "data": {"dataset": args.dataset},
           "train": {"P": [args.P], "seeds": args.seeds, "epochs": 1, "batch_size": args.batch_size},
           "parallel": {"ensemble": args.ensemble}}
    n = args.n
    par = ParallelConfig(data=1 if args.layout == "seeds" else n, ensemble=args.ensemble)
    layout = plan_layout(par, args.seeds, jax.devices()[:n])
    exp = build_experiment(config_from_dict(raw), layout=layout)  # plans the seed batching on this layout
    progs = make_programs(exp)
    keys = {k: layout.put_seeded(np.asarray(v))
            for k, v in stacked_seed_keys(np.arange(layout.seeds_padded)).items()}
    ds = exp.dataset
    x, y = layout.put_replicated(ds.x_train), layout.put_replicated(ds.y_train.astype(np.int32))
    states = progs["init"](keys["init"], keys["train"], keys["norms"])
    subsets = progs["subsets"](keys["data"], ds.n_train, args.P)
    t0 = time.perf_counter()
    states, _ = progs["epoch"](states, subsets, x, y, np.int32(1))
    jax.block_until_ready(states)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for e in range(args.epochs):
        states, _ = progs["epoch"](states, subsets, x, y, np.int32(e + 2))
        jax.block_until_ready(states)  # sync every epoch (collectives on fake CPU devices, TOOLCHAIN.md)
    dt = time.perf_counter() - t0
    return {"devices": n, "layout": args.layout, "describe": layout.describe(), "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "compile_s": compile_s,
            # real seeds only: padding seeds are work the layout wastes
            "img_per_s": args.seeds * args.P * args.epochs / dt, "epoch_s": dt / args.epochs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn", choices=("cnn", "resnet", "vit"))
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--P", type=int, default=1024, help="training samples per seed (one epoch)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs after the compiling one")
    ap.add_argument("--ensemble", default="auto", help="parallel.ensemble (vmap, loop, ...)")
    ap.add_argument("--devices", default="1,2,4", help="device counts to measure")
    ap.add_argument("--layouts", default="seeds,data")
    ap.add_argument("--real", action="store_true", help="use the real devices (no fake CPU device count)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="seeds", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    rows = []
    for n in [int(v) for v in args.devices.split(",")]:
        for layout in args.layouts.split(","):
            if n == 1 and layout == "data":
                continue  # one device: both layouts are the same program
            env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            if not args.real:
                env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
                env["JAX_PLATFORMS"] = "cpu"
            cmd = ["timeout", "-k", "5", str(args.timeout), sys.executable, __file__, "--worker", "--n", str(n),
                   "--layout", layout, "--model", args.model, "--dataset", args.dataset, "--preset", args.preset,
                   "--seeds", str(args.seeds), "--P", str(args.P), "--batch-size", str(args.batch_size),
                   "--epochs", str(args.epochs), "--ensemble", args.ensemble]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                rows.append({"devices": n, "layout": layout, "error": f"exit {proc.returncode}: "
                             + (proc.stderr.strip().splitlines() or ["?"])[-1]})
            else:
                rows.append(json.loads(line[len("RESULT "):]))
            print(f"  {n} device(s), {layout}: " + (f"{rows[-1]['img_per_s']:,.0f} img/s" if "img_per_s" in rows[-1]
                                                   else rows[-1]["error"]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    base = next((r["img_per_s"] for r in rows if r.get("devices") == 1 and "img_per_s" in r), None)
    print(f"{args.model}/{args.preset} on {args.dataset}, {args.seeds} seeds, P={args.P}, batch {args.batch_size}, "
          f"{'real' if args.real else 'fake CPU'} devices")
    print("| devices | layout | images/s | vs 1 device | compile s | layout |")
    print("|---:|---|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['devices']} | {r['layout']} | failed | | | {r['error']} |")
            continue
        rel = f"{r['img_per_s'] / base:.2f}x" if base else ""
        print(f"| {r['devices']} | {r['layout']} | {r['img_per_s']:,.0f} | {rel} | {r['compile_s']:.1f} | {r['describe']} |")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
