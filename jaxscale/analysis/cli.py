"""``jaxscale analyze PATH``: the command-line face of :mod:`jaxscale.analysis`.

``add_arguments`` fills an argparse (sub)parser; ``run`` does the work and returns the exit code.
Every user-fixable problem raises :class:`~jaxscale.errors.UsageError` (the top-level CLI prints it on
one line and exits 2). With ``--json`` stdout carries exactly one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from jaxscale.analysis.aggregate import parse_grid
from jaxscale.analysis.curves import CURVES_FILE, load_input
from jaxscale.analysis.driver import analyze
from jaxscale.analysis.pipeline import Settings
from jaxscale.analysis.window import Window
from jaxscale.errors import UsageError
from jaxscale.io import check_output_dir, save_json_atomic, save_text_atomic
from jaxscale.progress import fmt_duration

DEFAULT_BOOTSTRAP = 200
#: each replicate refits everything (~10 ms): more than this adds nothing to 95 % intervals but hours
MAX_BOOTSTRAP = 100_000
ANALYSIS_DIR = "analysis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``jaxscale analyze``."""
    parser.add_argument("path", metavar="PATH",
                        help=f"run directory (or its {CURVES_FILE}) or an aggregated reference .npz")
    parser.add_argument("--norm", metavar="NAME",
                        help="norm to analyse, e.g. spectral_complexity or log_spectral_complexity (default: "
                             "spectral_complexity if present, else the first log_* array); for *_norms reference "
                             "files one of their norm_labels")
    parser.add_argument("--entry", metavar="I", type=int, help="entry of a multi-entry reference file (*_norms, *_wd)")
    parser.add_argument("--x-left", metavar="A",
                        help="γ1 window lower bound on λ/λ* ('none' = no bound; default: stored in the file, "
                             "else automatic)")
    parser.add_argument("--x-right", metavar="B", help="γ1 window upper bound on λ/λ* ('none' = no bound)")
    parser.add_argument("--auto-window", action="store_true",
                        help="choose the γ1 window automatically even if the file stores one")
    parser.add_argument("--min-p", metavar="K", type=int,
                        help="γ1 uses curves P[K:] (an index into P, like the paper's min_P; default: stored, else 0)")
    parser.add_argument("--gamma2-start", metavar="K", type=int,
                        help="γ2 uses P[K:] (an index; default: stored, else 0)")
    parser.add_argument("--grid", metavar="a,b,n",
                        help="norm grid numpy.logspace(a, b, n) for run directories (default: 50 points over "
                             "the range of all finite norms)")
    parser.add_argument("--bootstrap", metavar="N", type=int,
                        help=f"seed-bootstrap replicates (runs only; default {DEFAULT_BOOTSTRAP}, 0 = off)")
    parser.add_argument("--seed", metavar="S", type=int, default=0, help="bootstrap random seed (default 0)")
    parser.add_argument("--plots", metavar="DIR",
                        help=f"write figures, report.md and analysis.json here (default for a run: "
                             f"<run>/{ANALYSIS_DIR}/; for a reference file: only when given)")
    parser.add_argument("--no-plots", action="store_true", help="write no files, only print the results")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``jaxscale analyze``; returns 0 (problems raise UsageError)."""
    from jaxscale.analysis.plots import make_figures  # matplotlib only when figures are drawn
    from jaxscale.analysis.report import markdown_report, summary_text, to_dict

    if args.plots and args.no_plots:
        raise UsageError("--plots and --no-plots contradict each other; give one of them")
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed} is negative: give a bootstrap seed >= 0")
    if args.plots:
        check_output_dir(args.plots, "--plots")
    inp = load_input(args.path, norm=args.norm, entry=args.entry)
    settings = _settings(args, inp)
    n_boot = _bootstrap_count(args, inp.kind)
    log_grid = parse_grid(args.grid) if args.grid is not None else None
    an = analyze(inp, settings, log_grid=log_grid, n_bootstrap=n_boot, seed=args.seed, progress=_BootstrapProgress())
    result = to_dict(an)

    outdir = _output_dir(args, inp.kind, inp.path)
    if outdir is not None:
        figures = make_figures(an, outdir)
        result["files"] = {
            "dir": str(outdir),
            "json": str(outdir / "analysis.json"),
            "report": str(outdir / "report.md"),
            "figures": [str(outdir / name) for name in figures.values()],
        }
        save_json_atomic(outdir / "analysis.json", result)
        save_text_atomic(outdir / "report.md", markdown_report(result, figures))
    print(json.dumps(result) if args.json else summary_text(result))
    return 0


class _BootstrapProgress:
    """Bootstrap progress on stderr, once a bootstrap has taken more than a few seconds: a line every
    10 s (and the last one), so short analyses print nothing."""

    def __init__(self, quiet_s: float = 3.0, interval_s: float = 10.0):
        self.quiet_s, self.interval_s = quiet_s, interval_s
        self.t0 = self.last = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = self.last = now
        if now - self.t0 < self.quiet_s or (now - self.last < self.interval_s and done < total - 1):
            return
        self.last = now
        eta = (now - self.t0) / max(done, 1) * (total - done)
        print(f"analyze: bootstrap replicate {done + 1}/{total}, ETA {fmt_duration(eta)}", file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace, inp) -> Settings:
    """File-stored fit settings, overridden flag by flag; a stored index that the file's own P axis
    does not reach is named as the file's, not as a flag the user never gave."""
    stored = inp.settings
    nP = len((inp.seeds if inp.seeds is not None else inp.aggregated).P)
    for flag, given, key, value in (("--min-p", args.min_p, "fit_min_P", stored.min_p),
                                    ("--gamma2-start", args.gamma2_start, "fit_gamma2_start", stored.gamma2_start)):
        if given is None and value is not None and not 0 <= value < nP:
            raise UsageError(f"{inp.path} stores {key} = {value} but has only {nP} P value(s): pass {flag} 0 "
                             f"(or an index up to {nP - 1})")
    given = args.x_left is not None or args.x_right is not None
    if args.auto_window and given:
        raise UsageError("--auto-window contradicts --x-left/--x-right; give either the automatic window or bounds")
    window = None
    if not args.auto_window:
        file_has = stored.x_left is not None or stored.x_right is not None
        if given or file_has:
            x_left = _bound(args.x_left, "--x-left") if args.x_left is not None else _nan_none(stored.x_left)
            x_right = _bound(args.x_right, "--x-right") if args.x_right is not None else _nan_none(stored.x_right)
            if x_left is not None and x_right is not None and x_left >= x_right:
                raise UsageError(f"the γ1 window [{x_left:g}, {x_right:g}] is empty; --x-left must be below --x-right")
            window = Window(x_left=x_left, x_right=x_right, automatic=False)
    return Settings(
        window=window,
        min_p=args.min_p if args.min_p is not None else (stored.min_p or 0),
        gamma2_start=args.gamma2_start if args.gamma2_start is not None else (stored.gamma2_start or 0),
    )


