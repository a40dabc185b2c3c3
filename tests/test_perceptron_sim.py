"""Perceptron simulation: data, the GD step, vmapping over seeds/α, the dynamics, the results files."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.perceptron.config import perceptron_config_from_dict
from jaxscale.perceptron.simulate import _one_step, log_schedule, make_instances, run_experiment, simulate


def _cfg(**kw):
    base = dict(N=48, alpha=[1.0, 3.0], seeds=3, steps=40, dynamics="gd", lr=0.5, log_points=12)
    base.update(kw)
    return perceptron_config_from_dict(base)


def test_instances_teacher_labels_nesting_and_determinism():
    N = 50
    d = make_instances([3, 4], N, 30, init_norm=2e-3)
    assert d.X.shape == (2, 30, N) and d.y.shape == (2, 30) and d.w_star.shape == (2, N)
    np.testing.assert_allclose(np.sum(np.asarray(d.w_star) ** 2, axis=1), N, rtol=1e-5)
    u = np.einsum("spn,sn->sp", np.asarray(d.X, np.float64), np.asarray(d.w_star, np.float64))
    np.testing.assert_array_equal(np.asarray(d.y), np.where(u >= 0, 1.0, -1.0))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(d.v0), axis=1), 2e-3, rtol=1e-5)
    # counter-based rows: a smaller P is a prefix of a larger one, for the same seeds
    small = make_instances([3, 4], N, 20, init_norm=2e-3)
    np.testing.assert_array_equal(np.asarray(small.X), np.asarray(d.X)[:, :20])
    np.testing.assert_array_equal(np.asarray(small.w_star), np.asarray(d.w_star))
    # deterministic, and seeds differ
    again = make_instances([3, 4], N, 30, init_norm=2e-3)
    np.testing.assert_array_equal(np.asarray(again.X), np.asarray(d.X))
    assert not np.allclose(np.asarray(d.X)[0], np.asarray(d.X)[1])


def _reference_step(v, X, y, w, dynamics, lr):
    """Float64 NumPy reference of one step, with ∇ ln L̄ from a log-sum-exp (no underflow)."""
    v, X, y, w = (np.asarray(a, np.float64) for a in (v, X, y, w))
    z = y * (X @ v)
    sig = 0.5 * (1 - np.tanh(z / 2))  # σ(−z)
    loss = np.logaddexp(0.0, -z)
    if dynamics == "gd":
        grad = -((sig * y) @ X) / len(z)
    else:
        # ∇ ln L̄ = −Σ σ(−z) y x / Σ ℓ(z), written with a common factor e^{−min z} for large z
        zmin = z.min()
        num = (np.exp(-(z - zmin)) / (1 + np.exp(-z))) * y
        den = np.sum(np.log1p(np.exp(-z)) * np.exp(zmin)) if zmin < 30 else np.sum(np.exp(-(z - zmin)))
        grad = -(num @ X) / den
    lam = np.linalg.norm(v)
    metrics = [lam, v @ w / (lam * np.linalg.norm(w)), np.mean(z <= 0), np.mean(loss)]
    return np.array(metrics), v - lr * grad


@pytest.mark.parametrize("dynamics", ["gd", "flow"])
@pytest.mark.parametrize("scale", [0.7, 60.0])
def test_one_step_matches_reference_and_autodiff(dynamics, scale):
    N, P = 40, 100
    d = make_instances([7], N, P)
    X, y, w = d.X[0], d.y[0], d.w_star[0]
    # a student correlated with the teacher, at norm `scale` (at 60 the mean loss is ~e^{-10})
    v = w / jnp.sqrt(N) + 0.5 * jax.random.normal(jax.random.key(1), (N,))
    v = v * (scale / jnp.linalg.norm(v))
    # blocks of 16 rows: 6 full blocks and a remainder of 4
    step = functools.partial(_one_step, rows=P, block=16, dynamics=dynamics, lr=0.3)
    m, v_new = jax.jit(step)(v, X, y, w, P)
    m_ref, v_ref = _reference_step(v, X, y, w, dynamics, 0.3)
    np.testing.assert_allclose(np.asarray(m), m_ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(v_new), v_ref, rtol=2e-4, atol=2e-5 * scale)
    if scale < 1:  # autodiff of the documented objective (mean loss, or its log for "flow")
        mean_loss = lambda vv: jnp.mean(jax.nn.softplus(-y * (X @ vv)))  # noqa: E731
        obj = mean_loss if dynamics == "gd" else (lambda vv: jnp.log(mean_loss(vv)))
        np.testing.assert_allclose(np.asarray(v_new), np.asarray(v - 0.3 * jax.grad(obj)(v)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dynamics", ["gd", "flow"])
def test_masked_rows_are_ignored(dynamics):
    N, P = 30, 90
    d = make_instances([2], N, P)
    v = d.w_star[0] / 10.0
    full = functools.partial(_one_step, rows=P, block=16, dynamics=dynamics, lr=0.2)
    part = functools.partial(_one_step, rows=50, block=16, dynamics=dynamics, lr=0.2)
    m1, v1 = jax.jit(full)(v, d.X[0], d.y[0], d.w_star[0], 50)  # rows 50..89 masked
    m2, v2 = jax.jit(part)(v, d.X[0], d.y[0], d.w_star[0], 50)  # rows 50..89 never read
    np.testing.assert_allclose(np.asarray(m1), np.asarray(m2), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(v1), np.asarray(v2), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dynamics", ["gd", "flow"])
def test_vmapped_seeds_equal_single_runs_and_pad_equals_bucket(dynamics):
    cfg = _cfg(dynamics=dynamics, lr=0.5 if dynamics == "gd" else 0.1)
    many = simulate(cfg)
    assert many.lam.shape == (2, 3, len(many.epochs))
    for i, s in enumerate(cfg.seed_values()):
        one = simulate(_cfg(dynamics=cfg.dynamics, lr=cfg.lr, seeds=1, seed_start=s))
        for name in ("lam", "R", "train_error", "train_loss"):
            np.testing.assert_allclose(getattr(many, name)[:, i], getattr(one, name)[:, 0], rtol=1e-5, atol=1e-6)
    pad = simulate(_cfg(dynamics=cfg.dynamics, lr=cfg.lr, layout="pad"))
    for name in ("lam", "R", "train_error", "train_loss"):
        np.testing.assert_allclose(getattr(pad, name), getattr(many, name), rtol=1e-5, atol=1e-6)
    # deterministic: the same config gives the same numbers
    np.testing.assert_array_equal(simulate(cfg).R, many.R)
    # training makes progress: λ grows, ε falls below chance
    assert np.all(many.lam[:, :, -1] > many.lam[:, :, 0]) and np.all(many.eps[:, :, -1] < 0.4)


def test_gd_and_flow_trace_the_same_trajectory():
    g = simulate(perceptron_config_from_dict(dict(N=100, alpha=[2], seeds=2, steps=3000, dynamics="gd", lr=0.1)))
    f = simulate(perceptron_config_from_dict(dict(N=100, alpha=[2], seeds=2, steps=3000, dynamics="flow", lr=0.02)))
    # flow reaches far larger norms in the same number of steps ...
    assert np.all(f.lam[0, :, -1] > 3 * g.lam[0, :, -1])
    # ... along the same (λ, ε) curve (discretisation errors O(lr): measured ~7e-4 here)
    for s in range(2):
        lg, lf = np.log(g.lam[0, s]), np.log(f.lam[0, s])
        grid = np.linspace(max(lg.min(), lf.min(), math.log(0.3)), min(lg.max(), lf.max()), 100)
        diff = np.interp(grid, lg, g.eps[0, s]) - np.interp(grid, lf, f.eps[0, s])
        assert np.max(np.abs(diff)) < 3e-3
        assert grid[-1] > math.log(5.0)  # the comparison covers λ from 0.3 to beyond 5


def test_lr_scaling_makes_the_norm_dynamics_N_independent():
    lam = {}
    for N in (100, 400):
        r = simulate(perceptron_config_from_dict(dict(N=N, alpha=[2], seeds=4, steps=60, dynamics="gd", lr=0.5, log_points=5)))
        lam[N] = r.lam[0].mean(axis=0)
    # measured: 0.1-1 % apart (seed noise ~ 1/√N), while λ itself grows 12x
    np.testing.assert_allclose(lam[100], lam[400], rtol=0.03)
    assert lam[400][-1] > 5 * lam[400][0]  # λ moved a lot, so the agreement is not trivial


def test_log_schedule():
    e = log_schedule(1000, 30)
    assert e[0] == 1 and e[-1] == 1000 and np.all(np.diff(e) > 0) and e.dtype == np.int64
    assert len(log_schedule(5, 50)) == 5


def test_run_experiment_writes_the_shared_format(tmp_path):
    from jaxscale.results import Curves

    cfg = _cfg(dynamics="flow", lr=0.2, steps=30, theory_points=9)
    out = run_experiment(cfg, tmp_path / "run")
    with np.load(out.curves_path, allow_pickle=False) as z:
        arr = {k: z[k] for k in z.files}
    for k in ("P", "seeds", "epochs", "train_error", "test_error", "train_loss", "test_loss", "log_norm", "alpha", "N"):
        assert k in arr
    assert arr["P"].dtype == np.int64 and list(arr["P"]) == [48, 144]
    assert arr["seeds"].dtype == np.int64 and list(arr["seeds"]) == [0, 1, 2]
    assert arr["epochs"].dtype == np.int64 and arr["epochs"][0] == 1 and arr["epochs"][-1] == 30
    shape = (2, 3, len(arr["epochs"]))
    for k in ("train_error", "test_error", "train_loss", "test_loss", "log_norm"):
        assert arr[k].shape == shape and arr[k].dtype == np.float64 and np.all(np.isfinite(arr[k]))
    assert np.all((arr["test_error"] >= 0) & (arr["test_error"] <= 0.5))
    assert np.all((arr["train_error"] >= 0) & (arr["train_error"] <= 1))
    np.testing.assert_allclose(arr["alpha"], [1.0, 3.0])
    assert int(arr["N"]) == 48
    # the analysis reads it through the shared loader
    c = Curves.from_arrays(arr, source="test")
    assert c.norm_names == ["norm"]
    manifest = json.loads(out.manifest_path.read_text())
    assert manifest["config"]["N"] == 48 and manifest["config"]["dynamics"] == "flow"
    assert manifest["environment"]["backend"] == "cpu" and manifest["wall_s"]["total"] > 0
    assert len(manifest["theory"]) == 2 and manifest["theory"][1]["eps_hebb"] < manifest["theory"][0]["eps_hebb"]
    png, pdf = out.figure_paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:4] == b"%PDF"
