"""`jaxscale perceptron run|theory`: the perceptron's command-line interface.

    jaxscale perceptron run CONFIG [--out DIR] [--quiet]
    jaxscale perceptron theory --alpha A[,A2…] [--lam L1,L2,…] [--json]

``add_arguments(parser)`` installs both sub-commands on the ``perceptron`` parser of the main CLI
(each sets ``func``: ``args.func(args) -> int``). ``python -m jaxscale.perceptron.cli ...`` runs them
standalone. User errors raise :class:`~jaxscale.errors.UsageError` (one line, exit code 2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, TextIO

import numpy as np

from jaxscale.errors import UsageError

#: λ range where the fixed-norm solver is tested (tests and docstring of theory.py)
LAM_RANGE = (1e-5, 1e6)
DEFAULT_LAMS = tuple(10.0**k for k in range(-3, 6))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``run`` and ``theory`` to the ``perceptron`` parser; each sets ``func``."""
    sub = parser.add_subparsers(dest="perceptron_command", required=True, parser_class=type(parser))

    r = sub.add_parser("run", help="simulate GD on teacher-student data; write curves.npz, manifest.json, figure")
    r.add_argument("config", help="perceptron TOML config, e.g. configs/perceptron.toml")
    r.add_argument("--out", help="output directory (default: runs/<config name>)")
    r.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    r.set_defaults(func=run)

    t = sub.add_parser("theory", help="replica theory: eps(lambda, alpha), Hebb, max margin, optimal norm")
    t.add_argument("--alpha", required=True, help="comma-separated sample ratios alpha = P/N, e.g. 1,2,5")
    t.add_argument("--lam", help="comma-separated norms lambda = |w|/sqrt(N) (default: 1e-3,1e-2,...,1e5)")
    t.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    t.set_defaults(func=theory)


# ------------------------------------------------------------------------------------------------
# run


class _Progress:
    """Steps, rate and ETA on stderr: one rewritten line on a terminal, a line every 10 s in a log."""

    def __init__(self, stream: TextIO = sys.stderr, n_instances: int = 1):
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.2 if self.tty else 10.0
        self.n_instances = n_instances
        self._last = -math.inf

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        from jaxscale.progress import fmt_duration

        now = time.monotonic()
        final = done >= total
        if not final and now - self._last < self.interval:
            return
        self._last = now
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (total - done) / rate if rate > 0 else float("nan")
        text = (f"perceptron: step {done}/{total} ({100 * done / max(total, 1):.0f}%) | "
                f"{rate * self.n_instances:,.0f} steps x instances/s | elapsed {fmt_duration(elapsed)} | "
                f"ETA {fmt_duration(eta)}")
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """``jaxscale perceptron run CONFIG [--out DIR]``: simulate, write results and the figure."""
    from jaxscale.perceptron.config import load_perceptron_config
    from jaxscale.perceptron.simulate import run_experiment
    from jaxscale.perceptron.theory import eps_fixed_norm

    from jaxscale.io import check_output_dir

    cfg = load_perceptron_config(args.config)
    out = check_output_dir(args.out if args.out else Path("runs") / cfg.name, "--out")
    n_inst = cfg.seeds * len(cfg.P)
    print(f"jaxscale perceptron run: {cfg.name} — N={cfg.N}, alpha={list(cfg.alpha_effective)}, {cfg.seeds} seeds, "
          f"{cfg.steps} {cfg.dynamics} steps (lr {cfg.lr:g}), layout {cfg.layout}", file=sys.stderr)
    prog = None if args.quiet else _Progress(sys.stderr, n_inst)
    res = run_experiment(cfg, out, progress=prog)

    r = res.result
    print(f"\nAt the last step ({cfg.steps}), mean over {cfg.seeds} seeds (± standard error):")
    print(f"{'alpha':>7} {'P':>7} {'lambda':>10} {'eps (GD)':>18} {'eps theory(lambda)':>19} {'eps*':>8} {'lambda*':>8}")
    for i, (a, P) in enumerate(zip(cfg.alpha_effective, cfg.P)):
        lam_last = r.lam[i, :, -1]
        eps_last = r.eps[i, :, -1]
        lam_g = float(np.exp(np.nanmean(np.log(lam_last))))
        se = float(np.nanstd(eps_last, ddof=1) / math.sqrt(len(eps_last))) if len(eps_last) > 1 else float("nan")
        th = res.theory[i]
        e_th = float(eps_fixed_norm(lam_g, a)) if math.isfinite(lam_g) and LAM_RANGE[0] <= lam_g <= LAM_RANGE[1] else float("nan")
        star = f"{th.eps_star:8.4f} {th.lam_star:8.3g}" if th.lam_star is not None else f"{'-':>8} {'-':>8}"
        print(f"{a:7.3g} {P:7d} {lam_g:10.4g} {np.nanmean(eps_last):10.4f} ± {se:.4f} {e_th:19.4f} {star}")
    print(f"\nResults: {res.curves_path}, {res.manifest_path}")
    if res.figure_paths:
        print("Figure:  " + ", ".join(str(p) for p in res.figure_paths))
    print(f"Next: jaxscale analyze {res.out_dir}")
    return 0


