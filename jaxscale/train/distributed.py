"""Hosts: joining a multi-process JAX cluster, and the few host-level agreements a run needs.

``initialize`` must run before anything touches a JAX device. Where its parameters come from, first
match wins:

1. flags: ``--coordinator HOST:PORT --num-processes N --process-id I`` (all three);
2. the environment: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``;
3. ``--distributed`` alone: JAX's cluster auto-detection (SLURM, Cloud TPU pods, Open MPI, Kubernetes).

Without any of them the run is single-process. Every process then sees the global device list
(``jax.devices()``), builds the same mesh over it and computes only the seeds on its own devices;
process 0 is the only one that writes results (checkpoints are written by all, each its own shards,
through orbax). The run directory must be on a filesystem shared by all hosts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional

import numpy as np

from jaxscale.errors import UsageError


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How to join the cluster; ``None`` fields are left to JAX's auto-detection."""

    coordinator: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    auto: bool = False


def cluster_spec(
    coordinator: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    auto: bool = False,
    env: Optional[Mapping[str, str]] = None,
) -> Optional[ClusterSpec]:
    """Resolve flags and environment into a :class:`ClusterSpec`, or ``None`` for a single-process run.
    Raises :class:`UsageError` for an incomplete or inconsistent specification."""
    env = os.environ if env is None else env
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given):
        if not all(given):
            raise UsageError("multi-host flags are incomplete: give all of --coordinator HOST:PORT, "
                             "--num-processes N and --process-id I (or --distributed to auto-detect)")
        spec = ClusterSpec(coordinator, num_processes, process_id)
    elif env.get("JAX_COORDINATOR_ADDRESS") and (env.get("JAX_NUM_PROCESSES") or env.get("JAX_PROCESS_ID")):
        try:
            spec = ClusterSpec(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"]))
        except (KeyError, ValueError):
            raise UsageError("JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES / JAX_PROCESS_ID are missing "
                             "or not integers: set all three, or unset them for a single-process run") from None
    elif auto:
        return ClusterSpec(auto=True)
    else:
        return None
    if ":" not in spec.coordinator:
        raise UsageError(f"coordinator address {spec.coordinator!r} has no port: write it as HOST:PORT, e.g. 10.0.0.1:1234")
    if spec.num_processes < 1 or not 0 <= spec.process_id < spec.num_processes:
        raise UsageError(f"process id {spec.process_id} with {spec.num_processes} processes: ids run from 0 to "
                         f"num_processes - 1")
    return spec


def initialize(spec: Optional[ClusterSpec]) -> None:
    """Join the cluster described by ``spec`` (no-op for ``None``). Must precede any device use."""
    if spec is None:
        return
    import jax

    try:
        if spec.auto:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator_address=spec.coordinator, num_processes=spec.num_processes,
                                       process_id=spec.process_id)
    except (ValueError, RuntimeError) as e:
        where = "auto-detection (--distributed)" if spec.auto else f"coordinator {spec.coordinator}"
        raise UsageError(f"could not join the multi-host cluster via {where}: {e}: check the address, "
                         "the process count and that every process was started") from None


def is_primary() -> bool:
    """Process 0: the one that writes results files."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op for one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process (e.g. a preemption signal that reached only some of
    them): all processes must stop at the same epoch, or the next collective would hang."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def broadcast_int(value: int) -> int:
    """Process 0's ``value`` on every process."""
    import jax

    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))
