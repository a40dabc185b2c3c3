"""Ensemble throughput: S seeds as one program vs the same S seeds trained one after another.

Same model, same train step, same epoch function; the only difference is how the seeds are batched
(`jax.vmap`, an in-program loop updating the stacked state in place, vmapped groups of K seeds, or S
calls of the one-seed program, see jaxscale/train/ensemble.py). Everything is measured in one run, round-robin, next to a matmul peak,
so the ratios survive a noisy shared machine. Pixels are random uint8 of CIFAR-10's exact shape
(speed does not depend on pixel values; no download needed); `digits` is the real bundled set.
Same as `jaxscale bench throughput` (results: benchmarks/RESULTS.md).

    python benchmarks/ensemble_throughput.py --P 256 --repeats 3          # CIFAR-10 CNN, 8 seeds, fp32
    python benchmarks/ensemble_throughput.py --dataset digits --P 1024 --repeats 5
    python benchmarks/ensemble_throughput.py --strategies vmap,loop,vmap:4 --json
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxscale.config import PRECISIONS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn", choices=("cnn", "resnet", "vit"))
    ap.add_argument("--dataset", default="cifar10", choices=("digits", "mnist", "cifar10", "cifar100"))
    ap.add_argument("--preset", default=None, help="model preset (default: the dataset's)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--P", type=int, default=512, help="samples per timed epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "patches"))
    ap.add_argument("--strategies", default="loop,vmap",
                    help="comma-separated seed batchings to time besides a run's choice: loop, vmap, vmap:K")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from jaxscale.bench.throughput import format_throughput, throughput

    strategies = tuple(s for s in args.strategies.split(",") if s)
    r = throughput(args.model, args.dataset, seeds=args.seeds, P=args.P, precision=args.precision,
                   repeats=args.repeats, strategies=strategies, preset=args.preset, batch_size=args.batch_size,
                   conv_impl=args.conv_impl)
    print(json.dumps(r, indent=2) if args.json else format_throughput(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
