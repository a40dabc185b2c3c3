"""Training: ensembles equal separate runs, determinism, results files, the tfds path end to end."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jaxscale.cli import main
from jaxscale.config import config_from_dict
from jaxscale.data import load_dataset
from jaxscale.results import METRICS, Curves
from jaxscale.train import build_experiment, run_experiment

REPO = Path(__file__).resolve().parent.parent


def _cfg():
    return {
        "name": "t",
        "model": {"family": "cnn", "preset": "tiny", "init_factor": 0.5},
        "data": {"dataset": "digits"},
        # P=100 with batch 32: three full batches and a kept partial one of 4
        "train": {"P": [48, 100], "seeds": 3, "epochs": 2, "batch_size": 32},
        "parallel": {"ensemble": "vmap"},
    }


def _run(raw, dataset):
    cfg = config_from_dict(raw)
    curves, stats = run_experiment(build_experiment(cfg, dataset))
    return curves


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def ensemble_curves(digits):
    return _run(_cfg(), digits)


def test_curves_complete_and_sane(ensemble_curves):
    c = ensemble_curves
    assert c.P.tolist() == [48, 100] and c.seeds.tolist() == [0, 1, 2] and c.epochs.tolist() == [1, 2]
    for k in METRICS:
        assert c.values[k].shape == (2, 3, 2)
        assert np.isfinite(c.values[k]).all(), k
    for k in ("train_error", "test_error"):
        assert ((c.values[k] >= 0) & (c.values[k] <= 1)).all()
    assert set(c.norm_names) == {"spectral_complexity", "spectral_product", "frobenius", "l1", "group_2_1"}
    for n in c.norm_names:
        assert np.isfinite(c.values[f"log_{n}"]).all(), n
    # seeds differ from each other (different init, subset, order)
    assert not np.allclose(c.values["test_loss"][:, 0], c.values["test_loss"][:, 1])
    # every seed at every P learns: its training loss falls from epoch 1 to epoch 2, and the weights
    # grow (the init factor 0.5 starts them small), so the logged norms move
    assert (c.values["train_loss"][..., 1] < c.values["train_loss"][..., 0]).all()
    assert (np.diff(c.values["log_frobenius"], axis=-1) > 0).all()


def test_training_reaches_low_test_error(digits):
    """The digits CNN learns the task: test error far below chance (0.9) within a few epochs."""
    raw = {"name": "t", "model": {"family": "cnn", "preset": "digits"}, "data": {"dataset": "digits"},
           "train": {"P": [400], "seeds": 1, "epochs": 8, "batch_size": 32, "lr": 3e-3, "log_points": 2},
           "norms": {"every": 0}}
    c = _run(raw, digits)
    assert c.values["test_error"][0, 0, -1] < 0.25, c.values["test_error"]
    assert c.values["test_error"][0, 0, -1] < c.values["test_error"][0, 0, 0]


def test_vmapped_ensemble_equals_separate_single_seed_runs(digits, ensemble_curves):
    for s in (0, 2):
        raw = _cfg()
        raw["train"].update(seeds=1, seed_start=s)
        single = _run(raw, digits)
        for k, v in ensemble_curves.values.items():
            np.testing.assert_allclose(v[:, s], single.values[k][:, 0], rtol=2e-4, atol=2e-5, err_msg=k)


def test_loop_strategy_equals_vmap(digits, ensemble_curves):
    raw = _cfg()
    raw["parallel"]["ensemble"] = "loop"
    looped = _run(raw, digits)
    for k, v in ensemble_curves.values.items():
        np.testing.assert_allclose(looped.values[k], v, rtol=2e-4, atol=2e-5, err_msg=k)


def test_same_seed_same_numbers(digits, ensemble_curves):
    again = _run(_cfg(), digits)
    for k, v in ensemble_curves.values.items():
        np.testing.assert_array_equal(again.values[k], v, err_msg=k)


def test_a_P_s_numbers_do_not_depend_on_the_other_Ps(digits, ensemble_curves):
    """A seed starts from the same weights at every P and its P-subsets are nested (PROTOCOL §3.2):
    P = 100 alone gives the numbers P = 100 gets after P = 48 in the same run."""
    from jaxscale.train.loop import make_programs, stacked_seed_keys

    raw = _cfg()
    raw["train"]["P"] = [100]
    alone = _run(raw, digits)
    for k, v in ensemble_curves.values.items():
        np.testing.assert_array_equal(alone.values[k][0], v[1], err_msg=k)
    progs = make_programs(build_experiment(config_from_dict(_cfg()), digits))
    k = stacked_seed_keys([0, 1, 2])
    s48 = np.asarray(progs["subsets"](k["data"], digits.n_train, 48))
    s100 = np.asarray(progs["subsets"](k["data"], digits.n_train, 100))
    np.testing.assert_array_equal(s100[:, :48], s48)
    assert len(set(s100[0].tolist())) == 100 and not np.array_equal(s100[0], s100[1])


def test_cli_run_writes_complete_results(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'name = "cli"\n[model]\nfamily = "cnn"\npreset = "tiny"\n[data]\ndataset = "digits"\n'
        "[train]\nP = [40, 80]\nseeds = 2\nepochs = 2\nbatch_size = 32\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Results:" in captured.out and "best test err" in captured.out
    assert "epoch" in captured.err  # progress was shown
    with np.load(out / "curves.npz", allow_pickle=False) as z:
        keys = set(z.files)
        assert {"P", "seeds", "epochs", *METRICS, "log_spectral_complexity"} <= keys
        assert z["test_error"].shape == (2, 2, 2)
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["train"]["P"] == [40, 80]
    assert m["environment"]["versions"]["jax"]
    assert len(m["timing"]["per_P"]) == 2
    assert (out / "config.toml").exists()
    assert Curves.load(out).values["test_error"].shape == (2, 2, 2)
    assert not list(out.glob(".tmp-*"))


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A crash in the middle of writing curves.npz leaves no curves.npz (and keeps an older one)."""
    import jaxscale.io as jio

    c = Curves.empty([1], [0], [1], ["norm"])
    path = tmp_path / "curves.npz"

    def boom(fd):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(jio.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        c.save(path)
    assert not path.exists() and not list(tmp_path.iterdir())
    monkeypatch.undo()
    c.save(path)
    old = path.read_bytes()
    monkeypatch.setattr(jio.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        Curves.empty([1, 2], [0], [1], ["norm"]).save(path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["curves.npz"]


def test_killed_run_leaves_no_curves(tmp_path):
    """kill -9 during training: the run directory has no curves.npz at all."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'name = "kill"\n[model]\nfamily = "cnn"\npreset = "digits"\n[data]\ndataset = "digits"\n'
        "[train]\nP = [200, 400, 800]\nseeds = 2\nepochs = 400\nbatch_size = 32\n"
    )
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jaxscale", "run", str(cfg), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    # read lines in a thread so that the deadline holds even if the run prints nothing
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l.decode()) for l in proc.stdout], daemon=True).start()
    deadline, seen = time.time() + 120, []
    while time.time() < deadline:  # wait until training is under way
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.time())))
        except queue.Empty:
            break
        if "epoch" in seen[-1] and "compiling" not in seen[-1]:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert any("epoch" in l for l in seen), "".join(seen)
    assert not (out / "curves.npz").exists()


def test_tfds_mnist_end_to_end_mocked(tmp_path, capsys):
    """`jaxscale run configs/cnn_mnist.toml --epochs 1 --P 256 --seeds 2` through the real tfds code path
    (tfds.testing.mock_data: random images with MNIST's exact features)."""
    import tensorflow_datasets as tfds

    out = tmp_path / "mnist"
    with tfds.testing.mock_data(num_examples=400):
        rc = main(["run", str(REPO / "configs" / "cnn_mnist.toml"), "--epochs", "1", "--P", "256",
                   "--seeds", "2", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    c = Curves.load(out)
    assert c.P.tolist() == [256] and c.seeds.tolist() == [100, 101] and c.epochs.tolist() == [1]
    assert np.isfinite(c.values["test_error"]).all()
    m = json.loads((out / "manifest.json").read_text())
    assert m["resolved"]["input_shape"] == [28, 28, 1] and m["resolved"]["model_hyper"]
