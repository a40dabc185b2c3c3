"""Seed batching: every grouping maps the same single-seed step and gives the same numbers; a run
picks loop or vmap by the static rule and the vmap group size from XLA's memory analysis against
the memory limit, and refuses up front what cannot fit one seed at a time."""

from __future__ import annotations

import dataclasses
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
from jaxscale.train.ensemble import batching_kind, choose_group, seed_map
from jaxscale.train.loop import build_programs, make_programs, stacked_seed_keys

S = 3
GROUPS = (None, 1, 2)  # vmap of all seeds, loop, vmapped groups of 2 (+ a remainder group of 1)


def _raw(seeds=S, **parallel):
    return {
        "name": "t",
        "model": {"family": "cnn", "preset": "tiny", "init_factor": 0.5},
        "data": {"dataset": "digits"},
        # P=100 with batch 32: three full batches and a kept partial one of 4
        "train": {"P": [100], "seeds": seeds, "epochs": 2, "batch_size": 32, "log_points": 2},
        "parallel": {"ensemble": "vmap", **parallel},
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


def _two_epochs(exp, start, group):
    states, subsets = _copy(start[0]), start[1]
    x, y = _data(exp)
    prog = build_programs(exp, exp.layout, group)["epoch"]
    losses = []
    for e in (1, 2):
        states, m = prog(states, subsets, x, y, np.int32(e))
        losses.append(np.asarray(m["loss"]))
    return states, np.stack(losses)


@pytest.fixture(scope="module")
def by_group(exp, start):
    return {g: _two_epochs(exp, start, g) for g in GROUPS}


def _assert_same(a, b):
    (sa, la), (sb, lb) = a, b
    assert la.shape == (2, S) and np.isfinite(la).all()
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
    for u, v in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        assert u.shape == v.shape and u.dtype == v.dtype
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("group", GROUPS[1:])
def test_groupings_give_the_same_numbers(by_group, group):
    _assert_same(by_group[group], by_group[None])


def test_ensemble_equals_the_unbatched_single_seed_step(exp, start, by_group):
    """Seed 1 of the ensemble = the single-seed train_epoch run alone (no seed axis at all)."""
    one = jax.tree.map(lambda a: a[1], _copy(start[0]))
    x, y = _data(exp)
    f = jax.jit(functools.partial(step_lib.train_epoch, exp.fns, 32))
    for e in (1, 2):
        one, m = f(one, start[1][1], x, y, jnp.int32(e))
    ens_states, ens_loss = by_group[1]
    np.testing.assert_allclose(float(m["loss"]), ens_loss[1, 1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(ens_states.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b[1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("group", [1, 2, 3, 4, 8])
def test_inplace_output_and_shared_argument(group):
    """Generic contract of in-place outputs (a ``fori_loop`` over seeds or over groups of K with a
    remainder group): an in-place output at another position and a shared argument give vmap's
    values; an input the caller did not donate stays unchanged."""

    def fn(state, shared):
        new = {"w": state["w"] * 2.0 + shared, "n": state["n"] + 1}
        return {"sum": new["w"].sum()}, new

    st = {"w": jnp.arange(15.0).reshape(5, 3), "n": jnp.arange(5, dtype=jnp.int32)}
    shared = jnp.float32(0.5)
    ref = jax.vmap(fn, in_axes=(0, None))(st, shared)
    out = jax.jit(seed_map(fn, (0, None), group, inplace={1: 0}))(st, shared)
    np.testing.assert_allclose(out[0]["sum"], ref[0]["sum"])
    np.testing.assert_allclose(out[1]["w"], ref[1]["w"])
    np.testing.assert_array_equal(out[1]["n"], ref[1]["n"])
    np.testing.assert_array_equal(st["n"], np.arange(5))  # not donated by the caller: untouched
    with pytest.raises(ValueError, match="per-seed"):
        seed_map(fn, (0, None), group, inplace={1: 1})


def test_static_rule():
    assert batching_kind("auto", "cnn", "cpu") == batching_kind("auto", "resnet", "cpu") == "loop"
    assert batching_kind("auto", "vit", "cpu") == "vmap"
    assert {batching_kind("auto", f, "gpu") for f in ("cnn", "resnet", "vit")} == {"vmap"}
    assert batching_kind("vmap", "cnn", "cpu") == "vmap" and batching_kind("loop", "vit", "gpu") == "loop"


def test_choose_group_fits_the_limit():
    """With a need of 100 + 10 per vmapped seed: the widest group that fits, balanced over the groups;
    loop only ever asks about one seed; one seed over the limit is a UsageError naming both sizes."""
    asked = []

    def need(group):
        asked.append(group)
        return 100 + 10 * (10 if group is None else group)

    assert choose_group("vmap", 10, need, 200).group is None and asked == [None]
    b = choose_group("vmap", 10, need, 165)  # room for 6 seeds: 2 groups of 5, not 6 + 4
    assert (b.group, b.need_bytes, b.limit_bytes) == (5, 150, 165) and str(b) == "vmap (groups of 5 seeds)"
    assert choose_group("vmap", 10, need, 112).group == 1
    asked.clear()
    b = choose_group("loop", 10, need, 10**9)
    assert (b.group, str(b), asked) == (1, "loop", [1])
    assert choose_group("vmap", 10, lambda g: None, 1).group is None  # no memory analysis: unchecked
    with pytest.raises(UsageError, match=r"1\.1e-07 GB .* 1e-07 GB available"):
        choose_group("vmap", 10, need, 100)
    # a need far from the straight line (groups of 3 to 7 do not fit): the group halves until it fits
    jumpy = {None: 180, 1: 110, 2: 120, 3: 130}
    assert choose_group("vmap", 8, lambda g: jumpy.get(g, 1000), 165).group == 2


@pytest.mark.slow  # compiles every grouping; the default run keeps the refusal and choose_group tests
def test_small_memory_limit_gives_smaller_groups_and_the_same_curves(digits):
    """The run's own choice: all 4 seeds vmapped without a limit; under a limit just below that
    need, smaller groups (the layout line and manifest say so) and the same curves; under a limit
    below one seed's need, a UsageError before anything runs."""
    wide = build_experiment(config_from_dict(_raw(seeds=4)), digits)
    assert wide.batching.group is None and wide.strategy == "vmap"
    need = wide.batching.need_bytes
    assert need > 0 and wide.batching.limit_bytes > need
    narrow = build_experiment(config_from_dict(_raw(seeds=4, memory_limit_gb=(need - 1) / 1e9)), digits)
    assert narrow.batching.group in (1, 2, 3) and narrow.batching.need_bytes < need
    assert narrow.strategy in ("loop", "vmap (groups of 2 seeds)", "vmap (groups of 3 seeds)")
    a, _ = run_experiment(wide)
    b, _ = run_experiment(narrow)
    assert np.isfinite(a.values["test_error"]).all()
    for k, v in a.values.items():
        np.testing.assert_allclose(b.values[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    tight = build_experiment(config_from_dict(_raw(seeds=4, memory_limit_gb=1e-6)), digits)  # plans nothing yet
    with pytest.raises(UsageError, match="even one seed at a time"):
        tight.batching


def test_run_with_a_million_seeds_is_refused_up_front(tmp_path, capsys):
    """One line with the estimate and the limit, exit 2, and no run directory."""
    from jaxscale.cli import main

    cfg = tmp_path / "c.toml"
    # ~0.9 MB of parameters and optimiser state a seed: ~900 GB for a million
    cfg.write_text('name = "m"\n[model]\nfamily = "cnn"\npreset = "digits"\n[data]\ndataset = "digits"\n'
                   '[train]\nP = [64]\nepochs = 1\n')
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--seeds", "1000000", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1000000 seed(s)" in err[0] and "GB available" in err[0], err
    assert not out.exists()


def test_flops_per_image_xla_matches_the_hand_count():
    """The FLOPs behind MFU: XLA's cost analysis of one compiled train step agrees with counting the
    CNN's multiply-accumulates by hand (XLA also counts the elementwise work: a few per cent more)."""
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
    no_norms = dataclasses.replace(bexp, fns=dataclasses.replace(bexp.fns, norms=dataclasses.replace(bexp.fns.norms,
                                                                                                     every=0)))
    assert step_flops_per_image(no_norms) < xla
    assert arithmetic_flops_per_image(dataclasses.replace(bexp.spec, family="vit")) is None


@pytest.mark.slow
def test_bench_throughput_and_experiment_cli(tmp_path, capsys):
    """``jaxscale bench throughput`` and ``bench experiment`` end to end on a tiny model: the JSON
    keys, img_s_ensemble = the measured rate of the batching a run picks, a projection that adds up."""
    import json

    from jaxscale.cli import main

    assert main(["bench", "throughput", "--model", "cnn", "--dataset", "digits", "--preset", "tiny", "--seeds", "2",
                 "--P", "64", "--batch-size", "32", "--repeats", "1", "--strategies", "vmap,vmap:1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for k in ("img_s_single", "img_s_sequential", "img_s_ensemble", "flops_per_img", "achieved_flops",
              "peak_flops", "mfu"):
        assert isinstance(r[k], float) and r[k] > 0, k
    assert r["ensemble_strategy"] == "loop" and r["seed_batching"]["kind"] == "loop"  # CNN on CPU
    assert r["img_s_ensemble"] == r["ensemble_by_strategy"]["loop"]["img_s"]
    assert set(r["ensemble_by_strategy"]) == {"loop", "vmap"}  # vmap:1 is the loop
    np.testing.assert_allclose(r["achieved_flops"], r["flops_per_img"] * r["img_s_ensemble"])
    assert main(["bench", "throughput", "--strategies", "chunk:2"]) == 2

    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "p"\n[model]\nfamily = "cnn"\npreset = "tiny"\n[data]\ndataset = "digits"\n'
                   '[train]\nP = [64, 128]\nseeds = 2\nepochs = 5\nbatch_size = 32\nlog_points = 3\n')
    assert main(["bench", "experiment", str(cfg), "--P-measure", "64", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["P_measure"] == 64 and e["logged_epochs"] == 3 and e["ensemble_strategy"] == "loop"
    assert e["projected_ensemble_s"] == pytest.approx(sum(e["projected_ensemble_per_P_s"]))
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
