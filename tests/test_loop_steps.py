"""The named steps of the run loop, each driven alone on a tiny experiment (digits, tiny CNN, 2 seeds,
P = 40, 2 epochs, both logged): resume, per-P training, logged evaluation, and the checkpoint policy /
stop point. One uninterrupted run with a checkpoint after every epoch is the reference. (One P keeps
the compiling to one set of programs; test_reliability stops a run between two Ps.)"""

from __future__ import annotations

import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.config import config_from_dict
from jaxscale.data import load_dataset
from jaxscale.errors import UsageError
from jaxscale.train import build_experiment, run_experiment
from jaxscale.train.checkpoint import CHECKSUM_FILE, Checkpoints
from jaxscale.train.loop import RunLoop, training_fingerprint
from jaxscale.train.preemption import Interrupted, StopFlag

RAW = {"name": "steps", "model": {"family": "cnn", "preset": "tiny"}, "data": {"dataset": "digits"},
       "train": {"P": [40], "seeds": 2, "epochs": 2, "batch_size": 32, "log_points": 2}}


@pytest.fixture(scope="module")
def exp():
    return build_experiment(config_from_dict(RAW), load_dataset("digits"))


@pytest.fixture(scope="module")
def ref(exp, tmp_path_factory):
    """The uninterrupted run: its curves, stats and checkpoints after epochs 1 and 2 (steps 1 and 2)."""
    directory = tmp_path_factory.mktemp("ref") / "ck"
    ck = Checkpoints(directory, keep=10, every_epochs=1)
    curves, stats = run_experiment(exp, checkpoints=ck, resume=None)
    ck.close()
    assert ck.steps() == [1, 2] and np.isfinite(curves.values["test_error"]).all()
    return {"curves": curves.values, "stats": stats, "dir": directory}


def _events(run):
    events = []
    run.progress = events.append
    return events


def _assert_columns(values, reference, columns):
    """``values`` equal ``reference`` bit for bit in the logged-epoch ``columns`` (all seeds), NaN elsewhere."""
    for k, v in values.items():
        np.testing.assert_array_equal(v[0][:, columns], reference[k][0][:, columns], err_msg=k)
        assert np.isnan(np.delete(v, columns, axis=2)).all(), k


# ------------------------------------------------------------------------------------------------
# resume


def test_resume_mid_P_restores_curves_stats_and_state_and_continues_to_the_same_numbers(exp, ref, tmp_path):
    directory = tmp_path / "ck"
    shutil.copytree(ref["dir"], directory)
    shutil.rmtree(directory / "2")  # as if stopped after epoch 1: the continuation saves step 2 again
    ck = Checkpoints(directory, keep=10)
    run = RunLoop(exp, checkpoints=ck)
    events = _events(run)
    meta = ck.read_meta(1)
    pi, epoch, states = run.resume((1, meta))
    assert (pi, epoch) == (0, 1) and np.asarray(states.step).tolist() == [2, 2]  # 2 steps an epoch
    _assert_columns(run.curves.values, ref["curves"], [0])
    assert run.stats.per_P == [] and run.stats.nonfinite == []
    assert run.stats.resumed_from == {"step": 1, "P": 40, "epoch": 1}
    assert run.stats.earlier_wall_s == meta["stats"]["wall_s"] > 0
    assert events == [{"event": "resume", "step": 1, "P": 40, "P_index": 0, "n_P": 1, "epoch": 1, "epochs": 2}]
    run.train_P(pi, epoch + 1, states)  # the restored state trains on to the uninterrupted numbers
    _assert_columns(run.curves.values, ref["curves"], [0, 1])
    assert [d["P"] for d in run.stats.per_P] == [40]
    ck.close()
    assert ck.steps() == [1, 2]


def test_resume_from_a_complete_P_and_from_scratch(exp, ref):
    ck = Checkpoints(ref["dir"], keep=10)
    run = RunLoop(exp, checkpoints=ck)
    assert run.resume(None) == (0, 0, None) and run.stats.resumed_from is None
    assert np.isnan(run.curves.values["test_error"]).all()
    assert run.resume((2, ck.read_meta(2))) == (1, 0, None)  # P index 0 was complete: go on with the next
    _assert_columns(run.curves.values, ref["curves"], [0, 1])
    assert run.stats.per_P == ref["stats"].per_P
    ck.close()


# orbax's failed read of the destroyed arrays leaves callbacks for its closed event loop ("Exception
# ignored": test_reliability's rerun over the same damage shows them too); the discard is what is tested
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_discards_a_corrupt_unverified_checkpoint_and_refuses_a_verified_one(exp, ref, tmp_path):
    directory = tmp_path / "ck"
    shutil.copytree(ref["dir"], directory)
    for step in (1, 2):
        (directory / str(step) / CHECKSUM_FILE).unlink()
    for p in (directory / "2").rglob("*"):  # the data destroyed, the meta readable
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"garbage")
    msgs = []
    ck = Checkpoints(directory, keep=10, warn=msgs.append)
    step, meta = ck.choose()
    assert step == 2 and ck.unverified == {2}
    run = RunLoop(exp, checkpoints=ck)
    assert run.resume((step, meta)) == (0, 0, None)  # starts over
    assert ck.steps() == [1] and not (directory / "2").exists()
    assert any("is unusable" in m and "skipped and deleted" in m for m in msgs)
    assert np.isnan(run.curves.values["test_error"]).all() and run.stats.resumed_from is None

    def unreadable(step):
        raise ValueError("unreadable array")

    ck.restore_curves = unreadable  # step 1 is not unverified: the run stops with the fix, nothing deleted
    with pytest.raises(UsageError, match="could not be restored .*--restart"):
        run.resume((1, ck.read_meta(1)))
    assert ck.steps() == [1]
    ck.close()


