"""The `jaxscale` command: a thin shell over the Python API.

    jaxscale run CONFIG [--out DIR] [--seeds N] [--P 1000,2000] [--epochs T] [--set key=value ...]
    jaxscale analyze PATH [...]
    jaxscale perceptron run CONFIG | theory --alpha A
    jaxscale bench norms | throughput | experiment
    jaxscale data download NAME | info

Any user-fixable problem prints one line ``jaxscale: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Optional, Sequence

from jaxscale.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        raise UsageError(usage_message(message, self.prog))


def usage_message(message: str, prog: str) -> str:
    """argparse's complaint as one line with the fix; a value that starts with '-' (a negative
    number) reads as a flag to argparse unless it is attached with '='."""
    hint = f"see `{prog} --help`"
    if message.endswith("expected one argument"):
        flag = message.split()[1].split("/")[0].rstrip(":")
        hint = f"a value that starts with '-' must be attached with '=': {flag}=VALUE; {hint}"
    return f"{message} ({hint})"


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"--P {text!r}: give comma-separated integers, e.g. --P 1000,2000") from None
    if not vals:
        raise UsageError("--P is empty: give comma-separated integers, e.g. --P 1000,2000")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxscale", description="Dynamical neural scaling laws, measured fast (JAX/Flax).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="train an experiment config and write curves.npz + manifest.json")
    r.add_argument("config", help="TOML config, e.g. configs/quickstart.toml")
    r.add_argument("--out", help="run directory (default: runs/<config name>)")
    r.add_argument("--seeds", type=int, help="number of seeds (overrides train.seeds)")
    r.add_argument("--P", help="comma-separated training-set sizes (overrides train.P)")
    r.add_argument("--epochs", type=int, help="epochs (overrides train.epochs)")
    r.add_argument("--data-dir", help="tfds data_dir (overrides data.data_dir / $TFDS_DATA_DIR)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument("--restart", action="store_true",
                   help="start over: delete what jaxscale wrote in --out (results, analysis outputs, checkpoint "
                        "steps) instead of resuming from it; other files stay")
    h = r.add_argument_group("multi-host (jax.distributed; all three flags, or --distributed to auto-detect)")
    h.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
    h.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the run")
    h.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0 .. N-1")
    h.add_argument("--coordinator-timeout", type=int, default=300, metavar="S",
                   help="seconds to wait for the coordinator and the other processes (default 300)")
    h.add_argument("--distributed", action="store_true",
                   help="join a cluster auto-detected by JAX (SLURM, Cloud TPU pod, Open MPI, Kubernetes)")

    a = sub.add_parser("analyze", help="fit the two scaling laws on a run directory or reference .npz")
    from jaxscale.analysis import cli as analysis_cli

    analysis_cli.add_arguments(a)

    pc = sub.add_parser("perceptron", help="teacher-student perceptron: simulations and theory")
    from jaxscale.perceptron import cli as perceptron_cli

    perceptron_cli.add_arguments(pc)

    d = sub.add_parser("data", help="download / inspect datasets (tensorflow-datasets)")
    from jaxscale.data import cli as data_cli

    data_cli.add_arguments(d)

    b = sub.add_parser("bench", help="benchmarks: norms, throughput, experiment")
    from jaxscale import bench as bench_cli

    bench_cli.add_arguments(b)
    return p


def _cmd_run(args) -> int:
    import logging

    from jaxscale.train import distributed

    # orbax logs every failed background write with a traceback: the one-line error says it
    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    # before anything touches a device: joining a cluster must come first
    spec = distributed.cluster_spec(args.coordinator, args.num_processes, args.process_id, auto=args.distributed,
                                    timeout_s=args.coordinator_timeout)
    if spec is not None and not spec.auto:
        print(f"jaxscale: joining {spec.num_processes} processes via {spec.coordinator} as process {spec.process_id} "
              f"(waiting up to {spec.timeout_s} s)", file=sys.stderr)
    distributed.initialize(spec)
    from jaxscale.config import load_config, parse_overrides

    overrides = parse_overrides(args.set)
    if args.seeds is not None:
        overrides["train.seeds"] = args.seeds
    if args.P is not None:
        overrides["train.P"] = _int_list(args.P)
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.data_dir is not None:
        overrides["data.data_dir"] = args.data_dir
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name

    from jaxscale.experiment import check_run_dir, format_summary, run, summary_rows
    from jaxscale.progress import ProgressPrinter, fmt_duration
    from jaxscale.train import build_experiment
    from jaxscale.train.preemption import Interrupted
    from jaxscale.train.sharding import plan_layout

    primary = distributed.is_primary()
    if primary:
        check_run_dir(out, args.restart)
    say = (lambda text: print(text, file=sys.stderr)) if primary else (lambda text: None)  # noqa: E731
    exp = build_experiment(cfg)  # loads the data and builds the model: every config error shows here
    layout = plan_layout(cfg.parallel, cfg.train.seeds)
    S, T = cfg.train.seeds, cfg.train.epochs
    say(f"jaxscale run: {cfg.name} — {cfg.model.family}/{cfg.model.preset} on {cfg.data.dataset}, "
        f"P={list(cfg.train.P)}, {S} seeds, {T} epochs, {exp.strategy} ensemble on "
        f"{exp.spec.hyper.get('conv_impl', 'xla')} convs; {layout.describe()}")
    printer = ProgressPrinter() if primary and not args.quiet else None

    def progress(ev: dict) -> None:
        if not primary:
            return
        if ev["event"] == "resume":
            where = ("complete" if ev["epoch"] == ev["epochs"] else f"after epoch {ev['epoch']}/{ev['epochs']}")
            say(f"jaxscale: resuming from checkpoint {ev['step']}: P={ev['P']} ({ev['P_index'] + 1}/{ev['n_P']}) {where}")
        elif printer is not None and ev["event"] in ("epoch", "log", "P_done"):
            printer(ev)

    try:
        result = run(cfg, out, progress=progress, experiment=exp, layout=layout, restart=args.restart,
                     warn=lambda m: print(f"jaxscale: warning: {m}", file=sys.stderr))
    except Interrupted as e:
        say(f"\njaxscale: {e}. Resume with: {_resume_command(args, out)}")
        return e.exit_code
    if not primary:
        return 0
    print(f"\nTest error per P ({S} seeds, {T} epochs, {result.manifest['resolved']['ensemble_strategy']} "
          f"ensemble on {result.manifest['environment']['backend']}, {fmt_duration(result.stats.wall_s)}):")
    print(format_summary(summary_rows(result.curves)))
    if result.stats.nonfinite:
        print(f"warning: {len(result.stats.nonfinite)} seed(s) diverged (NaN in their curves): "
              + ", ".join(f"P={d['P']} seed={d['seed']}" for d in result.stats.nonfinite[:5]))
    print(f"\nResults: {out / 'curves.npz'}, {out / 'manifest.json'}")
    print(f"Next: jaxscale analyze {out}")
    if result.stats.nonfinite and len(result.stats.nonfinite) == len(cfg.train.P) * S:
        print("jaxscale: error: every seed diverged: lower train.lr", file=sys.stderr)
        return 1
    return 0


def _resume_command(args, out: Path) -> str:
    """The command line that continues this run (same config and overrides, same --out)."""
    import shlex

    parts = ["jaxscale", "run", args.config, "--out", str(out)]
    for flag, val in (("--seeds", args.seeds), ("--P", args.P), ("--epochs", args.epochs),
                      ("--data-dir", args.data_dir), ("--coordinator", args.coordinator),
                      ("--num-processes", args.num_processes), ("--process-id", args.process_id),
                      ("--coordinator-timeout", args.coordinator_timeout if args.coordinator_timeout != 300 else None)):
        if val is not None:
            parts += [flag, str(val)]
    for pair in args.set:
        parts += ["--set", pair]
    if args.distributed:
        parts.append("--distributed")
    if args.quiet:
        parts.append("--quiet")
    return shlex.join(parts)


def system_error(e: BaseException) -> Optional[str]:
    """One line for a failure of the filesystem (full disk, no permission, read-only) anywhere in the
    chain of ``e``, or ``None`` if ``e`` is something else (a bug: it keeps its traceback)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            where = f" ({e.filename})" if e.filename else ""
            fix = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there (disk quota)",
                   errno.EACCES: "fix its permissions or choose another place",
                   errno.EPERM: "fix its permissions or choose another place",
                   errno.EROFS: "choose a writable place"}.get(e.errno, "check the path")
            return f"{e.strerror or e}{where}: {fix}, then re-run the same command (a run resumes from its last checkpoint)"
        e = e.__cause__ or e.__context__
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            return _cmd_run(args)
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"jaxscale: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        os_error = system_error(e)
        if os_error is None:
            raise
        print(f"jaxscale: error: {os_error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
