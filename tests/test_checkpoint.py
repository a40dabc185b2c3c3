"""Checkpoints, resume and preemption: verified orbax checkpoints, kill -9 / SIGTERM mid-run then rerun
⇒ the final curves are bit for bit those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale.cli import main
from jaxscale.train.checkpoint import CHECKSUM_FILE, CheckpointWarning, Checkpoints, verify
from jaxscale.train.state import TrainState
from scale_helpers import (HERE, assert_bitwise_equal, kill_group, load_curves, reference_run, run_cli,
                           subprocess_env, timed, write_tiny_config)

# ------------------------------------------------------------------------------------------------
# The Checkpoints store on a small pytree (no model, no compilation)


def _state(value: float) -> TrainState:
    return TrainState(params={"w": jnp.full((2, 3, 4), value)}, batch_stats={}, opt_state=({"w": jnp.zeros((2, 3, 4))}, ()),
                      norm_state={"u": jnp.full((2, 3), value)}, key=jnp.zeros((2, 2), jnp.uint32),
                      step=jnp.full((2,), int(value), jnp.int32), nonfinite=jnp.zeros((2,), bool))


def _save_three(directory: Path, warnings_out: list) -> Checkpoints:
    ck = Checkpoints(directory, keep=3, warn=warnings_out.append)
    for step in (1, 2, 3):
        ck.save(step, _state(step), {"test_error": np.full((1, 2, 3), float(step))}, {"epoch": step})
    ck.wait()
    return ck


def _target():
    import jax

    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), _state(0.0))


def test_save_restore_roundtrip_and_checksums(tmp_path):
    msgs = []
    ck = _save_three(tmp_path / "ck", msgs)
    assert ck.steps() == [1, 2, 3] and not msgs
    for s in (1, 2, 3):
        assert verify(ck.step_dir(s)) is None
        assert (ck.step_dir(s) / CHECKSUM_FILE).exists()
    step, meta = ck.choose()
    assert (step, meta) == (3, {"epoch": 3})
    st = ck.restore_state(3, _target())
    np.testing.assert_array_equal(st.params["w"], np.full((2, 3, 4), 3.0))
    np.testing.assert_array_equal(st.step, [3, 3])
    assert st.batch_stats == {} and st.opt_state[1] == ()
    np.testing.assert_array_equal(ck.restore_curves(3)["test_error"], np.full((1, 2, 3), 3.0))
    ck.save(4, _state(4.0), {"test_error": np.zeros((1, 2, 3))}, {"epoch": 4})
    ck.close()
    assert Checkpoints(tmp_path / "ck", keep=3).steps() == [2, 3, 4]  # keep=3: the oldest went


def _largest_file(step_dir: Path) -> Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_file", "no_checksum"])
def test_damaged_latest_checkpoint_is_skipped_for_the_previous_one(tmp_path, damage):
    msgs = []
    ck = _save_three(tmp_path / "ck", msgs)
    victim = _largest_file(ck.step_dir(3))
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "flip":  # same size, one byte changed: only a checksum can tell
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "delete_file":
        victim.unlink()
    else:
        (ck.step_dir(3) / CHECKSUM_FILE).unlink()
    assert verify(ck.step_dir(3)) is not None
    step, meta = ck.choose()
    assert step == 2 and meta == {"epoch": 2}
    assert len(msgs) == 1 and "checkpoint" in msgs[0] and "skipped" in msgs[0] and str(ck.step_dir(3)) in msgs[0]
    assert not ck.step_dir(3).exists()  # deleted: step 3 will be written again by the resumed run
    np.testing.assert_array_equal(ck.restore_state(2, _target()).params["w"], np.full((2, 3, 4), 2.0))
    ck.close()


def test_unverified_checkpoint_used_only_when_nothing_else(tmp_path):
    msgs = []
    ck = Checkpoints(tmp_path / "ck", keep=3, warn=msgs.append)
    ck.save(7, _state(7.0), {"test_error": np.zeros((1, 2, 3))}, {"epoch": 7})
    ck.wait()
    (ck.step_dir(7) / CHECKSUM_FILE).unlink()  # as if killed between orbax's commit and our checksum
    assert ck.choose() == (7, {"epoch": 7})
    assert len(msgs) == 1 and "unverified" in msgs[0]
    ck.close()


def test_interrupted_save_leftovers_are_ignored(tmp_path):
    msgs = []
    ck = _save_three(tmp_path / "ck", msgs)
    ck.close()
    tmp = tmp_path / "ck" / "4.orbax-checkpoint-tmp-123"  # what a writer killed mid-save leaves
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"partial")
    ck = Checkpoints(tmp_path / "ck", keep=3, warn=msgs.append)
    assert ck.choose()[0] == 3 and not msgs
    assert not tmp.exists()  # cleaned up at start
    ck.close()


def test_default_warning_category(tmp_path):
    ck = _save_three(tmp_path / "ck", [])
    ck.warn = Checkpoints(tmp_path / "other", keep=1).warn  # the default: warnings.warn
    (ck.step_dir(3) / CHECKSUM_FILE).write_text("not json")
    with pytest.warns(CheckpointWarning, match="unreadable checksum file"):
        assert ck.choose()[0] == 2
    ck.close()


def test_periodic_policy(tmp_path):
    ck = Checkpoints(tmp_path / "ck", keep=2, every_epochs=3)
    assert [e for e in range(1, 10) if ck.due(e)] == [3, 6, 9]
    ck.every_epochs, ck.every_minutes = 0, 1e-9  # time-based only: always due after any pause
    time.sleep(0.01)
    assert ck.due(1)
    ck.every_minutes = 0
    assert not any(ck.due(e) for e in range(1, 10))
    ck.close()


# ------------------------------------------------------------------------------------------------
# The CLI's handling of an existing run directory (no training: refused before any compilation)


def test_finished_run_directory_refused_without_restart(tmp_path, capsys):
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "curves.npz").write_bytes(b"finished")
    (out / "manifest.json").write_bytes(b"{}")  # written last: marks the run finished
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxscale: error: ") and "already holds a finished run" in err[0]
    assert "--restart" in err[0]
    assert (out / "curves.npz").read_bytes() == b"finished"
    assert sorted(p.name for p in out.iterdir()) == ["curves.npz", "manifest.json"]


@pytest.mark.slow  # the default run keeps test_reliability's refused-resume test (same refusal, directory unchanged)
def test_checkpoints_of_another_config_refused(tmp_path, capsys):
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "run"
    ck = Checkpoints(out / "checkpoints", keep=2)
    ck.save(1, _state(1.0), {"test_error": np.zeros((1, 2, 3))},
            {"P_index": 0, "epoch": 1, "seeds_padded": 3, "config": {"train": {"lr": 1.0}}})
    ck.close()
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different training config" in err and "--restart" in err
    assert (out / "checkpoints" / "1").is_dir()  # nothing deleted without --restart


# ------------------------------------------------------------------------------------------------
# Real runs in subprocesses: interrupted, resumed, compared bit for bit with an uninterrupted run


def _start_slow(cfg: Path, out: Path, env: dict, per_epoch_s: float = 0.5) -> subprocess.Popen:
    cmd = timed([sys.executable, str(HERE / "slow_run.py"), str(per_epoch_s), "run", str(cfg), "--out", str(out),
                 "--quiet"], 240)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_line(proc: subprocess.Popen, wanted: str) -> list[str]:
    """Read stdout up to the line ``wanted`` (the ``timeout`` wrapper bounds the wait: on expiry the
    process dies and stdout closes)."""
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.strip() == wanted:
            return lines
    kill_group(proc)
    raise AssertionError(f"never saw {wanted!r}; got {lines}; stderr: {proc.stderr.read()[-3000:]}")


@pytest.mark.slow  # the SIGTERM resume test in the default run covers resume; this one adds kill -9
def test_kill9_mid_run_then_rerun_gives_bitwise_identical_curves(tmp_path, tmp_path_factory):
    ref = load_curves(reference_run(tmp_path_factory))
    env = subprocess_env(tmp_path_factory)
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "run"
    proc = _start_slow(cfg, out, env)
    # in the second P: the first P's checkpoints exist, a save may be in flight (any point is fair)
    _wait_for_line(proc, "EPOCH 1 3")
    kill_group(proc, signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close(), proc.stderr.close()
    assert not (out / "curves.npz").exists()
    assert any(p.name.isdigit() for p in (out / "checkpoints").iterdir())
    again = run_cli([str(cfg), "--out", str(out)], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint" in again.stderr
    assert_bitwise_equal(load_curves(out), ref)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed_from"]["step"] >= 4  # at least the end of the first P
    assert len(manifest["timing"]["per_P"]) == 2
    assert not (out / "checkpoints").exists()  # results complete: checkpoints removed


def test_sigterm_saves_and_exits_then_truncated_latest_falls_back(tmp_path, tmp_path_factory):
    ref = load_curves(reference_run(tmp_path_factory))
    env = subprocess_env(tmp_path_factory)
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "run"
    proc = _start_slow(cfg, out, env)
    pid = int(_wait_for_line(proc, "EPOCH 0 2")[0].split()[1])  # the first line is "PID <pid>"
    os.kill(pid, signal.SIGTERM)  # jaxscale itself, not the `timeout` wrapper (it would SIGKILL 5 s later)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    msg = [line for line in err.splitlines() if "Resume with" in line]
    assert len(msg) == 1 and "stopped by SIGTERM after epoch 2 of P=40" in msg[0]
    assert f"jaxscale run {cfg} --out {out} --quiet" in msg[0]
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2]  # every epoch (checkpoint.every_epochs = 1), stopped after epoch 2
    ck_dir = out / "checkpoints"
    assert all(verify(ck_dir / str(s)) is None for s in steps)
    assert not (out / "curves.npz").exists()

    victim = _largest_file(ck_dir / "2")
    victim.write_bytes(victim.read_bytes()[:-7])  # a truncated latest checkpoint
    again = run_cli([str(cfg), "--out", str(out), "--quiet"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    warn = [line for line in again.stderr.splitlines() if line.startswith("jaxscale: warning:")]
    assert len(warn) == 1 and f"{ck_dir / '2'} is unusable" in warn[0] and "checksum" in warn[0]
    assert "resuming from checkpoint 1: P=40 (1/2) after epoch 1/4" in again.stderr
    assert_bitwise_equal(load_curves(out), ref)
