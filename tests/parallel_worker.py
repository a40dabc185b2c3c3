"""Train one tiny experiment on several device layouts in ONE process (fake CPU devices) and save the
curves, for tests/test_parallel.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/parallel_worker.py OUT.npz RUN [RUN ...]

RUN is a layout name of ``LAYOUTS``, optionally prefixed ``nan-`` to make seed 2 diverge: its params
are set to NaN after training epoch 2 (through the public ``on_epoch`` hook). The output holds
``<RUN>:<metric>`` curves, ``<RUN>:nonfinite`` (diverged seed values) and ``<RUN>:layout`` (text).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.config import ParallelConfig, config_from_dict
from jaxscale.data import load_dataset
from jaxscale.train import build_experiment, run_experiment
from jaxscale.train.sharding import plan_layout

# P=70 with batch 32: two full batches and a kept partial one of 6 — split in 2 for data=2, computed
# whole (gradient / D before the psum) for data=4: both data-parallel code paths.
CONFIG = {
    "name": "parallel",
    "model": {"family": "cnn", "preset": "tiny"},
    "data": {"dataset": "digits"},
    "train": {"P": [70], "seeds": 3, "epochs": 2, "batch_size": 32, "log_points": 2},
}

# name: (parallel config, number of devices)
LAYOUTS = {
    "one": (ParallelConfig(data=1), 1),
    "s2": (ParallelConfig(data=1), 2),
    "s4": (ParallelConfig(data=1), 4),
    "d2": (ParallelConfig(data=2), 2),
    "d4": (ParallelConfig(data=4), 4),
    "2x2": (ParallelConfig(data=2), 4),
    "pmap-s2": (ParallelConfig(data=1, api="pmap"), 2),
    "pmap-d2": (ParallelConfig(data=2, api="pmap"), 2),
}

DIVERGING_SEED, DIVERGE_AFTER_EPOCH = 2, 2


def poison(pi: int, epoch: int, states):
    """Seed 2's weights become NaN after epoch 2, as after an exploding update."""
    if epoch != DIVERGE_AFTER_EPOCH:
        return states
    params = jax.tree.map(lambda p: p.at[DIVERGING_SEED].set(jnp.nan), states.params)
    return states.replace(params=params)


def main(out: str, runs: list[str]) -> None:
    exp = build_experiment(config_from_dict(CONFIG), load_dataset("digits"))
    arrays = {}
    for run in runs:
        nan = run.startswith("nan-")
        par, n = LAYOUTS[run.removeprefix("nan-")]
        layout = plan_layout(par, CONFIG["train"]["seeds"], jax.devices()[:n])
        curves, stats = run_experiment(exp, layout=layout, on_epoch=poison if nan else None)
        for k, v in curves.values.items():
            arrays[f"{run}:{k}"] = v
        arrays[f"{run}:nonfinite"] = np.array([d["seed"] for d in stats.nonfinite], np.int64)
        arrays[f"{run}:layout"] = np.array(layout.describe())
        print(f"{run}: {layout.describe()}", flush=True)
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
