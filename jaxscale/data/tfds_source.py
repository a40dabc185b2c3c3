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
import types
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
        try:
            features = train_src.dataset_info.features
            shape = tuple(int(d) for d in features["image"].shape)
            num_classes = int(features["label"].num_classes)
            x_train, y_train = read_split(train_src, shape, f"{name} train")
            x_test, y_test = read_split(test_src, shape, f"{name} test")
        except UsageError:
            raise
        except Exception as err:  # damaged or foreign record files: the reader raises assorted types
            raise _unreadable(name, os.path.join(path, name), path, origin, err) from None
    return ArrayDataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                        num_classes=num_classes, pixel_max=TFDS_PIXEL_MAX)


def _unreadable(name: str, where: str, path: str, origin: str, err: BaseException) -> UsageError:
    return UsageError(f"cannot read the prepared dataset {name!r} in {where} ({type(err).__name__}: "
                      f"{_one_line(err)}); fix: delete that folder and prepare it again with "
                      f"`{download_command(name, path, origin)}` (or `jaxscale data prepare {name} --from DIR`)")


def _builder(name: str, path: str, origin: str) -> Any:
    """tfds' builder for a local data_dir; a damaged ``dataset_info.json`` there is a UsageError."""
    try:
        return tfds.builder(name, data_dir=path)  # reads local metadata only
    except Exception as err:  # tfds wraps JSON/proto parse errors in assorted types
        raise _unreadable(name, os.path.join(path, name), path, origin, err) from None


def _diagnose(name: str, path: str, origin: str, err: BaseException) -> UsageError:
    """Turn a failed ``tfds.data_source`` into the user-facing error that says what to do."""
    builder = _builder(name, path, origin)
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
    return _unreadable(name, where, path, origin, err)


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


#: the four raw files of MNIST and Fashion-MNIST (the names tfds downloads from the builder's ``URL``)
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


class _MnistNoTF:
    """TensorFlow-free generator shared by MNIST and Fashion-MNIST (same IDX files, own ``URL``)."""

    def _split_generators(self, dl_manager):
        paths = dl_manager.download({k: urllib.parse.urljoin(self.URL, v) for k, v in _MNIST_FILES.items()})
        return {
            "train": self._generate_examples(paths["train_images"], paths["train_labels"]),
            "test": self._generate_examples(paths["test_images"], paths["test_labels"]),
        }

    def _generate_examples(self, images_path, labels_path):
        images, labels = read_idx_gz(images_path), read_idx_gz(labels_path)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise ValueError(f"{self.name} files disagree: images {images.shape}, labels {labels.shape}")
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


def _without_tensorflow(generator: type, name: str) -> type:
    """tfds' builder for ``name`` with ``generator``'s TensorFlow-free example generator."""
    base = tfds.builder_cls(name)
    # Same name (tfds reads and writes <data_dir>/<name>/<version>) and code_path (tfds finds a
    # builder's recorded URL checksums next to its code).
    body = {"name": base.name, "code_path": base.code_path, "__doc__": f"tfds' {name} builder without TensorFlow."}
    return types.new_class(f"_{base.__name__}NoTF", (generator, base), {"skip_registration": True},
                           lambda ns: ns.update(body))


_PREPARERS = {"mnist": _without_tensorflow(_MnistNoTF, "mnist"),
              "fashion_mnist": _without_tensorflow(_MnistNoTF, "fashion_mnist"),
              "cifar10": _without_tensorflow(_CifarNoTF, "cifar10"),
              "cifar100": _without_tensorflow(_CifarNoTF, "cifar100")}


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
# Preparing from raw files already on disk (air-gapped machines)

#: Original gzip modification times of raw files that repackagers re-wrap, by tfds' recorded sha256.
#: Debian's ``dataset-fashion-mnist`` ships Zalando's files with the gzip header rewritten (stored
#: file name dropped, mtime set to the package's build time: strip-nondeterminism); the compressed
#: stream and its CRC are untouched. Restoring the header from these values gives back the exact
#: bytes tfds recorded, so such a copy is verified against tfds' own checksum, not trusted.
_ORIGINAL_GZIP_MTIME = {
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84": 1504176606,  # fashion train images
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845": 1504176606,  # fashion train labels
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073": 1504176627,  # fashion test images
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5": 1504176627,  # fashion test labels
}
_GZIP_FNAME = 0x08


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _restore_gzip_header(data: bytes, filename: str, checksum: str) -> Optional[bytes]:
    """``data`` with the original gzip header put back (stored name = ``filename`` without ``.gz``,
    the recorded original mtime), or None when that is not possible: not a gzip, no recorded mtime,
    or a header carrying more than the basic fields."""
    mtime = _ORIGINAL_GZIP_MTIME.get(checksum)
    if mtime is None or len(data) < 18 or data[:3] != b"\x1f\x8b\x08" or data[3] not in (0, _GZIP_FNAME):
        return None
    body = data[10:]
    if data[3] & _GZIP_FNAME:  # drop the stored name that is there
        end = body.find(b"\0")
        if end < 0:
            return None
        body = body[end + 1:]
    stored = filename[:-3] if filename.endswith(".gz") else filename
    return (data[:3] + bytes([_GZIP_FNAME]) + struct.pack("<I", mtime) + data[8:10]
            + stored.encode("latin-1") + b"\0" + body)


