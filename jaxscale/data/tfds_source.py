"""MNIST, CIFAR-10 and CIFAR-100 through tensorflow-datasets (tfds), without TensorFlow.

Reading. ``tfds.data_source`` gives random access to a dataset prepared in the ArrayRecord format;
it decodes the stored PNGs with Pillow and needs no TensorFlow. We read every example once, in
batches, into preallocated uint8 arrays (no float copies on the host). ``tfds.testing.mock_data``
patches exactly this path, so tests exercise the real reader on random images.

Never downloading implicitly. ``tfds.data_source(..., download=False)`` fails in milliseconds when
the data is absent, without touching the network (offline, a downloading ``tfds.load`` retries DNS
for ≈ 200 s). We then ask the builder whether the dataset is prepared and raise
:class:`DataMissingError` with the command that fixes it. (We cannot ask ``is_prepared()`` first:
under ``mock_data`` the mocked dataset is readable but never "prepared".)

Downloading (``jaxscale data download NAME``). tfds' own MNIST/CIFAR generators read the raw files
with ``tf.io.gfile`` and encode PNGs with ``tf.image``, and its archive extractor uses TensorFlow
too. The builders below are tfds' builders with only the example generator replaced by a
TensorFlow-free one (gzip/tarfile/numpy + Pillow PNG encoding): same name, version, features,
URLs, recorded checksums and example keys, so the prepared ArrayRecord copy is the one tfds itself
would write, and any tfds install reads it. Nothing is cached outside the data_dir (raw downloads
go to ``<data_dir>/downloads``, tfds' default).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import socket
import struct
import tarfile
import urllib.parse
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from jaxscale.data.datasets import TFDS_DATASETS, ArrayDataset, check_name
from jaxscale.errors import DataMissingError, UsageError

#: examples decoded per batched read (bounds the transient list of decoded dicts)
READ_CHUNK = 4096
#: seconds allowed to open a TCP connection to a download host before giving up
CONNECT_TIMEOUT_S = 10.0
#: a full-intensity pixel of tfds' uint8 images
TFDS_PIXEL_MAX = 255.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


# ------------------------------------------------------------------------------------------------
# data_dir resolution and messages


def resolve_data_dir(data_dir: Optional[str] = None) -> tuple[str, str]:
    """The tfds data_dir to use and where that choice came from.

    Order: explicit ``data_dir`` > ``$TFDS_DATA_DIR`` > ``~/tensorflow_datasets`` (tfds' default).
    Resolved at every call (tfds reads the environment variable only once, at import).

    Returns:
      ``(path, origin)``; ``origin`` is ``"given"``, ``"$TFDS_DATA_DIR"`` or ``"tfds default"``.
    """
    if data_dir:
        path, origin = os.fspath(data_dir), "given"
    elif os.environ.get("TFDS_DATA_DIR"):
        path, origin = os.environ["TFDS_DATA_DIR"], "$TFDS_DATA_DIR"
    else:
        path, origin = os.path.join("~", "tensorflow_datasets"), "tfds default"
    path = os.path.expanduser(path)
    if "://" not in path:  # keep cloud paths (gs://...) as they are
        path = os.path.abspath(path)
    return path, origin


def download_command(name: str, path: str, origin: str) -> str:
    """The `jaxscale data download` command line that prepares ``name`` where it was looked for."""
    # The download command resolves $TFDS_DATA_DIR and the default the same way, so only an
    # explicitly given data_dir needs repeating.
    return f"jaxscale data download {name}" + (f" --data-dir {path}" if origin == "given" else "")


def missing_message(name: str, path: str, origin: str) -> str:
    """One line: which dataset is missing where, and the two ways to fix it."""
    return (f"dataset {name!r} is not prepared in the tfds data_dir {path} ({origin}); fix: run "
            f"`{download_command(name, path, origin)}` (needs internet), or point --data-dir, "
            f"TFDS_DATA_DIR or data.data_dir at a data_dir where it is prepared")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _quiet_tfds_logs() -> Iterator[None]:
    """Silence tfds' absl WARNINGs for states we report ourselves ("Variant folder ... has no
    dataset_info.json" for a missing dataset, "OpenCV is not installed" on the first PNG decode),
    so that a CLI error stays one line. Restores the logger level afterwards."""
    logger = logging.getLogger("absl")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _random_access(file_format: Any) -> bool:
    return file_format in tfds.core.FileFormat.with_random_access()


# ------------------------------------------------------------------------------------------------
# Reading


def load_tfds_dataset(name: str, data_dir: Optional[str] = None) -> ArrayDataset:
    """Read a prepared tfds dataset (train and test splits) into host memory.

    Args:
      name: ``"mnist" | "cifar10" | "cifar100"``.
      data_dir: tfds data_dir (see :func:`resolve_data_dir`).

    Returns:
      :class:`ArrayDataset` with uint8 ``[N, H, W, C]`` images (28×28×1 or 32×32×3), int32 labels,
      ``pixel_max`` 255.

    Raises:
      DataMissingError: not prepared in ``data_dir`` (at once; no network access).
      UsageError: prepared in a format that only TensorFlow reads, or unreadable.
    """
    _check_tfds_name(name)
    path, origin = resolve_data_dir(data_dir)
    with _quiet_tfds_logs():
        try:
            train_src, test_src = tfds.data_source(name, split=["train", "test"], data_dir=path, download=False)
        except Exception as err:  # tfds raises assorted types here; _diagnose says which case it is
            raise _diagnose(name, path, origin, err) from None
        features = train_src.dataset_info.features
        shape = tuple(int(d) for d in features["image"].shape)
        num_classes = int(features["label"].num_classes)
        x_train, y_train = read_split(train_src, shape, f"{name} train")
        x_test, y_test = read_split(test_src, shape, f"{name} test")
    return ArrayDataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                        num_classes=num_classes, pixel_max=TFDS_PIXEL_MAX)


def _diagnose(name: str, path: str, origin: str, err: BaseException) -> UsageError:
    """Turn a failed ``tfds.data_source`` into the user-facing error that says what to do."""
    builder = tfds.builder(name, data_dir=path)  # reads local metadata only
    if not builder.is_prepared():
        return DataMissingError(missing_message(name, path, origin))
    where = os.fspath(builder.data_path)
    fmt = builder.info.file_format
    if not _random_access(fmt):
        fmt_name = getattr(fmt, "value", fmt)
        return UsageError(
            f"dataset {name!r} in {where} is prepared as {fmt_name}, which only TensorFlow can read; fix: "
            f"run `jaxscale data download {name} --data-dir OTHER_DIR` (writes ArrayRecord, no TensorFlow "
            f"needed) and use that data_dir")
    return UsageError(f"cannot read the prepared dataset {name!r} in {where} ({type(err).__name__}: "
                      f"{_one_line(err)}); fix: delete that folder and run `{download_command(name, path, origin)}`")


def read_split(source: Any, shape: tuple[int, ...], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Read every example of a tfds data source into ``(uint8 [n, *shape], int32 [n])``.

    Args:
      source: a tfds data source (``len``, ``source[i]`` and, for ArrayRecord, ``__getitems__``)
        whose examples are dicts with ``"image"`` uint8 ``shape`` and an integer ``"label"``.
      shape: expected image shape ``(H, W, C)``.
      what: name for error messages (e.g. ``"mnist train"``).
    """
    n = len(source)
    x = np.empty((n, *shape), dtype=np.uint8)
    y = np.empty((n,), dtype=np.int32)
    # The ArrayRecord reader fetches a list of records in one call, 3× faster than one by one (60k
    # MNIST: 4.6 s vs 13 s here). tfds.testing.mock_data sets a per-instance __getitems__ that
    # cannot be called (tfds 4.9), so a reader without a class-level batched read goes one by one.
    batched = callable(getattr(type(getattr(source, "data_source", None)), "__getitems__", None))
    for start in range(0, n, READ_CHUNK):
        keys = list(range(start, min(n, start + READ_CHUNK)))
        examples = source.__getitems__(keys) if batched else [source[k] for k in keys]
        for i, ex in zip(keys, examples):
            img = np.asarray(ex["image"])
            if img.shape != shape:
                raise UsageError(f"{what}: example {i} has image shape {img.shape}, expected {shape}; "
                                 f"fix: re-prepare the dataset with `jaxscale data download`")
            x[i] = img
            y[i] = int(ex["label"])
    return x, y


# ------------------------------------------------------------------------------------------------
# Preparing without TensorFlow


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 ``[H, W, C]`` image (C = 1 or 3), encoded with Pillow."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="png")
    return buf.getvalue()


def read_idx_gz(path: Any) -> np.ndarray:
    """Parse a gzipped IDX file (MNIST's raw format) into a uint8 array of the stored shape.

    Layout: big-endian uint32 magic ``0x0000 TT DD`` (TT = 0x08 for uint8, DD = number of dims),
    DD big-endian uint32 sizes, then the data.
    """
    with gzip.open(os.fspath(path), "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    dtype_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#010x})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {arr.size} bytes of data for shape {dims}")
    return arr.reshape(dims)


_MnistBase = tfds.builder_cls("mnist")
_Cifar10Base = tfds.builder_cls("cifar10")
_Cifar100Base = tfds.builder_cls("cifar100")

#: MNIST's four raw files (the names tfds downloads from ``MNIST.URL``)
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


class _MnistArrayRecord(_MnistBase, skip_registration=True):
    """tfds' MNIST builder with a TensorFlow-free example generator."""

    name = _MnistBase.name
    # tfds finds a builder's recorded URL checksums next to its code: keep tfds' location.
    code_path = _MnistBase.code_path

    def _split_generators(self, dl_manager):
        paths = dl_manager.download({k: urllib.parse.urljoin(self.URL, v) for k, v in _MNIST_FILES.items()})
        return {
            "train": self._generate_examples(paths["train_images"], paths["train_labels"]),
            "test": self._generate_examples(paths["test_images"], paths["test_labels"]),
        }

    def _generate_examples(self, images_path, labels_path):
        images, labels = read_idx_gz(images_path), read_idx_gz(labels_path)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise ValueError(f"MNIST files disagree: images {images.shape}, labels {labels.shape}")
        for index in range(images.shape[0]):  # key = index, as tfds' own generator
            yield index, {"image": _png(images[index][..., None]), "label": int(labels[index])}


class _CifarNoTF:
    """TensorFlow-free generator shared by CIFAR-10/100; the file layout comes from tfds' own
    ``_cifar_info`` (URL, folder prefix, files, label-name files, label keys)."""

    def _split_generators(self, dl_manager):
        info = self._cifar_info
        archive = dl_manager.download(info.url)
        with tarfile.open(os.fspath(archive), "r:gz") as tar:
            for key, label_file in zip(info.label_keys, info.label_files):
                text = _tar_member(tar, info.prefix + label_file).decode("utf-8")
                self.info.features[key].names = [n for n in text.split("\n") if n]  # as tfds does
        return {
            "train": self._generate_examples("train_", archive, [info.prefix + f for f in info.train_files]),
            "test": self._generate_examples("test_", archive, [info.prefix + f for f in info.test_files]),
        }

    def _generate_examples(self, split_prefix, archive, members):
        label_keys = self._cifar_info.label_keys  # ["label"] or ["coarse_label", "label"]
        n_lab = len(label_keys)
        record_len = n_lab + 3 * 32 * 32  # label byte(s), then a CHW 32×32×3 image
        index = 0  # key = running index over the files, as tfds' own generator
        with tarfile.open(os.fspath(archive), "r:gz") as tar:
            for member in members:
                data = _tar_member(tar, member)
                if len(data) % record_len:
                    raise ValueError(f"{archive}:{member}: {len(data)} bytes is not a whole number of records")
                rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record_len)
                for row in rows:
                    record = {k: int(v) for k, v in zip(label_keys, row[:n_lab])}
                    record["id"] = f"{split_prefix}{index:05d}"
                    record["image"] = _png(row[n_lab:].reshape(3, 32, 32).transpose(1, 2, 0))
                    yield index, record
                    index += 1


