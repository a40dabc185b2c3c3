"""Presenting an :class:`~jaxscale.analysis.driver.Analysis`: one JSON-ready dict, a terminal summary,
and the Markdown report written next to the figures.

The dict is the single source for all three, so the numbers in the terminal, ``analysis.json`` and
``report.md`` are the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxscale.analysis.bootstrap import LEVEL, QUANTITIES
from jaxscale.analysis.driver import Analysis
from jaxscale.analysis.fits import CONSISTENCY_SIGMAS, MIN_FIT_POINTS

WINDOW_RULE = ("the straight range left of the optima with the largest fitted drop of ln(error): every curve "
               ">= {m} points, lack-of-fit F-test (line vs cubic per curve) p >= {a}; then trimmed by {g:.0%} of "
               "its width at each end (jaxscale.analysis.window)")


def to_dict(an: Analysis) -> dict[str, Any]:
    """All results as plain JSON types; NaN/inf become ``None``."""
    agg, fit, st = an.aggregated, an.fit, an.settings
    g1, g2, meas, pred = fit.gamma1, fit.gamma2, fit.measured, fit.prediction
    grid = agg.log_grid / math.log(10.0)
    out: dict[str, Any] = {
        "input": {
            "path": str(an.input.path),
            "kind": an.input.kind,
            "label": agg.label,
            "norm": agg.norm_name,
            "entry": an.input.entry,
            "n_entries": an.input.n_entries,
            "grid": {"source": an.grid_source, "log10_min": grid[0], "log10_max": grid[-1], "n": int(grid.size)},
            "n_nonmonotone_runs": an.n_nonmonotone,
        },
        "gamma_1": g1.gamma_1,
        "err_gamma_1": g1.err_gamma_1,
        "k1": g1.k1,
        "n_curves_gamma_1": int(g1.used.sum()),
        "gamma_2": g2.gamma_2,
        "err_gamma_2": g2.err_gamma_2,
        "k2": g2.k2,
        "gamma_pred": pred.gamma_pred,
        "err_gamma_pred": pred.err_gamma_pred,
        "gamma_measured": meas.gamma_measured,
        "err_gamma_measured": meas.err_gamma_measured,
        "consistency": {
            "z": pred.z,
            "threshold_sigmas": CONSISTENCY_SIGMAS,
            "consistent": pred.consistent,
            "definition": "z = (gamma_measured - gamma_pred) / sqrt(err_gamma_pred^2 + err_gamma_measured^2)",
        },
        "window": {
            "x_left": fit.window.x_left,
            "x_right": fit.window.x_right,
            "automatic": fit.window.automatic,
            "p_value": fit.window.p_value,
            "fallback": fit.window.fallback,
            "rule": WINDOW_RULE.format(m=st.min_points, a=st.alpha, g=st.margin) if fit.window.automatic else "given",
        },
        "min_p": st.min_p,
        "min_p_value": _size(agg.P[st.min_p]),
        "gamma2_start": st.gamma2_start,
        "gamma2_start_value": _size(agg.P[st.gamma2_start]),
        "bootstrap": _bootstrap_dict(an),
        "stored": dict(an.input.stored) or None,
        "per_p": _per_p(an),
        "warnings": _warnings(an),
    }
    return _clean(out)


def _bootstrap_dict(an: Analysis) -> dict[str, Any] | None:
    b = an.bootstrap
    if b is None:
        return None
    return {
        "n": b.n,
        "seed": b.seed,
        "n_failed": b.n_failed,
        "n_window_mismatch": b.n_window_mismatch,
        "n_seeds": b.n_seeds,
        "level": LEVEL,
        "method": f"expanded percentile (Hesterberg 2015): percentiles {100 * b.tail():.2f} and {100 * (1 - b.tail()):.2f}",
        "ci": {q: list(b.interval(q)) for q in QUANTITIES},
        "std": {q: b.std(q) for q in QUANTITIES},
    }


def _per_p(an: Analysis) -> list[dict[str, Any]]:
    agg, fit = an.aggregated, an.fit
    with np.errstate(over="ignore"):
        lam, l0 = np.exp(fit.optima.log_lambda_star), np.exp(agg.log_l0)
    rows = []
    for i, P in enumerate(agg.P):
        rows.append({
            "P": _size(P),
            "eps_star": fit.optima.eps_star[i],
            "lambda_star": lam[i],
            "l0": l0[i],
            "log10_l0": agg.log_l0[i] / math.log(10.0),
            "n_seeds": int(agg.n_seeds[i]),
            "gamma_i": fit.gamma1.gamma_i[i],
            "err_gamma_i": fit.gamma1.err_i[i],
            "k_i": fit.gamma1.k_i[i],
            "n_fit_points": int(fit.gamma1.n_points[i]),
            "in_gamma_1": bool(fit.gamma1.used[i]),
            "in_gamma_2": bool(fit.gamma2.used[i]),
        })
    return rows


def _size(P: float) -> int | float:
    """A training-set size as an int when it is one (JSON readers then see 24000, not 24000.0)."""
    return int(P) if float(P).is_integer() else float(P)


def _warnings(an: Analysis) -> list[str]:
    agg, fit, st = an.aggregated, an.fit, an.settings
    w = list(an.notes)
    if fit.window.fallback:
        w.append("no γ1 window passed the automatic rule (too few points per curve, or no straight range); γ1 is "
                 "fitted over every point left of each optimum and is rough: give --x-left/--x-right, raise "
                 "--min-p, or log more epochs")
    if an.n_nonmonotone:
        w.append(f"{an.n_nonmonotone} run(s) have a norm that decreases at some logged epoch; they were interpolated "
                 f"through their running-maximum points only")
    at_end = [f"{p:g}" for p, k, row in zip(agg.P, fit.optima.index, agg.mean_error)
              if k >= 0 and k == np.flatnonzero(np.isfinite(row))[-1]]
    if at_end:
        w.append(f"for P = {', '.join(at_end)} the lowest test error is at the largest norm reached: the error was still "
                 f"falling when training stopped, so ε* and λ* there are the last values, not an optimum (train longer)")
    no_opt = [f"{p:g}" for p, k in zip(agg.P, fit.optima.index) if k < 0]
    if no_opt:
        w.append(f"no finite optimum (curve all NaN on the grid) for P = {', '.join(no_opt)}")
    skipped = [f"{agg.P[i]:g}" for i in range(st.min_p, agg.P.size) if fit.optima.index[i] >= 0 and not fit.gamma1.used[i]]
    if skipped:
        w.append(f"gamma_1 leaves out P = {', '.join(skipped)}: fewer than {MIN_FIT_POINTS} points in the window")
    if math.isnan(fit.measured.err_gamma_measured):
        w.append("the measured exponent has no standard error (fewer than 3 P values with a finite optimum)")
    if math.isnan(fit.gamma2.err_gamma_2):
        w.append("gamma_2 has no standard error (only 2 P values in its fit)")
    if an.bootstrap is not None and an.bootstrap.n_failed:
        w.append(f"{an.bootstrap.n_failed} of {an.bootstrap.n} bootstrap replicates could not be fitted and were left out")
    if an.bootstrap is not None and an.bootstrap.n_window_mismatch:
        kind = "found a window" if fit.window.fallback else "found no window (fell back)"
        w.append(f"{an.bootstrap.n_window_mismatch} of {an.bootstrap.n} bootstrap replicates were left out because "
                 f"the automatic window rule {kind} there, unlike on the full ensemble; a large share means the "
                 f"window is fragile")
    return w


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


# ------------------------------------------------------------------------------------------------
# text


def _pm(d: dict[str, Any], key: str) -> str:
    return f"{_num(d.get(key))} ± {_num(d.get('err_' + key))}"


def _num(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _ci(d: dict[str, Any], key: str) -> str:
    b = d.get("bootstrap")
    if not b or b["ci"].get(key) is None or None in b["ci"][key]:
        return "–"
    lo, hi = b["ci"][key]
    return f"[{lo:.4g}, {hi:.4g}]"


def _verdict(d: dict[str, Any]) -> str:
    c = d["consistency"]
    if c["consistent"] is None:
        return "not testable (an error is undefined)"
    word = "consistent" if c["consistent"] else "inconsistent"
    return f"{word} (z = {c['z']:+.2f}, threshold ±{c['threshold_sigmas']:g}σ)"


def _window_text(d: dict[str, Any]) -> str:
    w = d["window"]
    if w["fallback"]:
        how = "automatic rule found none: every point left of the optimum"
    elif w["automatic"]:
        how = f"automatic, lack-of-fit p = {w['p_value']:.2f}"
    else:
        how = "given"
    def bound(x: float | None) -> str:
        return "no bound" if x is None else f"{x:.4g}"

    return f"[{bound(w['x_left'])}, {bound(w['x_right'])}] on λ/λ* ({how})"


def summary_text(d: dict[str, Any]) -> str:
    """A readable terminal summary of :func:`to_dict`'s output."""
    inp = d["input"]
    lines = [
        f"{inp['label']}  ({inp['kind']}, norm: {inp['norm']}, grid: {inp['grid']['n']} points in "
        f"10^[{inp['grid']['log10_min']:.3g}, {inp['grid']['log10_max']:.3g}], {inp['grid']['source']})",
        f"γ1 window {_window_text(d)}; γ1 over P >= {d['min_p_value']:g} (min_p {d['min_p']}), "
        f"γ2 over P >= {d['gamma2_start_value']:g} (gamma2_start {d['gamma2_start']})",
        "",
        f"{'quantity':<22}{'value ± error':<26}{'95% CI (bootstrap)':<24}",
        f"{'γ1 (ε vs λ/λ*)':<22}{_pm(d, 'gamma_1'):<26}{_ci(d, 'gamma_1'):<24}",
        f"{'γ2 (λ* vs P)':<22}{_pm(d, 'gamma_2'):<26}{_ci(d, 'gamma_2'):<24}",
        f"{'γ1·γ2 (predicted)':<22}{_pm(d, 'gamma_pred'):<26}{_ci(d, 'gamma_pred'):<24}",
        f"{'ε*(P) exponent':<22}{_pm(d, 'gamma_measured'):<26}{_ci(d, 'gamma_measured'):<24}",
        f"k1 = {_num(d['k1'])}, k2 = {_num(d['k2'])}; prediction vs measurement: {_verdict(d)}",
    ]
    if d.get("stored"):
        s = d["stored"]
        lines.append("stored in file: " + ", ".join(f"{k} = {_num(v, 6)}" for k, v in s.items()))
    lines += ["", f"{'P':>8} {'ε*':>8} {'λ* (grid)':>11} {'l0':>11} {'γ_i':>9} {'± err':>8} {'pts':>4} {'γ1':>3} {'γ2':>3}"]
    for r in d["per_p"]:
        lines.append(f"{r['P']:>8g} {_num(r['eps_star']):>8} {_num(r['lambda_star']):>11} {_num(r['l0']):>11} "
                     f"{_num(r['gamma_i']):>9} {_num(r['err_gamma_i'], 2):>8} {r['n_fit_points']:>4} "
                     f"{'x' if r['in_gamma_1'] else '':>3} {'x' if r['in_gamma_2'] else '':>3}")
    lines += [f"warning: {w}" for w in d["warnings"]]
    if d.get("files"):
        lines.append(f"wrote {d['files']['report']}, {d['files']['json']} and {len(d['files']['figures'])} figures")
    return "\n".join(lines)