def check_raw_files(name: str, src_dir: str, stage_dir: str) -> list[str]:
    """Verify the raw files tfds would download for ``name`` in ``src_dir`` against tfds' recorded
    sizes and sha256 checksums, and lay out verified copies in ``stage_dir`` for tfds to read.

    A file that matches is linked; a gzip whose header a repackager rewrote (see
    :data:`_ORIGINAL_GZIP_MTIME`) is restored to the recorded bytes and written there.

    Returns:
      One entry per problem, e.g. ``"train-images-idx3-ubyte.gz: missing"`` or
      ``"...: 123 bytes, sha256 ab12…; expected 26421880 bytes, sha256 3aede3…"``; empty if all good.
    """
    problems = []
    for info in _PREPARERS[name].url_infos.values():
        fname = info.filename
        src = os.path.join(src_dir, fname)
        if not os.path.isfile(src):
            problems.append(f"{fname}: missing")
            continue
        with open(src, "rb") as f:
            data = f.read()
        dst = os.path.join(stage_dir, fname)
        if len(data) == info.size and _sha256(data) == info.checksum:
            os.symlink(os.path.abspath(src), dst)
            continue
        restored = _restore_gzip_header(data, fname, info.checksum)
        if restored is not None and len(restored) == info.size and _sha256(restored) == info.checksum:
            with open(dst, "wb") as f:
                f.write(restored)
            continue
        problems.append(f"{fname}: {len(data)} bytes, sha256 {_sha256(data)[:12]}…; expected {int(info.size)} bytes, "
                        f"sha256 {info.checksum[:12]}…")
    return problems


def prepare_from_files(name: str, src_dir: str, data_dir: Optional[str] = None) -> str:
    """Prepare ``name`` in the tfds data_dir from raw files already on disk (no network).

    ``src_dir`` holds the files tfds would download, under their original names (for MNIST and
    Fashion-MNIST the four ``*-idx?-ubyte.gz``; for CIFAR the ``cifar-10*-binary.tar.gz`` archive).
    Every file is checked against tfds' recorded size and sha256 first; then tfds' own
    ``download_and_prepare`` reads them as a manual download (and checks them again) and writes the
    same ArrayRecord copy a download would. A no-op when the dataset is already prepared there.

    Returns:
      The prepared dataset's folder.

    Raises:
      UsageError: ``src_dir`` is not a folder, a file is missing or does not match its checksum
        (one line listing each), or the data_dir is not writable.
    """
    import shutil
    import tempfile

    _check_tfds_name(name)
    path, _ = resolve_data_dir(data_dir)
    if not os.path.isdir(src_dir):
        raise UsageError(f"--from {src_dir}: not a folder; fix: pass the folder that holds the raw {name} files")
    preparer = _PREPARERS[name]
    with _quiet_tfds_logs():
        builder = preparer(data_dir=path)
        if builder.is_prepared():
            return os.fspath(builder.data_path)
    try:
        os.makedirs(path, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=f".{name}-raw-", dir=path)
    except OSError as err:
        raise UsageError(f"cannot write to the tfds data_dir {path} ({type(err).__name__}: {_one_line(err)}); "
                         f"fix: pass a writable --data-dir") from None
    try:
        problems = check_raw_files(name, src_dir, stage)
        if problems:
            expected = ", ".join(i.filename for i in preparer.url_infos.values())
            raise UsageError(f"raw {name} files in {src_dir} do not match tfds' recorded checksums: "
                             f"{'; '.join(problems)}; fix: copy the original files ({expected}) there unchanged")
        with _quiet_tfds_logs():
            try:
                builder.download_and_prepare(
                    file_format="array_record",
                    download_config=tfds.download.DownloadConfig(manual_dir=stage, try_download_gcs=False),
                )
            except (NonMatchingChecksumError, OSError) as err:
                raise UsageError(f"preparing {name} in {path} from {src_dir} failed ({type(err).__name__}: "
                                 f"{_one_line(err)}); fix: free disk space or pass another --data-dir") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return os.fspath(builder.data_path)


# ------------------------------------------------------------------------------------------------
# Status (for `jaxscale data info`)


def dataset_status(name: str, data_dir: Optional[str] = None) -> dict:
    """What is prepared for ``name`` in the data_dir, from local metadata only.

    Returns:
      ``{"name", "state": "ready" | "missing" | "tensorflow-only" | "unreadable", "path",
      "file_format", "splits": {split: num_examples}}`` (``path``/``file_format``/``splits`` are None
      when missing or unreadable; an unreadable one also has ``"error"``, the one-line reason and fix).
    """
    _check_tfds_name(name)
    path, origin = resolve_data_dir(data_dir)
    with _quiet_tfds_logs():
        try:
            builder = _builder(name, path, origin)
        except UsageError as err:
            return {"name": name, "state": "unreadable", "path": os.path.join(path, name), "file_format": None,
                    "splits": None, "error": str(err)}
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