# ------------------------------------------------------------------------------------------------
# theory


def _float_list(text: str, flag: str, lo: float, hi: float, example: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give comma-separated numbers, e.g. {flag} {example}") from None
    if not vals:
        raise UsageError(f"{flag} is empty: give comma-separated numbers, e.g. {flag} {example}")
    bad = [v for v in vals if not (math.isfinite(v) and lo <= v <= hi)]
    if bad:
        raise UsageError(f"{flag}: {bad[0]:g} is outside [{lo:g}, {hi:g}]: use values in that range, e.g. {flag} {example}")
    return vals


def theory_table(alphas: Sequence[float], lams: Sequence[float]) -> dict:
    """The JSON object of ``perceptron theory``: alpha, lam, eps (list per α), eps_hebb,
    eps_max_margin, lam_star, eps_star (None where ε(λ) has no interior minimum in [1e-3, 1e5])."""
    from jaxscale.perceptron import theory as th

    out = {"alpha": list(alphas), "lam": list(lams), "eps": [], "eps_hebb": [], "eps_max_margin": [],
           "lam_star": [], "eps_star": []}
    for a in alphas:
        out["eps"].append([float(e) for e in np.atleast_1d(th.eps_fixed_norm(np.asarray(lams, float), a))])
        out["eps_hebb"].append(float(th.eps_hebb(a)))
        out["eps_max_margin"].append(float(th.eps_max_margin(a)))
        opt = th.optimal_norm(a)
        out["lam_star"].append(opt.lam_star)
        out["eps_star"].append(opt.eps_star)
    return out


def theory(args: argparse.Namespace) -> int:
    """``jaxscale perceptron theory --alpha A[,A2…] [--lam L1,…] [--json]``."""
    alphas = _float_list(args.alpha, "--alpha", 1e-6, 1e6, "1,2,5")
    if any(a <= 0 for a in alphas):
        raise UsageError("--alpha: values must be positive (alpha = P/N), e.g. --alpha 1,2,5")
    lams = _float_list(args.lam, "--lam", *LAM_RANGE, "0.1,1,10") if args.lam else list(DEFAULT_LAMS)
    table = theory_table(alphas, lams)
    if args.json:
        print(json.dumps(table))
        return 0
    for i, a in enumerate(alphas):
        ls, es = table["lam_star"][i], table["eps_star"][i]
        opt = f"lambda* = {ls:.4g}, eps* = {es:.6f}" if ls is not None else "no finite optimum in [1e-3, 1e5]"
        print(f"alpha = {a:g}: eps_Hebb = {table['eps_hebb'][i]:.6f}, eps_max_margin = {table['eps_max_margin'][i]:.6f}, {opt}")
        print(f"  {'lambda':>10}  {'eps(lambda, alpha)':>18}")
        for lam, e in zip(lams, table["eps"][i]):
            print(f"  {lam:10.4g}  {e:18.6f}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Standalone entry point (``python -m jaxscale.perceptron.cli run|theory ...``)."""
    from jaxscale.cli import main as jaxscale_main

    return jaxscale_main(["perceptron", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
