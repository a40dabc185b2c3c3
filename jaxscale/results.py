"""The one results format of every experiment: ``curves.npz`` + ``manifest.json``.

``curves.npz`` (``np.load(path, allow_pickle=False)``):

=====================  ===================  ==================================================
key                    shape / dtype        meaning
=====================  ===================  ==================================================
``P``                  [nP] int64           training-set sizes
``seeds``              [nS] int64           seed values
``epochs``             [nT] int64           logged epochs (perceptron: logged GD steps)
``train_error``        [nP, nS, nT] f64     misclassified fraction on the P training samples
``test_error``         [nP, nS, nT] f64     misclassified fraction on the test set
``train_loss``         [nP, nS, nT] f64     mean cross-entropy (nats) on the training samples
``test_loss``          [nP, nS, nT] f64     mean cross-entropy (nats) on the test set
``log_<norm>``         [nP, nS, nT] f64     natural log of each norm (ViT norms overflow float32)
=====================  ===================  ==================================================

NaN marks a value that does not exist (a diverged seed from the step it diverged, an epoch not yet
reached in a partial run). Extra keys are allowed (the perceptron adds ``alpha`` and ``N``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import numpy as np

from jaxscale.errors import UsageError
from jaxscale.io import save_json_atomic, save_npz_atomic

METRICS = ("train_error", "test_error", "train_loss", "test_loss")
AXES = ("P", "seeds", "epochs")


@dataclasses.dataclass
class Curves:
    P: np.ndarray
    seeds: np.ndarray
    epochs: np.ndarray
    values: dict[str, np.ndarray]  # METRICS and log_<norm>, each [nP, nS, nT]
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls, P, seeds, epochs, norm_names) -> "Curves":
        shape = (len(P), len(seeds), len(epochs))
        names = list(METRICS) + [f"log_{n}" for n in norm_names]
        return cls(
            P=np.asarray(P, np.int64),
            seeds=np.asarray(seeds, np.int64),
            epochs=np.asarray(epochs, np.int64),
            values={k: np.full(shape, np.nan) for k in names},
        )

    @property
    def norm_names(self) -> list[str]:
        return [k[4:] for k in self.values if k.startswith("log_")]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"P": self.P, "seeds": self.seeds, "epochs": self.epochs, **self.values, **self.extra}

    def save(self, path: str | Path) -> Path:
        return save_npz_atomic(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | Path) -> "Curves":
        path = Path(path)
        if path.is_dir():
            path = path / "curves.npz"
        if not path.is_file():
            raise UsageError(f"{path}: no such results file: pass a run directory or its curves.npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as e:  # a truncated or foreign file
            raise UsageError(f"{path}: not a readable .npz file ({type(e).__name__}): re-run or re-copy it") from None
        return cls.from_arrays(data, source=str(path))

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray], source: str = "curves") -> "Curves":
        missing = [k for k in AXES + METRICS if k not in data]
        if missing:
            raise UsageError(f"{source}: missing key {missing[0]!r}: not a jaxscale curves.npz (see the README's results format)")
        shape = (len(data["P"]), len(data["seeds"]), len(data["epochs"]))
        values, extra = {}, {}
        for k, v in data.items():
            if k in AXES:
                continue
            if k in METRICS or k.startswith("log_"):
                if v.shape != shape:
                    raise UsageError(f"{source}: {k} has shape {v.shape}, expected {shape} = (P, seeds, epochs)")
                values[k] = v
            else:
                extra[k] = v
        return cls(P=data["P"], seeds=data["seeds"], epochs=data["epochs"], values=values, extra=extra)


def write_manifest(path: str | Path, manifest: Mapping) -> Path:
    return save_json_atomic(path, dict(manifest))


def environment_info() -> dict:
    """Package versions and devices, for the manifest."""
    import importlib.metadata as md
    import platform

    import jax

    versions = {}
    for pkg in ("jaxscale", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "numpy", "scipy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    devices = jax.devices()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
        "process_count": jax.process_count(),
    }
