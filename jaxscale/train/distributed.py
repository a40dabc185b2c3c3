"""Hosts: joining a multi-process JAX cluster, and the few host-level agreements a run needs.

``initialize`` must run before anything touches a JAX device. Its parameters come from, first match
wins: the flags ``--coordinator HOST:PORT --num-processes N --process-id I`` (all three); the
environment ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``; ``--distributed``
alone: JAX's cluster auto-detection (SLURM, Cloud TPU pods, Open MPI, Kubernetes). Without any of
them the run is single-process. Every process builds the same mesh over the global device list and
computes only the seeds on its own devices; process 0 alone writes results files (every process
writes its own shards of each checkpoint), so the run directory must be on a filesystem all hosts share.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Mapping, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxscale.errors import UsageError


DEFAULT_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How to join the cluster; ``None`` fields are left to JAX's auto-detection."""

    coordinator: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    auto: bool = False
    #: seconds to wait for the coordinator and the other processes before giving up
    timeout_s: int = DEFAULT_TIMEOUT_S


def cluster_spec(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                 process_id: Optional[int] = None, auto: bool = False, env: Optional[Mapping[str, str]] = None,
                 timeout_s: int = DEFAULT_TIMEOUT_S) -> Optional[ClusterSpec]:
    """Resolve flags and environment into a :class:`ClusterSpec`, or ``None`` for a single-process run.
    Raises :class:`UsageError` for an incomplete or inconsistent specification."""
    env = os.environ if env is None else env
    if not 0 < timeout_s <= 86400:
        raise UsageError(f"--coordinator-timeout {timeout_s}: give seconds from 1 to 86400")
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given):
        if not all(given):
            raise UsageError("multi-host flags are incomplete: give all of --coordinator HOST:PORT, "
                             "--num-processes N and --process-id I (or --distributed to auto-detect)")
        spec = ClusterSpec(coordinator, num_processes, process_id, timeout_s=timeout_s)
    elif env.get("JAX_COORDINATOR_ADDRESS") and (env.get("JAX_NUM_PROCESSES") or env.get("JAX_PROCESS_ID")):
        try:
            spec = ClusterSpec(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"]),
                               timeout_s=timeout_s)
        except (KeyError, ValueError):
            raise UsageError("JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES / JAX_PROCESS_ID are missing "
                             "or not integers: set all three, or unset them for a single-process run") from None
    else:
        return ClusterSpec(auto=True, timeout_s=timeout_s) if auto else None
    host_port(spec.coordinator)
    if spec.num_processes < 1 or not 0 <= spec.process_id < spec.num_processes:
        raise UsageError(f"process id {spec.process_id} with {spec.num_processes} processes: ids run from 0 to "
                         f"num_processes - 1")
    return spec


def host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) as (host, port), or :class:`UsageError`."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"coordinator address {address!r} is not HOST:PORT with a port from 1 to 65535: write it "
                         "as e.g. 10.0.0.1:1234")
    return host, int(port)


def _wait_for_coordinator(spec: ClusterSpec) -> None:
    """Block until the coordinator accepts connections, or raise UsageError after ``spec.timeout_s``.
    jax.distributed aborts the whole process (no Python exception) when it cannot connect in time,
    so a process other than 0 checks first."""
    host, port = host_port(spec.coordinator)
    try:
        socket.getaddrinfo(host, port)
    except OSError:
        raise UsageError(f"coordinator host {host!r} cannot be resolved: check --coordinator HOST:PORT") from None
    deadline = time.monotonic() + spec.timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, spec.timeout_s)):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise UsageError(f"no coordinator answered at {spec.coordinator} within {spec.timeout_s} s: start "
                                 "process 0 first, check the address and firewall, or raise --coordinator-timeout") from None
            time.sleep(0.5)


def initialize(spec: Optional[ClusterSpec]) -> None:
    """Join the cluster described by ``spec`` (no-op for ``None``). Must precede any device use."""
    if spec is None:
        return
    if not spec.auto and spec.process_id != 0:
        _wait_for_coordinator(spec)
    try:  # None parameters (``auto``) are JAX's auto-detection
        jax.distributed.initialize(coordinator_address=spec.coordinator, num_processes=spec.num_processes,
                                   process_id=spec.process_id, initialization_timeout=spec.timeout_s)
    except (ValueError, RuntimeError) as e:
        where = "auto-detection (--distributed)" if spec.auto else f"coordinator {spec.coordinator}"
        raise UsageError(f"could not join the multi-host cluster via {where}: {e}: check the address, "
                         "the process count and that every process was started") from None


def is_primary() -> bool:
    """Process 0: the one that writes results files."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process (e.g. a preemption signal that reached only some of
    them): all processes must stop at the same epoch, or the next collective would hang."""
    many = jax.process_count() > 1
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32)))) if many else bool(flag)


def broadcast_int(value: int) -> int:
    """Process 0's ``value`` on every process."""
    many = jax.process_count() > 1
    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)) if many else value)
