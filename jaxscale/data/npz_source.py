"""Your own arrays: a dataset from one ``.npz`` file (``data.dataset = "npz"``, ``data.path = FILE``).

The file holds four arrays, written e.g. with
``np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)``:

* ``x_train`` ``[N, H, W, C]`` or ``[N, H, W]`` (one channel), ``x_test`` the same ``[H, W(, C)]``:
  uint8 (or any integer type with values in 0..255) raw pixels, scaled by 1/255 like tfds images;
  or floating point, used as they are (any scale: the normalisation takes care of it);
* ``y_train`` ``[N]``, ``y_test`` ``[M]``: integer class labels in ``0..K-1``; K, the class count, is
  ``max label + 1`` over both splits.

Everything is checked here, once, with a one-line :class:`UsageError` naming the array and the fix
(missing keys, shapes, dtypes, channel-first layouts, label range, NaN/inf pixels). The model is then
sized from the data (input shape, class count); the normalisation defaults to the training split's
per-channel mean and std (:func:`channel_stats`), and no augmentation.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from jaxscale.data.datasets import ArrayDataset
from jaxscale.errors import UsageError

#: the arrays a dataset file must hold
KEYS = ("x_train", "y_train", "x_test", "y_test")
_RAW_MAX = 255


def load_npz_dataset(path: str) -> ArrayDataset:
    """Load and validate a dataset file (see the module docstring).

    Returns:
      :class:`ArrayDataset` named after the file, uint8 images with ``pixel_max`` 255, or float32
      images with ``pixel_max`` 1.

    Raises:
      UsageError: unreadable file or any array that does not fit the format.
    """
    where = f"data.path {path}"
    if not path:
        raise UsageError("data.dataset = 'npz' needs data.path: the .npz file with x_train, y_train, x_test, y_test")
    if not os.path.isfile(path):
        raise UsageError(f"{where}: no such file; fix: pass the path of an .npz file written with np.savez")
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle
        raise UsageError(f"{where}: not a readable .npz file (an npz is a zip archive of .npy arrays); "
                         f"fix: write it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise UsageError(f"{where}: missing array(s) {', '.join(missing)} (has: {', '.join(f.files) or 'none'}); "
                                 f"fix: save x_train, y_train, x_test, y_test with np.savez")
            arrays = {k: f[k] for k in KEYS}
    except UsageError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        # ValueError: object arrays (pickles are refused) or a damaged member.
        why = "it holds object arrays (pickled data)" if "pickle" in str(err) else "not a readable .npz file"
        raise UsageError(f"{where}: {why}; fix: write plain numeric arrays with np.savez") from None
    xs = {s: _images(arrays[f"x_{s}"], f"{where}: x_{s}") for s in ("train", "test")}
    ys = {s: _labels(arrays[f"y_{s}"], f"{where}: y_{s}", xs[s].shape[0]) for s in ("train", "test")}
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise UsageError(f"{where}: x_train images are {xs['train'].shape[1:]} but x_test images are "
                         f"{xs['test'].shape[1:]}; fix: give both splits the same [H, W, C]")
    if xs["train"].dtype != xs["test"].dtype:
        raise UsageError(f"{where}: x_train is {xs['train'].dtype} but x_test is {xs['test'].dtype}; "
                         f"fix: store both as uint8 pixels or both as floats")
    if xs["train"].shape[0] == 0 or xs["test"].shape[0] == 0:
        raise UsageError(f"{where}: x_train and x_test must each hold at least one image")
    num_classes = int(max(ys["train"].max(), ys["test"].max())) + 1
    if num_classes < 2:
        raise UsageError(f"{where}: every label is 0; fix: labels are class indices 0..K-1 with K >= 2")
    return ArrayDataset(name=os.path.splitext(os.path.basename(path))[0], x_train=xs["train"], y_train=ys["train"],
                        x_test=xs["test"], y_test=ys["test"], num_classes=num_classes,
                        pixel_max=float(_RAW_MAX) if xs["train"].dtype == np.uint8 else 1.0)


def _images(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise UsageError(f"{what} has shape {x.shape}; fix: images are [N, H, W, C] or [N, H, W]")
    if x.shape[1] in (1, 3, 4) and x.shape[3] > 4:
        raise UsageError(f"{what} has shape {x.shape}, which looks channel-first (NCHW); fix: store NHWC, "
                         f"e.g. x.transpose(0, 2, 3, 1)")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.size and (x.min() < 0 or x.max() > _RAW_MAX):
            raise UsageError(f"{what}: integer pixels must lie in 0..{_RAW_MAX} (got {x.min()}..{x.max()}); "
                             f"fix: store uint8 pixels, or floats")
        return np.ascontiguousarray(x, dtype=np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise UsageError(f"{what} has dtype {x.dtype}; fix: store uint8 pixels or floating-point images")
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise UsageError(f"{what} has {bad} NaN or infinite value(s); fix: clean or drop those images")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, what: str, n: int) -> np.ndarray:
    if not (np.issubdtype(y.dtype, np.integer) and not y.dtype == np.bool_):
        raise UsageError(f"{what} has dtype {y.dtype}; fix: labels are integer class indices (e.g. y.astype(np.int64))")
    if y.shape != (n,):
        raise UsageError(f"{what} has shape {y.shape} for {n} images; fix: one integer label per image, shape [{n}]")
    if n and y.min() < 0:
        raise UsageError(f"{what} has negative labels (min {y.min()}); fix: labels are class indices 0..K-1")
    if n and y.max() >= 2**31:
        raise UsageError(f"{what} has labels up to {y.max()}; fix: labels are class indices 0..K-1")
    return np.ascontiguousarray(y, dtype=np.int32)


def channel_stats(x: np.ndarray, pixel_max: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of ``x / pixel_max`` (``x`` ``[N, H, W, C]``), for the
    default normalisation of a user dataset. A constant channel gets std 1 (nothing to scale)."""
    x01 = x.astype(np.float64) / pixel_max
    mean = x01.mean(axis=(0, 1, 2))
    std = x01.std(axis=(0, 1, 2))
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
