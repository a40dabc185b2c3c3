"""Hosts: two local processes joined by ``jax.distributed`` (CPU backend, gloo collectives, loopback)
train the tiny experiment as one run and write the same curves as one process; cluster flags/env."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from jaxscale.errors import UsageError
from jaxscale.train.distributed import ClusterSpec, cluster_spec
from scale_helpers import (HERE, REPO, assert_bitwise_equal, free_port, kill_group, load_curves, reference_run,
                           subprocess_env, timed, write_tiny_config)

SECONDS = 300


def _launch(cmd_tail: list[str], env: dict, port: int, slow: float = 0.0) -> list[subprocess.Popen]:
    """Process 0 gets the cluster as flags, process 1 through JAX_* environment variables."""
    procs = []
    for pid in (0, 1):
        e = dict(env)
        if slow:
            head = [sys.executable, str(HERE / "slow_run.py"), str(slow), "run"]
        else:
            head = [sys.executable, "-m", "jaxscale", "run"]
        args = list(cmd_tail)
        if pid == 0:
            args += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0"]
        else:
            e.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1")
        procs.append(subprocess.Popen(timed(head + args, SECONDS), env=e, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            so, se = p.communicate(timeout=SECONDS + 30)
            out.append((p.returncode, so, se))
    finally:
        for p in procs:
            kill_group(p)
    return out


@pytest.mark.slow  # two JAX processes and a reference run: the slow CI step runs every multi-host test
def test_two_processes_equal_one_process(tmp_path, tmp_path_factory):
    ref = load_curves(reference_run(tmp_path_factory))
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "run"
    (r0, so0, se0), (r1, so1, se1) = _finish(
        _launch([str(cfg), "--out", str(out), "--quiet"], subprocess_env(tmp_path_factory), free_port()))
    assert r0 == 0 and r1 == 0, se0[-3000:] + se1[-3000:]
    assert "3 seeds on 2 device(s) [jit, seed-parallel: 2 group(s) x 2 seed(s), 1 padding seed(s)]" in se0
    assert "Results:" in so0 and "Results:" not in so1  # process 0 is the only writer and reporter
    assert_bitwise_equal(load_curves(out), ref)
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_two_processes_preempted_on_one_host_stop_together_and_resume(tmp_path, tmp_path_factory):
    """SIGTERM reaches only process 1: both stop after the same epoch with a checkpoint, and a rerun of
    both resumes and ends with the one-process curves."""
    ref = load_curves(reference_run(tmp_path_factory))
    env = subprocess_env(tmp_path_factory)
    cfg = write_tiny_config(tmp_path)
    out = tmp_path / "run"
    procs = _launch([str(cfg), "--out", str(out), "--quiet"], env, free_port(), slow=0.5)
    pid1 = None
    for line in procs[1].stdout:
        if line.startswith("PID "):
            pid1 = int(line.split()[1])
        if line.strip() == "EPOCH 0 2":
            break
    assert pid1 is not None
    os.kill(pid1, signal.SIGTERM)
    (r0, _, se0), (r1, _, se1) = _finish(procs)
    assert r0 == r1 == 128 + signal.SIGTERM, se0[-3000:] + se1[-3000:]
    assert "Resume with: jaxscale run" in se0 and "--num-processes 2 --process-id 0" in se0
    assert any(p.name.isdigit() for p in (out / "checkpoints").iterdir())
    results = _finish(_launch([str(cfg), "--out", str(out), "--quiet"], env, free_port()))
    assert [r for r, _, _ in results] == [0, 0], results[0][2][-3000:] + results[1][2][-3000:]
    assert "resuming from checkpoint" in results[0][2]
    assert_bitwise_equal(load_curves(out), ref)


# ------------------------------------------------------------------------------------------------
# Where the cluster comes from (no cluster is joined here)


def test_cluster_spec_sources():
    assert cluster_spec(env={}) is None
    assert cluster_spec("10.0.0.1:1234", 4, 3, env={}) == ClusterSpec("10.0.0.1:1234", 4, 3)
    env = {"JAX_COORDINATOR_ADDRESS": "h:99", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert cluster_spec(env=env) == ClusterSpec("h:99", 2, 1)
    assert cluster_spec("a:1", 2, 0, env=env) == ClusterSpec("a:1", 2, 0)  # flags win
    assert cluster_spec(auto=True, env={}) == ClusterSpec(auto=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(coordinator="h:1", num_processes=2), "incomplete"),
    (dict(coordinator="h", num_processes=2, process_id=0), "not HOST:PORT"),
    (dict(coordinator="nohost:abc", num_processes=2, process_id=0), "not HOST:PORT"),
    (dict(coordinator="h:0", num_processes=2, process_id=0), "not HOST:PORT"),
    (dict(coordinator="h:70000", num_processes=2, process_id=0), "not HOST:PORT"),
    (dict(coordinator=":123", num_processes=2, process_id=0), "not HOST:PORT"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), "ids run from 0"),
    (dict(env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}), "not integers"),
])
def test_cluster_spec_errors(kwargs, match):
    kwargs.setdefault("env", {})
    with pytest.raises(UsageError, match=match):
        cluster_spec(**kwargs)
