"""Benchmarks behind ``jaxscale bench``: every figure is measured in the same run as what it is
compared with (this class of machine is shared and noisy; only ratios travel)."""

from __future__ import annotations

import argparse
import json

from jaxscale.config import CONV_IMPLS, CONVENTIONS, ENSEMBLE_STRATEGIES, FAMILIES, PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True)

    t = sub.add_parser("throughput", help="img/s: one seed, S seeds sequentially, S seeds as one ensemble; MFU")
    t.add_argument("--model", default="cnn", choices=FAMILIES)
    t.add_argument("--dataset", default="cifar10", choices=("digits", "mnist", "cifar10", "cifar100"))
    t.add_argument("--preset", default=None, help="model preset (default: the dataset's)")
    t.add_argument("--seeds", type=int, default=8)
    t.add_argument("--P", type=int, default=512, help="training samples per timed epoch (default 512)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--precision", default="fp32", choices=PRECISIONS)
    t.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS)
    t.add_argument("--strategies", default="loop,vmap",
                   help="seed batchings to time besides a run's choice: comma-separated loop, vmap, vmap:K "
                        "(vmapped groups of K seeds); default loop,vmap")
    t.add_argument("--ensemble", default="auto", choices=ENSEMBLE_STRATEGIES,
                   help="parallel.ensemble of the run whose choice is img_s_ensemble (default auto)")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_throughput)

    n = sub.add_parser("norms", help="train-step time without/with in-graph norms, and the exact-SVD approach")
    n.add_argument("--model", default="cnn", choices=FAMILIES)
    n.add_argument("--dataset", default="cifar10", choices=("digits", "mnist", "cifar10", "cifar100"))
    n.add_argument("--seeds", type=int, default=8)
    n.add_argument("--steps", type=int, default=4, help="train steps per timed sample")
    n.add_argument("--repeats", type=int, default=5)
    n.add_argument("--power-iterations", type=int, default=1)
    n.add_argument("--convention", default="paper", choices=CONVENTIONS)
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=_norms)

    e = sub.add_parser("experiment", help="projected wall time of a whole config on this device")
    e.add_argument("config")
    e.add_argument("--P-measure", type=int, default=512, help="P of the short measured run (rounded to whole batches)")
    e.add_argument("--seeds", type=int, help="override train.seeds")
    e.add_argument("--seeds-measure", type=int, default=0,
                   help="measure the ensemble with this many seeds and scale (default: all)")
    e.add_argument("--repeats", type=int, default=1, help="timed epochs/evaluations after the compiling one")
    e.add_argument("--no-sequential", action="store_true", help="skip the one-seed-at-a-time projection")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_experiment)


def _positive(name, v):
    from jaxscale.errors import UsageError

    if v is not None and v <= 0:
        raise UsageError(f"{name} must be a positive integer, got {v}")


def _throughput(args) -> int:
    from jaxscale.bench.throughput import format_throughput, parse_group, throughput

    for k in ("seeds", "P", "repeats", "batch_size"):
        _positive(f"--{k.replace('_', '-')}", getattr(args, k))
    strategies = tuple(s for s in args.strategies.split(",") if s)
    for s in strategies:
        parse_group(s)
    r = throughput(args.model, args.dataset, seeds=args.seeds, P=args.P, precision=args.precision,
                   repeats=args.repeats, strategies=strategies, preset=args.preset, batch_size=args.batch_size,
                   conv_impl=args.conv_impl, ensemble=args.ensemble)
    print(json.dumps(r, indent=2) if args.json else format_throughput(r))
    return 0


def _norms(args) -> int:
    from jaxscale.bench.norms_bench import format_norms, norms_overhead

    for k in ("seeds", "steps", "repeats", "power_iterations"):
        _positive(f"--{k.replace('_', '-')}", getattr(args, k))
    r = norms_overhead(args.model, args.dataset, seeds=args.seeds, steps=args.steps, repeats=args.repeats,
                       power_iterations=args.power_iterations, convention=args.convention)
    print(json.dumps(r, indent=2) if args.json else format_norms(r))
    return 0


def _experiment(args) -> int:
    from jaxscale.bench.experiment import format_projection, project
    from jaxscale.config import load_config

    for k in ("P_measure", "repeats"):
        _positive(f"--{k.replace('_', '-')}", getattr(args, k))
    if args.seeds_measure < 0:
        _positive("--seeds-measure", args.seeds_measure)
    cfg = load_config(args.config, {"train.seeds": args.seeds} if args.seeds else None)
    r = project(cfg, P_measure=args.P_measure, repeats=args.repeats, sequential=not args.no_sequential,
                seeds_measure=args.seeds_measure)
    print(json.dumps(r, indent=2) if args.json else format_projection(r))
    return 0