def _bound(text: str, flag: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a number; give a positive value on λ/λ* (e.g. 0.3) or 'none'") from None
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{flag} {text} must be a positive finite value on λ/λ* (or 'none' for no bound)")
    return value


def _nan_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _bootstrap_count(args: argparse.Namespace, kind: str) -> int:
    if args.bootstrap is not None and not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise UsageError(f"--bootstrap {args.bootstrap} is out of range: give a replicate count from 0 to "
                         f"{MAX_BOOTSTRAP} (a few hundred give stable 95 % intervals)")
    if args.bootstrap is not None:
        return args.bootstrap
    return DEFAULT_BOOTSTRAP if kind == "run" else 0


def analysis_files(outdir: Path) -> list[Path]:
    """The files ``jaxscale analyze`` writes into ``outdir``."""
    from jaxscale.analysis.plots import FIGURE_FILES

    names = [f"{stem}.{ext}" for stem in FIGURE_FILES.values() for ext in ("png", "pdf")]
    return [outdir / name for name in (*names, "analysis.json", "report.md")]


def _output_dir(args: argparse.Namespace, kind: str, npz_path: Path) -> Path | None:
    if args.no_plots:
        return None
    if args.plots:
        return Path(args.plots)
    return npz_path.parent / ANALYSIS_DIR if kind == "run" else None