def markdown_report(d: dict[str, Any], figures: dict[str, str]) -> str:
    """``report.md``: fits table, consistency verdict, settings, per-P table, links to ``figures``
    (name → file name relative to the report)."""
    inp, b = d["input"], d.get("bootstrap")
    ci_head = f" 95 % CI (bootstrap, {b['n']} replicates) |" if b else ""
    ci_sep = "---|" if b else ""

    def row(name: str, key: str) -> str:
        return f"| {name} | {_pm(d, key)} |" + (f" {_ci(d, key)} |" if b else "")

    lines = [
        f"# Scaling-law analysis: {inp['label']}",
        "",
        f"Input `{inp['path']}` ({inp['kind']}), norm **{inp['norm']}**, grid of {inp['grid']['n']} points, "
        f"λ ∈ 10^[{inp['grid']['log10_min']:.3g}, {inp['grid']['log10_max']:.3g}] ({inp['grid']['source']}).",
        "",
        "| quantity | value ± error |" + ci_head,
        "|---|---|" + ci_sep,
        row("γ₁: ε/ε* ∝ (λ/λ*)^−γ₁", "gamma_1"),
        row("γ₂: λ* ∝ P^γ₂", "gamma_2"),
        row("γ₁γ₂ (predicted ε* exponent)", "gamma_pred"),
        row("measured ε*(P) exponent", "gamma_measured"),
        "",
        f"Prediction vs measurement: **{_verdict(d)}**. k₁ = {_num(d['k1'])}, k₂ = {_num(d['k2'])}.",
        "",
        f"* γ₁ window: {_window_text(d)}; curves P ≥ {d['min_p_value']:g}, {d['n_curves_gamma_1']} fitted. "
        "err γ₁ is the RMS of the per-curve slope errors (official definition).",
        f"* γ₂: OLS of ln l₀ on ln P over P ≥ {d['gamma2_start_value']:g}; l₀ = per-seed λ* averaged over seeds.",
        "* measured exponent: OLS of ln ε* on ln P over all P; ε* = minimum of the seed-averaged curve.",
    ]
    if d["window"]["automatic"] and not d["window"]["fallback"]:
        lines.append(f"* automatic window rule: {d['window']['rule']}.")
    if b:
        lines.append(f"* bootstrap: seeds resampled per P, whole pipeline refitted; {b['method']}; "
                     f"seed {b['seed']}, {b['n_failed']} failed replicates.")
    if d.get("stored"):
        lines.append("* values stored in the file: " + ", ".join(f"{k} = {_num(v, 6)}" for k, v in d["stored"].items()) + ".")
    lines += [f"* warning: {w}" for w in d["warnings"]]
    lines += ["", "## Figures", ""]
    for title, name in figures.items():
        lines += [f"### {title}", "", f"![{title}]({name}) ([PDF]({name[:-4]}.pdf))", ""]
    lines += ["## Per P", "", "| P | ε* | λ* (grid) | l₀ | seeds | γ_i | err γ_i | points | in γ₁ | in γ₂ |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["per_p"]:
        lines.append(f"| {r['P']:g} | {_num(r['eps_star'])} | {_num(r['lambda_star'])} | {_num(r['l0'])} | {r['n_seeds']} | "
                     f"{_num(r['gamma_i'])} | {_num(r['err_gamma_i'], 2)} | {r['n_fit_points']} | "
                     f"{'yes' if r['in_gamma_1'] else 'no'} | {'yes' if r['in_gamma_2'] else 'no'} |")
    # a bare "ε*" or "λ*" would open Markdown emphasis
    return "\n".join(lines).replace("ε*", "ε\\*").replace("λ*", "λ\\*") + "\n"
