"""Shared by test_parallel / test_checkpoint / test_distributed: a tiny experiment, subprocess launching
with hard timeouts, and one XLA compilation cache per test session.

Compilation dominates these tests on a 2-core CPU (≈ 20 s per distinct program set, a few ms per
epoch), and device counts / multiple processes need fresh interpreters. So every subprocess shares a
persistent compilation cache in the session's pytest temp dir: a program compiled by one subprocess
is loaded, not recompiled, by the next (it is the same executable, so results are unaffected).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# P=40: one batch of 32 + a kept partial batch of 8; P=70: two of 32 + a partial batch of 6
# (6 is split across 2 data shards, computed whole on 4 — both data-parallel code paths).
TINY_TOML = """name = "tiny"
[model]
family = "cnn"
preset = "tiny"
[data]
dataset = "digits"
[train]
P = [40, 70]
seeds = 3
epochs = 4
batch_size = 32
log_points = 4
[checkpoint]
every_epochs = 1
keep = 3
"""


def write_tiny_config(directory: Path) -> Path:
    path = Path(directory) / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


def session_dir(tmp_path_factory, name: str) -> Path:
    """A directory shared by every test of this pytest session (created on first use)."""
    d = tmp_path_factory.getbasetemp() / name
    d.mkdir(exist_ok=True)
    return d


def subprocess_env(tmp_path_factory, devices: Optional[int] = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(session_dir(tmp_path_factory, "xla-cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("XLA_FLAGS", None)
    if devices:
        # must be set before JAX initialises, hence a subprocess
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def timed(cmd: Sequence[str], seconds: int) -> list[str]:
    """``cmd`` under ``timeout -k 5``: a hung JAX process ignores SIGTERM (TOOLCHAIN.md), so SIGKILL
    follows 5 s later."""
    return ["timeout", "-k", "5", str(seconds), *cmd]


def run_python(args: Sequence[str], env: dict, seconds: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(timed([sys.executable, *args], seconds), env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=seconds + 20)
    assert proc.returncode != 124, f"timed out after {seconds} s:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def run_cli(args: Sequence[str], env: dict, seconds: int = 240) -> subprocess.CompletedProcess:
    return run_python(["-m", "jaxscale", "run", *args], env, seconds)


def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted one-process, one-device run of the tiny config (made once per session)."""
    base = session_dir(tmp_path_factory, "reference")
    out = base / "run"
    if not (out / "curves.npz").exists():
        cfg = write_tiny_config(base)
        proc = run_cli([str(cfg), "--out", str(out), "--quiet"], subprocess_env(tmp_path_factory))
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def load_curves(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(Path(run_dir) / "curves.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # NaN == NaN here, values bit for bit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal ``proc`` (a ``timeout`` wrapper started with ``start_new_session``) and its child."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
