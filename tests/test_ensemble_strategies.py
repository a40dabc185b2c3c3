"""Ensemble strategies: every strategy maps the same single-seed step and gives the same numbers;
"auto" calibrates, caches and respects overrides; the sequential strategy runs on a device layout."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.config import config_from_dict
from jaxscale.data import load_dataset
from jaxscale.errors import UsageError
from jaxscale.train import build_experiment, run_experiment
from jaxscale.train import step as step_lib
from jaxscale.train.ensemble import _pick  # noqa: E402  (the tie rule, tested directly)
from jaxscale.train.ensemble import (EnsembleChoice, StrategyCache, calibrate, calibration_key, choose_strategy,
                                     ensemble_program, epoch_program, parse_strategy, resolve_strategy, seed_map)
from jaxscale.train.loop import make_programs, stacked_seed_keys

S = 3
STRATEGIES = ("vmap", "loop", "chunk:2", "sequential")


def _raw(**train):
    return {
        "name": "t",
        "model": {"family": "cnn", "preset": "tiny", "init_factor": 0.5},
        "data": {"dataset": "digits"},
        # P=100 with batch 32: three full batches and a kept partial one of 4
        "train": {"P": [100], "seeds": S, "epochs": 2, "batch_size": 32, **train},
        "parallel": {"ensemble": "vmap"},
    }


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def exp(digits):
    return build_experiment(config_from_dict(_raw()), digits)


@pytest.fixture(scope="module")
def start(exp):
    """Initial stacked states and P=96 subsets of the S seeds (three full batches of 32), built once:
    every test gets copies (the epoch programs donate their state)."""
    progs = make_programs(exp)
    k = stacked_seed_keys(range(S))
    states = progs["init"](k["init"], k["train"], k["norms"])
    return states, progs["subsets"](k["data"], exp.dataset.n_train, 96)


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _data(exp):
    return jnp.asarray(exp.dataset.x_train), jnp.asarray(exp.dataset.y_train.astype(np.int32))


def _two_epochs(exp, start, strategy, **kw):
    states, subsets = _copy(start[0]), start[1]
    x, y = _data(exp)
    prog = epoch_program(exp.fns, 32, strategy, S, **kw)
    losses = []
    for e in (1, 2):
        states, m = prog(states, subsets, x, y, jnp.int32(e))
        losses.append(np.asarray(m["loss"]))
    return states, np.stack(losses)


@pytest.fixture(scope="module")
def by_strategy(exp, start):
    return {s: _two_epochs(exp, start, s) for s in STRATEGIES}


def _assert_same(a, b):
    (sa, la), (sb, lb) = a, b
    assert la.shape == (2, S) and np.isfinite(la).all()
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
    for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=1e-4, atol=1e-5)


def test_parse_strategy_and_errors():
    assert str(parse_strategy("chunk:4")) == "chunk:4" and parse_strategy("chunk:4").chunk == 4
    assert parse_strategy("sequential").in_program is False and parse_strategy("vmap").in_program
    for bad in ("chunk:0", "chunk:x", "pmap", "", "auto"):
        with pytest.raises(UsageError, match="parallel.ensemble"):
            parse_strategy(bad)
    assert resolve_strategy("auto", "cnn", backend="cpu") == "loop"
    assert resolve_strategy("auto", "vit", backend="gpu") == "vmap"
    assert resolve_strategy("chunk:2", "cnn") == "chunk:2"
    with pytest.raises(ValueError, match="host-side"):
        seed_map(lambda a: a, "sequential", (0,))


@pytest.mark.parametrize("strategy", STRATEGIES[1:])
def test_strategies_give_the_same_numbers(by_strategy, strategy):
    _assert_same(by_strategy[strategy], by_strategy["vmap"])


def test_ensemble_equals_the_unbatched_single_seed_step(exp, start, by_strategy):
    """Seed 1 of the ensemble = the single-seed train_epoch run alone (no seed axis at all)."""
    one = jax.tree.map(lambda a: a[1], _copy(start[0]))
    x, y = _data(exp)
    f = jax.jit(functools.partial(step_lib.train_epoch, exp.fns, 32))
    for e in (1, 2):
        one, m = f(one, start[1][1], x, y, jnp.int32(e))
    ens_states, ens_loss = by_strategy["sequential"]
    np.testing.assert_allclose(float(m["loss"]), ens_loss[1, 1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(ens_states.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b[1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["sequential", "loop", "chunk:2", "chunk:3", "chunk:4", "chunk:8"])
def test_inplace_output_and_caller_buffer_kept(strategy):
    """Generic contract of in-place outputs (host loop, ``fori_loop`` over seeds or over groups of
    K with a remainder group): an in-place output at another position, a shared argument, and an
    input the caller did not donate stays valid and unchanged."""

    def fn(state, shared):
        new = {"w": state["w"] * 2.0 + shared, "n": state["n"] + 1}
        return {"sum": new["w"].sum()}, new

    st = {"w": jnp.arange(12.0).reshape(4, 3), "n": jnp.arange(4, dtype=jnp.int32)}
    shared = jnp.float32(0.5)
    ref = jax.vmap(fn, in_axes=(0, None))(st, shared)
    prog = ensemble_program(fn, strategy, (0, None), n_seeds=4, inplace={1: 0})
    out = prog(st, shared)
    np.testing.assert_allclose(out[0]["sum"], ref[0]["sum"])
    np.testing.assert_allclose(out[1]["w"], ref[1]["w"])
    np.testing.assert_array_equal(out[1]["n"], ref[1]["n"])
    np.testing.assert_array_equal(st["n"], np.arange(4))  # not donated by the caller: untouched


def test_sequential_on_a_device_layout(exp, start, by_strategy):
    """The sequential block program compiled by the experiment's ``distribute`` (shard_map over the
    seed mesh) matches vmap: this is how make_programs uses it."""
    from jaxscale.train.sharding import distribute, single_device_layout

    layout = single_device_layout(S)
    comp = lambda f, ax, d: distribute(f, layout, ax, donate_argnums=d)  # noqa: E731
    _assert_same(_two_epochs(exp, start, "sequential", compile=comp), by_strategy["vmap"])


@pytest.mark.slow
def test_curves_through_the_experiment_loop(digits):
    """A whole run (training with a kept partial batch, logged evaluation, norms) gives the same curves
    with the sequential epoch program as with vmap: the loop only sees stacked states."""
    exp = build_experiment(config_from_dict(_raw()), digits)
    ref, _ = run_experiment(exp)
    progs = make_programs(exp)
    progs["epoch"] = epoch_program(exp.fns, 32, "sequential", S)
    curves, _ = run_experiment(exp, programs=progs)
    for k, v in ref.values.items():
        np.testing.assert_allclose(curves.values[k], v, rtol=2e-4, atol=2e-5, err_msg=k)


def test_choose_strategy_rules(exp):
    x, y = exp.dataset.x_train, exp.dataset.y_train
    c = choose_strategy("chunk:2", exp.fns, 32, S, x, y)
    assert (c.strategy, c.reason) == ("chunk:2", "requested")
    assert choose_strategy("auto", exp.fns, 32, 1, x, y).strategy == "vmap"
    small = choose_strategy("auto", exp.fns, 32, S, x, y, total_images=1000)
    assert small.strategy == resolve_strategy("auto", "cnn") and small.reason.startswith("static default")
    with pytest.raises(UsageError):
        choose_strategy("fastest", exp.fns, 32, S, x, y)


def test_auto_calibrates_then_caches(exp, start):
    x, y = exp.dataset.x_train, exp.dataset.y_train
    cache = StrategyCache()
    cands = ("sequential", "vmap")
    first = choose_strategy("auto", exp.fns, 32, S, x, y, candidates=cands, cache=cache, repeats=1,
                            state=_copy(start[0]))
    assert isinstance(first, EnsembleChoice) and first.reason == "calibrated"
    assert first.strategy in cands and set(first.timings_s) == set(cands)
    assert all(isinstance(v, float) and v > 0 for v in first.timings_s.values())
    assert first.strategy == _pick(first.timings_s) and first.calibration_s > 0
    again = choose_strategy("auto", exp.fns, 32, S, x, y, candidates=cands, cache=cache)
    assert (again.reason, again.strategy, len(cache)) == ("cached", first.strategy, 1)
    # what the decision depends on: another seed count, batch or precision is another decision
    key = calibration_key(exp.fns, 32, S, "fp32", cands)
    assert cache.get(key) is not None
    for other in (calibration_key(exp.fns, 32, 2, "fp32", cands), calibration_key(exp.fns, 64, S, "fp32", cands),
                  calibration_key(exp.fns, 32, S, "bf16", cands)):
        assert other != key and cache.get(other) is None


def test_pick_fastest_with_ties_to_an_in_program_strategy():
    assert _pick({"sequential": 1.0, "loop": 1.2, "vmap": 1.5}) == "sequential"
    assert _pick({"sequential": 1.0, "loop": 1.02, "vmap": 1.5}) == "loop"  # tie: one program
    assert _pick({"sequential": 1.0, "loop": 1.02, "vmap": 1.01}) == "vmap"  # fastest of the tied
    assert _pick({"sequential": 1.0}) == "sequential"


def test_calibration_skips_candidates_over_the_memory_budget(exp, start):
    t = calibrate(exp.fns, 32, S, exp.dataset.x_train, exp.dataset.y_train, ("vmap", "sequential"),
                  repeats=1, memory_budget=1, state=_copy(start[0]))
    assert isinstance(t["sequential"], float)
    assert isinstance(t["vmap"], str) and "budget" in t["vmap"]


def test_flops_per_image_xla_matches_the_hand_count(exp):
    """The FLOPs behind MFU: XLA's cost analysis of one compiled train step agrees with counting the
    CNN's multiply-accumulates by hand (XLA also counts the elementwise work: a few per cent more)."""
    import dataclasses as dc

    from jaxscale.bench.common import bench_config, build_bench_experiment
    from jaxscale.bench.throughput import arithmetic_flops_per_image, step_flops_per_image

    cfg = bench_config("cnn", "digits", seeds=1, P=128, preset="digits")
    bexp = build_bench_experiment(cfg, "digits", n_train=128)
    xla, hand = step_flops_per_image(bexp), arithmetic_flops_per_image(bexp.spec)
    # digits CNN: convs 16, 32 (3x3, 8x8 input, one pool) + 512->128->10 Linears, counted by hand here
    macs = [8 * 8 * 9 * 1 * 16, 8 * 8 * 9 * 16 * 32, 4 * 4 * 32 * 128, 128 * 10]
    assert hand == 2.0 * (3 * sum(macs) - macs[0])
    assert 1.0 <= xla / hand < 1.10, (xla, hand)
    # the norms' power iterations and the optimiser are in XLA's count: without norms it is smaller
    no_norms = dc.replace(bexp, fns=dc.replace(bexp.fns, norms=dc.replace(bexp.fns.norms, every=0)))
    assert step_flops_per_image(no_norms) < xla
    assert arithmetic_flops_per_image(dc.replace(bexp.spec, family="vit")) is None


