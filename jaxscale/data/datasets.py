"""The in-memory dataset type and the one entry point that loads a dataset by name.

Every dataset jaxscale trains on is small enough to live in host memory as uint8 images (CIFAR-10
train: 50000×32×32×3 = 150 MB; a user's own float images are float32) and, later, on the device; the training loop samples, shuffles and
augments it there. So a dataset is just four arrays plus how to scale them to [0, 1].

Sources (loaded lazily, so ``import jaxscale.data`` stays cheap):

* ``digits``  — scikit-learn's bundled 8×8 handwritten digits (offline; :mod:`jaxscale.data.digits`);
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` — tensorflow-datasets ArrayRecord copies in
  a tfds ``data_dir``, read without TensorFlow (:mod:`jaxscale.data.tfds_source`). Never downloaded
  implicitly: ``jaxscale data download NAME`` (or ``download=True``) does it, and
  ``jaxscale data prepare NAME --from DIR`` does it from raw files already on disk;
* ``npz`` — your own arrays in one ``.npz`` file (:mod:`jaxscale.data.npz_source`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxscale.errors import UsageError

#: the datasets that come through tensorflow-datasets
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
#: the datasets known by name (``digits`` ships with scikit-learn: nothing to download)
NAMED_DATASETS = ("digits", *TFDS_DATASETS)
#: every value of ``data.dataset``: a named dataset, or ``npz`` (your own arrays, ``data.path``)
DATASETS = (*NAMED_DATASETS, "npz")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value / hash
class ArrayDataset:
    """A labelled image dataset held in host memory.

    Attributes:
      name: dataset name (e.g. ``"mnist"``).
      x_train: uint8 (or float32) ``[N, H, W, C]`` training images (NHWC, raw pixel values).
      y_train: int32 ``[N]`` training labels in ``[0, num_classes)``.
      x_test: uint8 ``[M, H, W, C]`` test images.
      y_test: int32 ``[M]`` test labels.
      num_classes: number of classes.
      pixel_max: the value of a full-intensity pixel, so ``x / pixel_max`` lies in [0, 1]
        (255.0 for tfds images, 16.0 for scikit-learn's digits, 1.0 for float images).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    pixel_max: float

    def __post_init__(self) -> None:
        # Catch a malformed dataset here, once, rather than as a shape error deep inside a jit.
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not (isinstance(x, np.ndarray) and x.dtype in (np.uint8, np.float32) and x.ndim == 4):
                raise ValueError(f"{self.name}: x_{split} must be a uint8 or float32 [N, H, W, C] numpy array, "
                                 f"got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
            if not (isinstance(y, np.ndarray) and y.dtype == np.int32 and y.shape == (x.shape[0],)):
                raise ValueError(f"{self.name}: y_{split} must be an int32 [{x.shape[0]}] numpy array, "
                                 f"got {getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"{self.name}: y_{split} has labels outside [0, {self.num_classes})")
        if self.x_train.dtype != self.x_test.dtype:
            raise ValueError(f"{self.name}: train images {self.x_train.dtype} and test images {self.x_test.dtype} "
                             f"differ in dtype")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images {self.x_train.shape[1:]} and test images "
                             f"{self.x_test.shape[1:]} differ in shape")
        if not self.pixel_max > 0:
            raise ValueError(f"{self.name}: pixel_max must be positive, got {self.pixel_max}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)

    @property
    def n_train(self) -> int:
        """Number of training images N."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test images M."""
        return int(self.x_test.shape[0])


def check_name(name: str) -> str:
    """Return ``name`` if it is a known dataset, else raise a one-line :class:`UsageError`."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return name


def load_dataset(name: str, data_dir: Optional[str] = None, *, download: bool = False,
                 path: Optional[str] = None) -> ArrayDataset:
    """Load dataset ``name`` into host memory.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: tfds data directory for the tfds datasets; ``None`` means ``$TFDS_DATA_DIR``
        if set, else tfds' default ``~/tensorflow_datasets``. Ignored for ``digits`` and ``npz``.
      download: download and prepare the tfds dataset first if it is not prepared yet (explicit
        opt-in; without it a missing dataset raises at once).
      path: the ``.npz`` file of ``npz`` (see :mod:`jaxscale.data.npz_source`).

    Returns:
      The :class:`ArrayDataset`.

    Raises:
      DataMissingError: the tfds dataset is not prepared in the data_dir and ``download`` is False
        (raised immediately, without touching the network; the message says how to get it).
      UsageError: unknown name, a prepared copy that cannot be read without TensorFlow, or an
        ``npz`` file that does not fit the format.
    """
    check_name(name)
    if name == "npz":
        from jaxscale.data.npz_source import load_npz_dataset

        return load_npz_dataset(path or "")
    if name == "digits":
        from jaxscale.data.digits import load_digits_dataset

        return load_digits_dataset()
    from jaxscale.data import tfds_source

    if download:
        tfds_source.download_dataset(name, data_dir)
    return tfds_source.load_tfds_dataset(name, data_dir)
