"""Shared pieces of the benchmarks: a bench-sized experiment, timing, and the device's matmul peak.

Benchmarks use the real model, step and programs of a run. Only the *pixels* may be synthetic: for
MNIST/CIFAR shapes (no download here) images are random uint8 of the dataset's exact shape and class
count — throughput does not depend on pixel values. ``digits`` uses the real bundled dataset.
"""

from __future__ import annotations

import functools
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
                 ensemble: str = "auto", norms_every: int = 1, preset: Optional[str] = None,
                 conv_impl: str = "auto", **train):
    """A validated Config for a benchmark of ``model`` on ``dataset`` (protocol preset of that dataset).

    ``ensemble``: ``parallel.ensemble``, which the run's seed batching follows."""
    raw = {
        "name": f"bench-{model}-{dataset}",
        "model": {"family": model, "preset": preset or dataset, "conv_impl": conv_impl},
        "data": {"dataset": dataset},
        "train": {"P": [P], "seeds": seeds, "epochs": 1, "precision": precision, **train},
        "norms": {"every": norms_every},
        "parallel": {"ensemble": ensemble},
    }
    return config_from_dict(raw, source="bench")


def build_bench_experiment(cfg, dataset_name: str, n_train: int):
    from jaxscale.train.loop import build_experiment

    return build_experiment(cfg, synthetic_dataset(dataset_name, n_train))


def matmul_peak_runner(precision: str = "fp32", sizes=(1024, 2048)) -> Callable[[], dict]:
    """A zero-argument function that times one square matmul of every size in ``sizes`` (and, on CPU in
    fp32, numpy's BLAS too) and returns ``{source: FLOP/s}`` — the device's matmul rate in
    ``precision``, to be measured in the same rounds as what it normalises.

    The products use the model's precision (:data:`jaxscale.models.registry.PRECISION_SETTINGS`): fp32
    HIGHEST (true fp32 on GPUs), tf32 TF32, bf16 bf16 operands. numpy is included so that an XLA:CPU
    matmul slower than the machine's BLAS cannot flatter the MFU."""
    from jaxscale.models.registry import PRECISION_SETTINGS

    dtype, matmul = PRECISION_SETTINGS[precision]
    progs = {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
        f = jax.jit(functools.partial(jnp.matmul, precision=matmul))
        jax.block_until_ready(f(a, b))  # compile outside the timing
        progs[f"xla_{n}"] = (n, functools.partial(f, a, b))
        if jax.default_backend() == "cpu" and precision == "fp32":
            an = np.asarray(a, np.float32)
            bn = np.asarray(b, np.float32)
            progs[f"numpy_{n}"] = (n, functools.partial(np.matmul, an, bn))

    def run() -> dict:
        out = {}
        for k, (n, f) in progs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            out[k] = 2.0 * n**3 / (time.perf_counter() - t0)
        return out

    return run


def machine_info() -> dict:
    """Where a benchmark ran: backend, device kind and count, CPU count, load average, versions."""
    import os
    import platform

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "n_devices": jax.device_count(), "cpu_count": os.cpu_count(), "load_average_1_5_15": load,
            "machine": platform.machine(), "jax": jax.__version__}


def epoch_runner(exp, P: int, group="plan"):
    """A zero-argument function running one training epoch of ``exp``'s seeds at size ``P`` with the
    run's programs (``group="plan"``: the run's own seed batching) or those of another ``group``
    (:func:`jaxscale.train.loop.build_programs`), state carried across calls; returns the epoch's
    metrics."""
    from jaxscale.train.loop import build_programs, make_programs, stacked_seed_keys

    ds, layout = exp.dataset, exp.layout
    progs = make_programs(exp) if group == "plan" else build_programs(exp, layout, group)
    keys = {k: layout.put_seeded(np.asarray(v)) for k, v in stacked_seed_keys(range(layout.seeds_padded)).items()}
    subs = progs["subsets"](keys["data"], ds.n_train, P)
    x, y = layout.put_replicated(ds.x_train), layout.put_replicated(ds.y_train.astype(np.int32))
    box = {"states": progs["init"](keys["init"], keys["train"], keys["norms"]), "epoch": 0}

    def run():
        box["epoch"] += 1
        box["states"], m = progs["epoch"](box["states"], subs, x, y, np.int32(box["epoch"]))
        return m

    return run
