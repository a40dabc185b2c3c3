"""Devices: seed-parallel and data-parallel layouts (jit + shard_map, and pmap) over 2 and 4 fake CPU
devices give the one-device curves; a diverging seed does not disturb the others; layout arithmetic.

Fake devices need XLA_FLAGS before JAX starts, so the trainings run in a subprocess
(tests/parallel_worker.py) under ``timeout -k 5``; the host loop waits for every data-parallel epoch
(collectives queued without syncing have hung on fake CPU devices, TOOLCHAIN.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxscale.config import ParallelConfig
from jaxscale.errors import UsageError
from jaxscale.results import METRICS
from jaxscale.train.sharding import layout_shape, plan_layout
from scale_helpers import HERE, run_python, subprocess_env

# Float tolerance: a data-parallel gradient is a sum of per-shard sums (another summation order).
RTOL, ATOL = 1e-5, 1e-6


def _train(tmp_path, tmp_path_factory, runs: list[str], devices: int, seconds: int) -> dict:
    out = tmp_path / "curves.npz"
    proc = run_python([str(HERE / "parallel_worker.py"), str(out), *runs],
                      subprocess_env(tmp_path_factory, devices=devices), seconds)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out) as z:
        data = {k: z[k] for k in z.files}
    res = {}
    for key, v in data.items():
        run, name = key.split(":", 1)
        res.setdefault(run, {})[name] = v
    return res


def _metrics(run: dict) -> dict:
    return {k: v for k, v in run.items() if k in METRICS or k.startswith("log_")}


def _assert_same(run: dict, ref: dict, name: str) -> None:
    for k, v in _metrics(ref).items():
        assert run[k].shape == v.shape == (1, 3, 2), (name, k)
        assert np.isfinite(run[k]).all(), (name, k)
        np.testing.assert_allclose(run[k], v, rtol=RTOL, atol=ATOL, err_msg=f"{name}: {k}")


@pytest.mark.slow  # subprocesses on fake devices: the slow CI step runs every multi-device run
def test_two_devices_seed_and_data_parallel_equal_one_device_and_nan_seed_isolated(tmp_path, tmp_path_factory):
    res = _train(tmp_path, tmp_path_factory, ["one", "s2", "d2", "nan-one", "nan-s2"], devices=2, seconds=400)
    one = res["one"]
    assert str(res["s2"]["layout"]) == "3 seeds on 2 device(s) [jit, seed-parallel: 2 group(s) x 2 seed(s), 1 padding seed(s)]"
    assert str(res["d2"]["layout"]) == "3 seeds on 2 device(s) [jit, data-parallel x2: 1 group(s) x 3 seed(s)]"
    _assert_same(res["s2"], one, "seed-parallel x2")
    _assert_same(res["d2"], one, "data-parallel x2")
    # seeds differ from each other, so equality above is not trivially true
    assert not np.allclose(one["test_loss"][0, 0], one["test_loss"][0, 1])

    for name in ("nan-one", "nan-s2"):
        r = res[name]
        assert r["nonfinite"].tolist() == [2], name  # listed (manifest's nonfinite_seeds)
        for k in _metrics(one):
            # the diverged seed: finite before the divergence, NaN from its epoch on
            assert np.isfinite(r[k][0, 2, 0]) and np.isnan(r[k][0, 2, 1]), (name, k)
            np.testing.assert_array_equal(r[k][0, 2, 0], one[k][0, 2, 0], err_msg=f"{name}: {k}")
            # the other seeds trained on, exactly as without the divergence (same programs: bitwise)
            np.testing.assert_array_equal(r[k][:, :2], res["one" if name == "nan-one" else "s2"][k][:, :2],
                                          err_msg=f"{name}: {k}")
    assert res["one"]["nonfinite"].tolist() == []


@pytest.mark.slow
def test_four_devices_all_layouts_equal_one_device(tmp_path, tmp_path_factory):
    res = _train(tmp_path, tmp_path_factory, ["one", "s4", "d4", "2x2"], devices=4, seconds=500)
    assert "4 group(s) x 1 seed(s), 1 padding seed(s)" in str(res["s4"]["layout"])
    assert "data-parallel x4: 1 group(s) x 3 seed(s)" in str(res["d4"]["layout"])
    assert "data-parallel x2: 2 group(s) x 2 seed(s), 1 padding seed(s)" in str(res["2x2"]["layout"])
    for name in ("s4", "d4", "2x2"):
        _assert_same(res[name], res["one"], name)


@pytest.mark.slow
def test_pmap_layouts_equal_one_device(tmp_path, tmp_path_factory):
    res = _train(tmp_path, tmp_path_factory, ["one", "pmap-s2", "pmap-d2"], devices=2, seconds=500)
    assert "[pmap, seed-parallel: 2 group(s) x 2 seed(s), 1 padding seed(s)]" in str(res["pmap-s2"]["layout"])
    assert "[pmap, data-parallel x2" in str(res["pmap-d2"]["layout"])
    for name in ("pmap-s2", "pmap-d2"):
        _assert_same(res[name], res["one"], name)


# ------------------------------------------------------------------------------------------------
# Layout arithmetic (pure) and refusals


@pytest.mark.parametrize("par, seeds, devices, expected", [
    (ParallelConfig(), 30, 8, (8, 1, 4)),                    # auto: seed-parallel, 2 padding seeds
    (ParallelConfig(), 8, 8, (8, 1, 1)),
    (ParallelConfig(), 3, 8, (4, 2, 1)),                     # auto: fewer seeds than devices -> data x2
    (ParallelConfig(), 1, 8, (1, 8, 1)),                     # one seed: all devices data-parallel
    (ParallelConfig(data=1), 3, 4, (4, 1, 1)),
    (ParallelConfig(data=2), 5, 8, (4, 2, 2)),
    (ParallelConfig(data=3), 5, 8, (2, 3, 3)),               # 6 of 8 devices used
    (ParallelConfig(seeds_per_device=4), 10, 8, (3, 1, 4)),  # 3 devices, last group padded
    (ParallelConfig(api="pmap", data=1), 5, 2, (2, 1, 3)),
    (ParallelConfig(api="pmap", data=4), 3, 4, (1, 4, 3)),
])
def test_layout_shape(par, seeds, devices, expected):
    assert layout_shape(par, seeds, devices) == expected


@pytest.mark.parametrize("par, seeds, devices, processes, match", [
    (ParallelConfig(data=16), 3, 8, 1, "parallel.data = 16 but only 8 device"),
    (ParallelConfig(seeds_per_device=1), 10, 8, 1, "use seeds_per_device >= 2"),
    (ParallelConfig(api="pmap", data=2), 3, 4, 1, "pmap\" maps one axis only"),
    (ParallelConfig(api="pmap"), 3, 4, 2, "one process only"),
    (ParallelConfig(data=3), 6, 8, 2, "must use them all"),
])
def test_layout_refusals_are_usage_errors(par, seeds, devices, processes, match):
    with pytest.raises(UsageError, match=match):
        layout_shape(par, seeds, devices, processes)


def test_plan_layout_on_this_process():
    lay = plan_layout(ParallelConfig(), 5)
    assert lay.n_devices == 1 and lay.seeds_padded == 5 and lay.per_group == 5
    x = np.arange(10).reshape(5, 2)
    np.testing.assert_array_equal(np.asarray(lay.put_seeded(x)), x)
    np.testing.assert_array_equal(np.asarray(lay.put_replicated(x)), x)
