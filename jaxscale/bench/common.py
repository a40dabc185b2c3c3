"""Shared pieces of the benchmarks: a bench-sized experiment, timing, and the device's matmul peak.

Benchmarks use the real model, step and programs of a run. Only the *pixels* may be synthetic: for
MNIST/CIFAR shapes (no download here) images are random uint8 of the dataset's exact shape and class
count — throughput does not depend on pixel values. ``digits`` uses the real bundled dataset.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxscale.config import config_from_dict
from jaxscale.errors import UsageError

#: (H, W, C), classes, n_train, n_test of the datasets jaxscale knows
DATASET_SHAPES = {
    "mnist": ((28, 28, 1), 10, 60000, 10000),
    "cifar10": ((32, 32, 3), 10, 50000, 10000),
    "cifar100": ((32, 32, 3), 100, 50000, 10000),
}


def synthetic_dataset(name: str, n_train: int, n_test: int = 1000, seed: int = 0):
    """Random uint8 images with the exact shape/classes of ``name`` (an :class:`ArrayDataset`)."""
    from jaxscale.data import ArrayDataset, load_dataset

    if name == "digits":
        return load_dataset("digits")
    if name not in DATASET_SHAPES:
        raise UsageError(f"--dataset {name!r}: choose one of digits, {', '.join(DATASET_SHAPES)}")
    shape, classes, _, _ = DATASET_SHAPES[name]
    rng = np.random.default_rng(seed)
    return ArrayDataset(
        name=f"{name}-synthetic",
        x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        y_train=rng.integers(0, classes, n_train).astype(np.int32),
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        y_test=rng.integers(0, classes, n_test).astype(np.int32),
        num_classes=classes,
        pixel_max=255.0,
    )


def bench_config(model: str, dataset: str, *, seeds: int, P: int, precision: str = "fp32",
                 ensemble: str = "auto", norms_every: int = 1, preset: Optional[str] = None, **train):
    """A validated Config for a benchmark of ``model`` on ``dataset`` (protocol preset of that dataset)."""
    raw = {
        "name": f"bench-{model}-{dataset}",
        "model": {"family": model, "preset": preset or dataset},
        "data": {"dataset": dataset},
        "train": {"P": [P], "seeds": seeds, "epochs": 1, "precision": precision, **train},
        "norms": {"every": norms_every},
        "parallel": {"ensemble": ensemble},
    }
    return config_from_dict(raw, source="bench")


def build_bench_experiment(cfg, dataset_name: str, n_train: int):
    from jaxscale.train.loop import build_experiment

    return build_experiment(cfg, synthetic_dataset(dataset_name, n_train))


@dataclasses.dataclass
class Timing:
    compile_s: float
    times_s: list

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def time_fn(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median wall time of ``fn()`` (blocking on its result); the first call's time is compile+run."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return Timing(compile_s, times)


def matmul_peak_flops(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on the default device, measured now (the
    reference for MFU, measured in the same run as what it normalises)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: a @ b)
    t = time_fn(lambda: f(a, b), repeats=repeats)
    return 2.0 * n**3 / t.median_s
