"""Perceptron config validation and the `jaxscale perceptron run|theory` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from jaxscale.errors import UsageError
from jaxscale.perceptron import cli, theory
from jaxscale.perceptron.config import load_perceptron_config, perceptron_config_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_loads():
    cfg = load_perceptron_config(REPO / "configs" / "perceptron.toml")
    assert cfg.N > 0 and cfg.seeds > 0 and len(cfg.alpha) >= 3
    assert cfg.P == tuple(int(round(a * cfg.N)) for a in cfg.alpha)
    assert list(cfg.alpha) == sorted(cfg.alpha)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"alpah": [1]}, ["alpah", "valid keys"]),
        ({"N": "100"}, ["N", "integer"]),
        ({"N": 10.5}, ["N", "integer"]),
        ({"steps": 0}, ["steps", "positive"]),
        ({"seeds": -2}, ["seeds", "positive"]),
        ({"lr": -0.1}, ["lr", "positive"]),
        ({"lr": "fast"}, ["lr", "number"]),
        ({"init_norm": 0}, ["init_norm", "positive"]),
        ({"alpha": [1, -2]}, ["alpha", "positive"]),
        ({"alpha": [1, "x"]}, ["alpha[1]", "number"]),
        ({"alpha": []}, ["alpha", "empty"]),
        ({"alpha": [0.001], "N": 100}, ["alpha", "P = round"]),
        ({"alpha": [1.0, 1.001], "N": 100}, ["duplicate P"]),
        ({"dynamics": "adam"}, ["dynamics", "gd", "flow"]),
        ({"layout": "grid"}, ["layout", "bucket", "pad"]),
        ({"name": 3}, ["name", "string"]),
        ({"seed_start": -1}, ["seed_start"]),
    ],
)
def test_config_errors_name_the_key_and_the_fix(raw, words):
    with pytest.raises(UsageError) as e:
        perceptron_config_from_dict(raw, source="p.toml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("p.toml: ")
    for w in words:
        assert w in msg


def test_config_file_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_perceptron_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("N = [\n")
    with pytest.raises(UsageError, match="invalid TOML"):
        load_perceptron_config(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text('alpha = [5, 1]\nN = 10\ndynamics = "gd"\n')
    cfg = load_perceptron_config(ok, overrides={"steps": 7})
    assert cfg.alpha == (1.0, 5.0) and cfg.P == (10, 50) and cfg.steps == 7 and cfg.dynamics == "gd"


def _main_parser():
    class P(argparse.ArgumentParser):
        def error(self, message):
            raise UsageError(message)

    p = P(prog="jaxscale perceptron")
    cli.add_arguments(p)
    return p


def test_theory_json(capsys):
    args = _main_parser().parse_args(["theory", "--alpha", "1,5", "--lam", "0.1,10", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"alpha", "lam", "eps", "eps_hebb", "eps_max_margin", "lam_star", "eps_star"}
    assert out["alpha"] == [1.0, 5.0] and out["lam"] == [0.1, 10.0]
    assert len(out["eps"]) == 2 and all(len(e) == 2 for e in out["eps"])
    np.testing.assert_allclose(out["eps"][1], theory.eps_fixed_norm(np.array([0.1, 10.0]), 5.0), rtol=1e-12)
    np.testing.assert_allclose(out["eps_hebb"], [theory.eps_hebb(1.0), theory.eps_hebb(5.0)])
    np.testing.assert_allclose(out["eps_max_margin"][1], theory.eps_max_margin(5.0))
    assert out["lam_star"][1] == pytest.approx(theory.optimal_norm(5.0).lam_star, rel=1e-6)
    assert out["eps_star"][1] < out["eps_max_margin"][1]


def test_theory_table_output(capsys):
    assert cli.main(["theory", "--alpha", "2"]) == 0
    text = capsys.readouterr().out
    assert "eps_Hebb" in text and "lambda*" in text and len(text.splitlines()) == 2 + len(cli.DEFAULT_LAMS)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["theory", "--alpha", "1,x"], ["--alpha", "comma-separated"]),
        (["theory", "--alpha", "-1"], ["--alpha", "outside"]),
        (["theory", "--alpha", "1", "--lam", "0"], ["--lam", "outside"]),
        (["theory"], ["--alpha"]),
        (["run", "nope.toml"], ["not found"]),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxscale: error: ") and "\n" not in err
    for w in words:
        assert w in err


def test_run_command_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "p.toml"
    cfg.write_text('name = "tiny"\nN = 40\nalpha = [1, 4]\nseeds = 2\nsteps = 25\nlr = 0.2\ntheory_points = 7\n')
    out = tmp_path / "out"
    assert cli.main(["run", str(cfg), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "perceptron: step 25/25" in captured.err  # progress on stderr
    assert "curves.npz" in captured.out and "jaxscale analyze" in captured.out
    for name in ("curves.npz", "manifest.json", "perceptron.png", "perceptron.pdf"):
        assert (out / name).is_file()
    with np.load(out / "curves.npz", allow_pickle=False) as z:
        assert list(z["P"]) == [40, 160] and z["test_error"].shape[:2] == (2, 2)