@pytest.mark.slow
def test_bench_throughput_and_experiment_cli(tmp_path, capsys):
    """``jaxscale bench throughput`` and ``bench experiment`` end to end on a tiny model: the issue's
    JSON keys, img_s_ensemble = the auto choice's measured rate, a projection that adds up."""
    import json

    from jaxscale.cli import main

    assert main(["bench", "throughput", "--model", "cnn", "--dataset", "digits", "--preset", "tiny", "--seeds", "2",
                 "--P", "64", "--batch-size", "32", "--repeats", "1", "--calib-steps", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for k in ("img_s_single", "img_s_sequential", "img_s_ensemble", "flops_per_img", "achieved_flops",
              "peak_flops", "mfu"):
        assert isinstance(r[k], float) and r[k] > 0, k
    assert r["img_s_ensemble"] == r["ensemble_by_strategy"][r["ensemble_strategy"]]["img_s"]
    assert r["ensemble_choice"]["reason"] == "calibrated"
    assert set(r["ensemble_by_strategy"]) >= {"sequential", "loop", "vmap"}
    np.testing.assert_allclose(r["achieved_flops"], r["flops_per_img"] * r["img_s_ensemble"])

    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "p"\n[model]\nfamily = "cnn"\npreset = "tiny"\n[data]\ndataset = "digits"\n'
                   '[train]\nP = [64, 128]\nseeds = 2\nepochs = 5\nbatch_size = 32\nlog_points = 3\n')
    assert main(["bench", "experiment", str(cfg), "--P-measure", "64", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["P_measure"] == 64 and e["logged_epochs"] == 3 and e["ensemble_choice"]["reason"].startswith("static")
    assert e["projected_ensemble_s"] == pytest.approx(sum(e["projected_ensemble_per_P_s"]) + e["calibration_s"])
    # the larger P costs more (the seeds' initialisation is charged to the first P only); and one
    # seed at a time is projected too
    per_P = e["projected_ensemble_per_P_s"]
    assert per_P[1] > per_P[0] - e["ensemble_init_s"] > 0
    assert e["projected_sequential_s"] > 0 and e["speedup"] == pytest.approx(
        e["projected_sequential_s"] / e["projected_ensemble_s"])

    # bench norms: the three timings are real, round-robin samples
    assert main(["bench", "norms", "--model", "cnn", "--dataset", "digits", "--seeds", "2", "--steps", "2",
                 "--repeats", "2", "--json"]) == 0
    n = json.loads(capsys.readouterr().out)
    for k in ("step_s", "step_with_norms_s", "svd_s"):
        assert n[k] > 0 and len(n["samples"][k]) == 2, k
    assert n["overhead_fraction"] == pytest.approx(n["step_with_norms_s"] / n["step_s"] - 1)
    assert n["svd_over_step"] == pytest.approx(n["svd_s"] / n["step_s"])
