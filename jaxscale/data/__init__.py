"""Datasets, on-device sampling and augmentation.

* :func:`load_dataset` / :class:`ArrayDataset` — ``digits`` (offline, bundled with scikit-learn),
  ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` (tensorflow-datasets ArrayRecord copies,
  read without TensorFlow, never downloaded implicitly; :func:`download_dataset` prepares one,
  :func:`prepare_from_files` from raw files on disk), ``npz`` (your own arrays).
* :mod:`jaxscale.data.sampling` — nested per-seed P-subsets, per-epoch shuffles, batch indices.
* :mod:`jaxscale.data.transforms` — [0, 1] scaling, normalisation, crop+flip and affine
  augmentation as jnp ops.
* :mod:`jaxscale.data.presets` — the protocol's normalisation/augmentation per family × dataset.

Importing this package is cheap: tfds, scikit-learn and JAX load only when used.
"""

from jaxscale.data.datasets import DATASETS, TFDS_DATASETS, ArrayDataset, load_dataset
from jaxscale.errors import DataMissingError


def download_dataset(name: str, data_dir: str | None = None) -> str:
    """Download and prepare tfds dataset ``name`` in ``data_dir`` (see
    :func:`jaxscale.data.tfds_source.download_dataset`); returns the prepared folder."""
    from jaxscale.data import tfds_source

    return tfds_source.download_dataset(name, data_dir)


def prepare_from_files(name: str, src_dir: str, data_dir: str | None = None) -> str:
    """Prepare tfds dataset ``name`` in ``data_dir`` from the raw files in ``src_dir``, verified
    against tfds' checksums (see :func:`jaxscale.data.tfds_source.prepare_from_files`)."""
    from jaxscale.data import tfds_source

    return tfds_source.prepare_from_files(name, src_dir, data_dir)


__all__ = ["DATASETS", "TFDS_DATASETS", "ArrayDataset", "DataMissingError", "download_dataset", "load_dataset",
           "prepare_from_files"]
