"""``jaxscale analyze`` through ``jaxscale.analysis.cli.run``: run directories end to end, bad inputs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from jaxscale.analysis import cli, make_synthetic_curves
from jaxscale.errors import UsageError
from jaxscale.io import save_npz_atomic

P = [1000, 2000, 4000, 8000, 16000]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jaxscale analyze")
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _write_run(path, *, seeds=6, second_norm=False) -> None:
    arrays = make_synthetic_curves(P, np.arange(seeds), 0.5, 1.0, 0.05, np.random.default_rng(11))
    if second_norm:  # λ² as a second norm, written first so that file order alone would pick it
        arrays = {"log_frobenius": 2.0 * arrays["log_spectral_complexity"], **arrays}
    save_npz_atomic(path / "curves.npz", arrays)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    return run


def test_run_directory_end_to_end(run_dir, capsys):
    args = _args(str(run_dir), "--json", "--bootstrap", "30", "--seed", "3")
    assert args.func is cli.run  # the top-level `jaxscale` CLI dispatches through args.func
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("gamma_1", "err_gamma_1", "k1", "gamma_2", "err_gamma_2", "k2", "gamma_pred", "err_gamma_pred",
                "gamma_measured", "err_gamma_measured", "min_p", "gamma2_start"):
        assert isinstance(out[key], (int, float)), key
    assert out["window"]["automatic"] is True and out["window"]["x_left"] < out["window"]["x_right"] < 1
    assert out["gamma_1"] == pytest.approx(0.5, abs=0.05) and out["gamma_2"] == pytest.approx(1.0, abs=0.15)
    boot = out["bootstrap"]
    assert (boot["n"], boot["seed"], boot["n_seeds"]) == (30, 3, 6)
    for q in ("gamma_1", "gamma_2", "gamma_pred", "gamma_measured"):
        lo, hi = boot["ci"][q]
        assert lo < hi
    assert [row["P"] for row in out["per_p"]] == P
    assert out["warnings"] == []  # monotone norms, real optima, a window found on every replicate
    assert {"eps_star", "lambda_star", "l0", "gamma_i", "err_gamma_i"} <= set(out["per_p"][0])
    analysis = run_dir / "analysis"
    assert json.loads((analysis / "analysis.json").read_text()) == out
    for stem in ("curves", "collapse", "lambda_star", "eps_star"):
        assert (analysis / f"{stem}.png").stat().st_size > 5000 and (analysis / f"{stem}.pdf").exists()
    assert "![" in (analysis / "report.md").read_text()
    assert not [p for p in analysis.iterdir() if p.name.startswith(".tmp-")]


def test_same_seed_same_numbers_and_summary_text(run_dir, capsys):
    cli.run(_args(str(run_dir / "curves.npz"), "--json", "--no-plots", "--bootstrap", "10", "--seed", "5"))
    first = capsys.readouterr().out
    cli.run(_args(str(run_dir / "curves.npz"), "--json", "--no-plots", "--bootstrap", "10", "--seed", "5"))
    assert capsys.readouterr().out == first
    cli.run(_args(str(run_dir), "--no-plots", "--bootstrap", "10"))
    text = capsys.readouterr().out
    assert "γ1 (ε vs λ/λ*)" in text and "95% CI" in text and "automatic" in text
    assert not (run_dir / "analysis").exists()


def test_norm_selection(tmp_path, capsys):
    run = tmp_path / "run"
    _write_run(run, second_norm=True)
    results = {}
    for norm in (None, "frobenius", "log_frobenius"):
        cli.run(_args(str(run), "--json", "--no-plots", "--bootstrap", "0", *(["--norm", norm] if norm else [])))
        results[norm] = json.loads(capsys.readouterr().out)
    assert results[None]["input"]["norm"] == "spectral_complexity"
    assert results["frobenius"]["input"]["norm"] == results["log_frobenius"]["input"]["norm"] == "frobenius"
    # λ² instead of λ: γ1 halves, γ2 doubles, the product is unchanged
    assert results["frobenius"]["gamma_1"] == pytest.approx(0.5 * results[None]["gamma_1"], rel=0.05)
    assert results["frobenius"]["gamma_2"] == pytest.approx(2 * results[None]["gamma_2"], rel=0.05)
    assert results["frobenius"]["gamma_pred"] == pytest.approx(results[None]["gamma_pred"], rel=0.05)


def _bad(tmp_path, name: str, arrays: dict) -> str:
    save_npz_atomic(tmp_path / name, arrays)
    return str(tmp_path / name)


def _error(*argv: str) -> str:
    with pytest.raises(UsageError) as info:
        cli.run(_args(*argv))
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


def test_bad_inputs_give_one_line_usage_errors(tmp_path, run_dir):
    assert "does not exist" in _error(str(tmp_path / "nope"))
    assert "has no curves.npz" in _error(str(tmp_path))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "not a .npz file" in _error(str(tmp_path / "junk.npz"))
    assert "neither a run's curves.npz" in _error(_bad(tmp_path, "w.npz", {"a": np.zeros(3)}))
    no_norm = make_synthetic_curves(P, np.arange(3), 0.5, 1.0, 0.05, np.random.default_rng(0))
    no_norm.pop("log_spectral_complexity")
    assert "no log_<norm>" in _error(_bad(tmp_path, "nn.npz", no_norm))
    shape = make_synthetic_curves(P, np.arange(3), 0.5, 1.0, 0.05, np.random.default_rng(0))
    shape["test_error"] = shape["test_error"][:, :2]
    assert "must both be [nP=5" in _error(_bad(tmp_path, "shape.npz", shape))
    nan = make_synthetic_curves(P, np.arange(3), 0.5, 1.0, 0.05, np.random.default_rng(0))
    nan["test_error"][:] = np.nan
    assert "test_error is NaN everywhere" in _error(_bad(tmp_path, "nan.npz", nan), "--no-plots")
    assert "no P has a finite test-error minimum" in _error(str(run_dir), "--no-plots", "--grid", "20,30,10")
    assert "--norm from spectral_complexity" in _error(str(run_dir), "--norm", "l1")
    assert "is empty" in _error(str(run_dir), "--x-left", "0.5", "--x-right", "0.1")
    assert "γ1 window" in _error(str(run_dir), "--no-plots", "--x-left", "1e-9", "--x-right", "2e-9")
    assert "not a number" in _error(str(run_dir), "--x-left", "abc")
    assert "positive" in _error(str(run_dir), "--x-right", "-1")
    assert "--grid" in _error(str(run_dir), "--grid", "1,2")
    assert "--min-p 9 is out of range" in _error(str(run_dir), "--no-plots", "--min-p", "9")
    assert "out of range" in _error(str(run_dir), "--bootstrap", "-1")
    assert "--entry applies" in _error(str(run_dir), "--entry", "1")
    assert "contradict" in _error(str(run_dir), "--auto-window", "--x-left", "0.1")
    assert "contradict" in _error(str(run_dir), "--plots", str(tmp_path / "p"), "--no-plots")


def _reference_like(tmp_path, entries: int | None) -> str:
    """A tiny file in the reference format (no fit settings stored), for entry/flag checks."""
    G, nP = 30, 4
    grid = np.logspace(0, 3, G)
    curve = 0.5 * (grid / 100.0) ** -0.3 * (1 + (grid / 100.0) ** 2) ** 0.2
    mean = np.stack([curve * f for f in (1.0, 0.9, 0.8, 0.7)])
    l0 = np.array([80.0, 90.0, 110.0, 120.0])
    arrays = {"P_arr": np.array([10, 20, 40, 80]), "seed_arr": np.arange(5), "log_x_grid": grid}
    if entries is None:
        arrays.update(mean_val_error_arr=mean, l_0_arr=l0)
    else:
        arrays.update(mean_val_error_arr=np.stack([mean] * entries), l_0_arr=np.stack([l0] * entries))
    assert mean.shape == (nP, G)
    return _bad(tmp_path, f"ref{entries}.npz", arrays)


def test_reference_entry_and_flag_errors(tmp_path, capsys):
    multi = _reference_like(tmp_path, 3)
    assert "holds 3 entries" in _error(multi)
    assert "--entry 3 is out of range" in _error(multi, "--entry", "3")
    assert "--entry -1 is out of range" in _error(multi, "--entry", "-1")
    single = _reference_like(tmp_path, None)
    assert "single entry" in _error(single, "--entry", "2")
    assert "--bootstrap needs per-seed curves" in _error(single, "--bootstrap", "10")
    assert "--grid applies to run directories" in _error(single, "--grid", "0,3,20")
    assert "stores no norm labels" in _error(single, "--norm", "fro")
    assert cli.run(_args(multi, "--entry", "2", "--json", "--x-right", "0.5")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input"]["entry"] == 2 and out["window"] == {**out["window"], "x_left": None, "x_right": 0.5}
    assert out["gamma_1"] == pytest.approx(0.3, rel=0.1)
    assert out["stored"] is None and out["bootstrap"] is None


def test_run_where_window_rule_fails_still_reports_with_warning(tmp_path, capsys):
    """A run where the automatic rule cannot work (the smallest P has its optimum 3 grid points from
    the start of the grid, fewer than the 5 points a window needs on every curve) still gets figures
    and a report, with the fallback window flagged in the JSON, the warnings and the report."""
    log_norm = np.broadcast_to(np.linspace(0.0, 5.0, 30), (3, 3, 30)).copy()
    centre = np.array([0.32, 2.5, 3.0])[:, None, None]  # the optimum moves right with P
    run = tmp_path / "curved"
    save_npz_atomic(run / "curves.npz", {
        "P": np.array([100, 200, 400]), "seeds": np.arange(3), "epochs": np.arange(1, 31),
        "test_error": 0.2 + 0.05 * (log_norm - centre) ** 2, "log_norm": log_norm,
    })
    assert cli.run(_args(str(run), "--json", "--bootstrap", "5")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input"]["norm"] == "norm" and out["window"]["fallback"] is True
    assert any("rough" in w for w in out["warnings"])
    assert "rough" in (run / "analysis" / "report.md").read_text()
    assert (run / "analysis" / "collapse.png").exists()


def test_error_still_falling_at_the_end_is_flagged(tmp_path, capsys):
    """When the test error only decreases (training stopped before the optimum), the minimum is the
    last point reached: the output says that ε* and λ* are not an optimum."""
    log_norm = np.broadcast_to(np.linspace(0.0, 4.0, 25), (3, 2, 25)) + np.array([0.0, 0.5, 1.0])[:, None, None]
    run = tmp_path / "short"
    save_npz_atomic(run / "curves.npz", {
        "P": np.array([100, 200, 400]), "seeds": np.arange(2), "epochs": np.arange(1, 26),
        "test_error": 0.9 * np.exp(-0.3 * log_norm), "log_norm": log_norm,
    })
    assert cli.run(_args(str(run), "--json", "--no-plots", "--bootstrap", "0")) == 0
    out = json.loads(capsys.readouterr().out)
    flagged = [w for w in out["warnings"] if "still falling" in w]
    assert len(flagged) == 1 and "P = 100, 200, 400" in flagged[0]
    assert out["bootstrap"] is None