# ------------------------------------------------------------------------------------------------
# per-P training and logged evaluation


def test_train_P_fills_the_P_s_curves_and_stats(exp, ref):
    run = RunLoop(exp)
    events = _events(run)
    states = run.train_P(0, 1, run.init(0))
    assert np.asarray(states.step).tolist() == [4, 4]
    _assert_columns(run.curves.values, ref["curves"], [0, 1])
    (stat,) = run.stats.per_P
    assert stat["P"] == 40 and stat["wall_s"] > stat["compile_s"] >= 0 and stat["img_per_s"] > 0
    assert run.stats.nonfinite == []
    assert [(e["event"], e.get("epoch")) for e in events] == [("epoch", 1), ("log", 1), ("epoch", 2), ("log", 2),
                                                              ("P_done", None)]
    first, last = events[0], events[2]
    assert first["P"] == 40 and first["P_index"] == 0 and first["n_P"] == 1 and first["epochs"] == 2
    assert np.isfinite(first["loss"]) and np.isfinite(last["loss"])
    # the first (compiling) epoch is no throughput: no rate yet; after the last epoch nothing is left
    assert np.isnan(first["img_per_s"]) and np.isnan(first["eta_s"])
    assert last["img_per_s"] == stat["img_per_s"] and last["eta_s"] == 0
    assert events[-1] == {"event": "P_done", "P": 40, "P_index": 0, "n_P": 1, "wall_s": stat["wall_s"]}


def test_train_P_flags_a_diverged_seed_and_keeps_the_other(exp, ref):
    def poison(pi, epoch, states):  # seed 1's weights become NaN after epoch 1
        if epoch != 1:
            return states
        return states.replace(params=jax.tree.map(lambda p: p.at[1].set(jnp.nan), states.params))

    run = RunLoop(exp)
    run.train_P(0, 1, run.init(0), on_epoch=poison)
    assert run.stats.nonfinite == [{"P": 40, "seed": 1}]
    for k, v in run.curves.values.items():
        assert np.isnan(v[0, 1]).all(), k  # NaN from its first evaluation on
        np.testing.assert_array_equal(v[0, 0], ref["curves"][k][0, 0], err_msg=k)


def test_evaluate_writes_exactly_the_logged_column(exp, ref):
    run = RunLoop(exp)
    events = _events(run)
    states = run.init(0)
    states, _ = run.programs["epoch"](states, run.subsets, *run.train_data, np.int32(1))
    states = run.evaluate(0, 1, states)
    assert np.asarray(states.step).tolist() == [2, 2]  # the states come back for the next epoch
    _assert_columns(run.curves.values, ref["curves"], [0])
    assert events == [{"event": "log", "P": 40, "P_index": 0, "epoch": 1,
                       "test_error": float(np.nanmean(ref["curves"]["test_error"][0, :, 0])),
                       "train_error": float(np.nanmean(ref["curves"]["train_error"][0, :, 0]))}]


# ------------------------------------------------------------------------------------------------
# checkpoint policy and stop point


def test_stop_point_saves_after_the_last_epoch_and_when_due(exp, tmp_path):
    ck = Checkpoints(tmp_path / "ck", keep=10)  # no periodic policy
    run = RunLoop(exp, checkpoints=ck)
    events = _events(run)
    states = run.init(0)
    run.stop_point(0, 1, states)  # not due, not the last epoch, no stop: nothing
    run.stop_point(0, 2, states)  # the run's last epoch
    run.stop_point(0, 2, states)  # the same boundary again: saved already
    ck.wait()
    assert ck.steps() == [2]
    assert events == [{"event": "checkpoint", "step": 2, "P": 40, "P_index": 0, "epoch": 2}]
    meta = ck.read_meta(2)
    assert {k: meta[k] for k in ("P_index", "P", "epoch", "epochs", "seeds", "seeds_padded")} == {
        "P_index": 0, "P": 40, "epoch": 2, "epochs": 2, "seeds": 2, "seeds_padded": run.layout.seeds_padded}
    assert meta["config"] == training_fingerprint(exp.cfg) and set(meta["stats"]) == {"per_P", "nonfinite", "wall_s"}
    ck.close()
    due = Checkpoints(tmp_path / "due", keep=10, every_epochs=1)
    RunLoop(exp, checkpoints=due).stop_point(0, 1, states)
    due.close()
    assert due.steps() == [1]


def test_stop_point_on_a_stop_request_saves_then_raises(exp, tmp_path):
    ck = Checkpoints(tmp_path / "ck", keep=10)
    stop = StopFlag()
    run = RunLoop(exp, checkpoints=ck, stop=stop)
    states = run.init(0)
    run.stop_point(0, 1, states)
    assert ck.steps() == []
    stop.request(signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        run.stop_point(0, 1, states)
    assert (e.value.P, e.value.epoch, e.value.exit_code) == (40, 1, 143)
    assert e.value.checkpoint_dir == str(ck.directory)
    assert ck.steps() == [1] and (ck.step_dir(1) / CHECKSUM_FILE).is_file()  # saved and verified before raising
    ck.close()
    bare = RunLoop(exp, stop=stop)  # without checkpoints: stops all the same, nothing saved
    with pytest.raises(Interrupted) as e:
        bare.stop_point(0, 2, states)
    assert (e.value.P, e.value.epoch, e.value.checkpoint_dir) == (40, 2, None)