def _tar_member(tar: tarfile.TarFile, member: str) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise ValueError(f"{tar.name}: {member} is not a regular file")
    with f:
        return f.read()


class _Cifar10ArrayRecord(_CifarNoTF, _Cifar10Base, skip_registration=True):
    """tfds' CIFAR-10 builder with a TensorFlow-free example generator."""

    name = _Cifar10Base.name
    code_path = _Cifar10Base.code_path


class _Cifar100ArrayRecord(_CifarNoTF, _Cifar100Base, skip_registration=True):
    """tfds' CIFAR-100 builder with a TensorFlow-free example generator."""

    name = _Cifar100Base.name
    code_path = _Cifar100Base.code_path


_PREPARERS = {"mnist": _MnistArrayRecord, "cifar10": _Cifar10ArrayRecord, "cifar100": _Cifar100ArrayRecord}


def _check_tfds_name(name: str) -> None:
    check_name(name)
    if name not in TFDS_DATASETS:
        raise UsageError(f"dataset {name!r} ships with scikit-learn and is not a tfds dataset: "
                         f"load it with load_dataset({name!r}); there is nothing to download")


def check_reachable(name: str, urls: Iterable[str], timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line :class:`UsageError` at once if a download host cannot be reached.

    tfds' downloader retries for minutes before failing offline; a TCP connect with a timeout says
    the same in at most ``timeout`` seconds per host. Skipped when a proxy is configured (the proxy,
    not this machine, then resolves and connects).
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return
    hosts = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            hosts.add((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    for host, port in sorted(hosts):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as err:
            raise UsageError(
                f"cannot download {name}: {host}:{port} is unreachable ({type(err).__name__}: {_one_line(err)}); "
                f"fix: run `jaxscale data download {name} --data-dir DIR` on a machine with internet, copy DIR "
                f"here and pass --data-dir DIR (or set TFDS_DATA_DIR)") from None


def download_dataset(name: str, data_dir: Optional[str] = None) -> str:
    """Download and prepare ``name`` as ArrayRecord in the tfds data_dir (no TensorFlow needed).

    A no-op when the dataset is already prepared there. Raw files are kept in
    ``<data_dir>/downloads`` (tfds' default) so an interrupted run resumes without re-downloading.

    Returns:
      The prepared dataset's folder, e.g. ``<data_dir>/mnist/3.0.1``.

    Raises:
      UsageError: ``digits`` (nothing to download); the host is unreachable; the download or its
        checksum failed; an existing copy there is in a format only TensorFlow can read.
    """
    _check_tfds_name(name)
    path, origin = resolve_data_dir(data_dir)
    preparer = _PREPARERS[name]
    with _quiet_tfds_logs():
        builder = preparer(data_dir=path)
        prepared = builder.is_prepared()
    if prepared:
        if not _random_access(builder.info.file_format):
            raise UsageError(
                f"dataset {name!r} in {os.fspath(builder.data_path)} is already prepared as "
                f"{getattr(builder.info.file_format, 'value', builder.info.file_format)}, which only "
                f"TensorFlow can read; fix: pass another --data-dir (or delete that folder) and re-run")
        return os.fspath(builder.data_path)
    check_reachable(name, (preparer.url_infos or {}).keys())
    try:
        builder.download_and_prepare(
            file_format="array_record",
            # tfds' GCS mirror holds TFRecord copies only; generate from the original files.
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
    except (tfds.download.DownloadError, NonMatchingChecksumError, OSError) as err:
        if isinstance(err, PermissionError):
            fix = "pass a writable --data-dir (or set TFDS_DATA_DIR)"
        elif "disk space" in str(err).lower():
            fix = "free disk space there or pass another --data-dir"
        else:
            fix = (f"check the connection and re-run `{download_command(name, path, origin)}` "
                   f"(finished downloads are kept)")
        raise UsageError(f"preparing {name} in {path} failed ({type(err).__name__}: {_one_line(err)}); "
                         f"fix: {fix}") from None
    return os.fspath(builder.data_path)


# ------------------------------------------------------------------------------------------------
# Status (for `jaxscale data info`)


def dataset_status(name: str, data_dir: Optional[str] = None) -> dict:
    """What is prepared for ``name`` in the data_dir, from local metadata only.

    Returns:
      ``{"name", "state": "ready" | "missing" | "tensorflow-only", "path", "file_format",
      "splits": {split: num_examples}}`` (``path``/``file_format``/``splits`` are None when missing).
    """
    _check_tfds_name(name)
    path, _ = resolve_data_dir(data_dir)
    with _quiet_tfds_logs():
        builder = tfds.builder(name, data_dir=path)
        if not builder.is_prepared():
            return {"name": name, "state": "missing", "path": None, "file_format": None, "splits": None}
        info = builder.info
        fmt = info.file_format
        return {
            "name": name,
            "state": "ready" if _random_access(fmt) else "tensorflow-only",
            "path": os.fspath(builder.data_path),
            "file_format": getattr(fmt, "value", str(fmt)),
            "splits": {str(k): int(v.num_examples) for k, v in info.splits.items()},
        }
