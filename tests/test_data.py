"""jaxscale.data: loaders (digits, tfds through mock_data and through a real offline prepare),
missing-data errors, the CLI, presets, sampling index math and the jnp augmentations."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import struct
import sys
import tarfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxscale.data import DATASETS, ArrayDataset, DataMissingError, load_dataset
from jaxscale.data import cli as data_cli
from jaxscale.data import digits, presets, sampling, tfds_source, transforms
from jaxscale.data.testing import mock_tfds
from jaxscale.errors import UsageError

SHAPES = {"mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100)}


# ------------------------------------------------------------------------------------------------
# tfds through tfds.testing.mock_data (the real data_source reading code)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_tfds_loader_under_mock_data(name, tmp_path, monkeypatch):
    calls = []
    real = tfds.data_source

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tfds, "data_source", spy)
    shape, classes = SHAPES[name]
    with tfds.testing.mock_data(num_examples=70):
        # The mocked dataset is readable but not "prepared": a prepared-check first would reject it.
        assert not tfds.builder(name, data_dir=str(tmp_path)).is_prepared()
        ds = load_dataset(name, str(tmp_path))
    assert calls and calls[0]["download"] is False and calls[0]["data_dir"] == str(tmp_path)
    assert isinstance(ds, ArrayDataset) and ds.name == name
    assert ds.x_train.shape == (70, *shape) and ds.x_test.shape == (70, *shape)
    assert ds.input_shape == shape and ds.n_train == 70 and ds.n_test == 70
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.num_classes == classes and ds.pixel_max == 255.0
    assert 0 <= ds.y_train.min() and ds.y_train.max() < classes
    x01 = ds.x_train / ds.pixel_max
    assert 0.0 <= x01.min() and x01.max() <= 1.0 and ds.x_train.std() > 10  # random, not blank
    assert "tensorflow" not in sys.modules  # reading never needs TensorFlow


def test_mock_tfds_helper_serves_default_data_dir(monkeypatch, tmp_path):
    # The lead's end-to-end test calls load_dataset("mnist") with no data_dir inside the mock.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "nothing-here"))
    with mock_tfds(num_examples=300):
        ds = load_dataset("mnist")
    assert ds.x_train.shape == (300, 28, 28, 1) and ds.num_classes == 10
    assert len(np.unique(ds.y_train)) == 10  # labels spread over the classes: a usable classification set


# ------------------------------------------------------------------------------------------------
# Missing data: one line, at once, naming the fix


def test_missing_dataset_raises_at_once_with_the_fix(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DataMissingError) as info:
        load_dataset("cifar10", str(tmp_path))
    assert time.perf_counter() - t0 < 5.0
    msg = str(info.value)
    assert "\n" not in msg
    assert "'cifar10'" in msg and str(tmp_path) in msg
    assert f"jaxscale data download cifar10 --data-dir {tmp_path}" in msg
    assert "TFDS_DATA_DIR" in msg
    assert list(tmp_path.iterdir()) == []  # looking wrote nothing


def test_missing_dataset_via_env_names_env_and_plain_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataMissingError) as info:
        load_dataset("mnist")
    msg = str(info.value)
    assert str(tmp_path) in msg and "$TFDS_DATA_DIR" in msg
    assert "`jaxscale data download mnist`" in msg  # the env var already points the command there


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert tfds_source.resolve_data_dir(str(tmp_path / "arg")) == (str(tmp_path / "arg"), "given")
    assert tfds_source.resolve_data_dir(None) == (str(tmp_path / "env"), "$TFDS_DATA_DIR")
    monkeypatch.delenv("TFDS_DATA_DIR")
    path, origin = tfds_source.resolve_data_dir(None)
    assert origin == "tfds default" and path == os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def test_unknown_and_non_tfds_names_are_usage_errors():
    with pytest.raises(UsageError, match="unknown dataset 'imagenet': choose one of digits, mnist"):
        load_dataset("imagenet")
    with pytest.raises(UsageError, match="nothing to download"):
        tfds_source.download_dataset("digits")


def test_unreachable_host_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match=r"cannot download mnist: nonexistent\.invalid:443 is unreachable.*--data-dir"):
        tfds_source.check_reachable("mnist", ["https://nonexistent.invalid/x.gz"], timeout=3.0)
    assert time.perf_counter() - t0 < 5.0


def test_reachability_check_defers_to_a_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    tfds_source.check_reachable("mnist", ["https://nonexistent.invalid/x.gz"], timeout=3.0)  # no raise


# ------------------------------------------------------------------------------------------------
# Preparing without TensorFlow: tfds' builders with our generators, on small fake raw files


def _idx_gz(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def _tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


def _cifar_records(rng, n, label_cols, classes):
    labels = np.stack([rng.integers(0, c, n) for c in classes], axis=1).astype(np.uint8)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    chw = images.transpose(0, 3, 1, 2).reshape(n, -1)
    return np.concatenate([labels[:, :label_cols], chw], axis=1).tobytes(), images, labels[:, -1]


def _fake_raw_files(name: str, root: Path, rng) -> tuple[dict, dict]:
    """Write tiny raw files in the original formats; return ({url basename: path}, expected)."""
    if name in ("mnist", "fashion_mnist"):  # the same IDX files under the same names
        arrays = {"train": (rng.integers(0, 256, (23, 28, 28), dtype=np.uint8), rng.integers(0, 10, 23)),
                  "test": (rng.integers(0, 256, (9, 28, 28), dtype=np.uint8), rng.integers(0, 10, 9))}
        files = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            x, y = arrays[split]
            _idx_gz(root / f"{prefix}-images-idx3-ubyte.gz", x)
            _idx_gz(root / f"{prefix}-labels-idx1-ubyte.gz", y)
            files[f"{prefix}-images-idx3-ubyte.gz"] = root / f"{prefix}-images-idx3-ubyte.gz"
            files[f"{prefix}-labels-idx1-ubyte.gz"] = root / f"{prefix}-labels-idx1-ubyte.gz"
        expected = {s: (x[..., None], y) for s, (x, y) in arrays.items()}
        return files, expected
    if name == "cifar10":
        members, expected, xs, ys = {}, {}, [], []
        for i in range(1, 6):
            data, x, y = _cifar_records(rng, 4, 1, [10])
            members[f"cifar-10-batches-bin/data_batch_{i}.bin"] = data
            xs.append(x), ys.append(y)
        expected["train"] = (np.concatenate(xs), np.concatenate(ys))
        data, x, y = _cifar_records(rng, 6, 1, [10])
        members["cifar-10-batches-bin/test_batch.bin"] = data
        expected["test"] = (x, y)
        members["cifar-10-batches-bin/batches.meta.txt"] = "\n".join(f"class{i}" for i in range(10)).encode() + b"\n\n"
        _tar_gz(root / "cifar-10-binary.tar.gz", members)
        return {"cifar-10-binary.tar.gz": root / "cifar-10-binary.tar.gz"}, expected
    members, expected = {}, {}
    for split, n in (("train", 15), ("test", 7)):
        data, x, y = _cifar_records(rng, n, 2, [20, 100])
        members[f"cifar-100-binary/{split}.bin"] = data
        expected[split] = (x, y)
    members["cifar-100-binary/coarse_label_names.txt"] = "\n".join(f"c{i}" for i in range(20)).encode()
    members["cifar-100-binary/fine_label_names.txt"] = "\n".join(f"f{i}" for i in range(100)).encode()
    _tar_gz(root / "cifar-100-binary.tar.gz", members)
    return {"cifar-100-binary.tar.gz": root / "cifar-100-binary.tar.gz"}, expected


def _offline_downloads(monkeypatch, files: dict) -> list:
    """Serve tfds downloads from local files (by URL basename) and skip the network check."""
    requested = []

    def download(self, url_or_urls):
        if isinstance(url_or_urls, dict):
            requested.extend(url_or_urls.values())
            return {k: files[os.path.basename(u)] for k, u in url_or_urls.items()}
        requested.append(url_or_urls)
        return files[os.path.basename(url_or_urls)]

    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    monkeypatch.setattr(tfds_source, "check_reachable", lambda *a, **k: None)
    return requested


def _as_multiset(x, y):
    return sorted((int(lab), img.tobytes()) for img, lab in zip(x, y))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_download_prepares_arrayrecord_without_tensorflow(name, tmp_path, monkeypatch):
    files, expected = _fake_raw_files(name, tmp_path, np.random.default_rng(1))
    requested = _offline_downloads(monkeypatch, files)
    data_dir = tmp_path / "tfds"
    where = tfds_source.download_dataset(name, str(data_dir))
    assert Path(where).parent.parent == data_dir and Path(where, "dataset_info.json").exists()
    # tfds' own URLs (those its recorded checksums cover) were the ones fetched
    assert set(requested) == set(tfds.builder_cls(name).url_infos)
    ds = load_dataset(name, str(data_dir))
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        # tfds stores examples in a hashed-key order: compare as multisets of (label, image)
        assert _as_multiset(x, y) == _as_multiset(*expected[split])
    status = tfds_source.dataset_status(name, str(data_dir))
    assert status["state"] == "ready" and status["file_format"] == "array_record"
    assert status["splits"] == {"train": len(expected["train"][1]), "test": len(expected["test"][1])}
    n_requested = len(requested)
    assert tfds_source.download_dataset(name, str(data_dir)) == where and len(requested) == n_requested
    assert "tensorflow" not in sys.modules


def test_failed_download_is_a_usage_error_with_the_fix(tmp_path, monkeypatch):
    def broken(self, url_or_urls):
        raise tfds.download.DownloadError("HTTP 503 from the mirror")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", broken)
    monkeypatch.setattr(tfds_source, "check_reachable", lambda *a, **k: None)
    expected = (r"preparing mnist in .* failed \(DownloadError: HTTP 503 from the mirror\); "
                r"fix: check the connection and re-run `jaxscale data download mnist --data-dir")
    with pytest.raises(UsageError, match=expected):
        tfds_source.download_dataset("mnist", str(tmp_path))
    assert not tfds.builder("mnist", data_dir=str(tmp_path)).is_prepared()  # nothing half-prepared


def test_tensorflow_only_copy_is_diagnosed(tmp_path, monkeypatch):
    files, _ = _fake_raw_files("mnist", tmp_path, np.random.default_rng(2))
    _offline_downloads(monkeypatch, files)
    where = Path(tfds_source.download_dataset("mnist", str(tmp_path / "tfds")))
    # Make it look like a copy prepared by tfds + TensorFlow (TFRecord files, as tfds.load writes).
    info_path = where / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    for f in where.glob("*.array_record*"):
        f.rename(f.with_name(f.name.replace("array_record", "tfrecord")))
    with pytest.raises(UsageError, match="prepared as tfrecord, which only TensorFlow can read; fix: run") as err:
        load_dataset("mnist", str(tmp_path / "tfds"))
    assert not isinstance(err.value, DataMissingError)
    assert tfds_source.dataset_status("mnist", str(tmp_path / "tfds"))["state"] == "tensorflow-only"


def test_idx_parser_rejects_non_idx(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x12\x34\x56\x78" + b"\0" * 8))
    with pytest.raises(ValueError, match="not a uint8 IDX file"):
        tfds_source.read_idx_gz(tmp_path / "bad.gz")


# ------------------------------------------------------------------------------------------------
# CLI


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="jaxscale")
    data_cli.add_arguments(parser.add_subparsers(dest="command").add_parser("data"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_info_and_download(tmp_path, capsys, monkeypatch):
    assert _run_cli(["data", "info", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"tfds data_dir: {tmp_path} (given)" in out
    assert "digits        ready" in out and "1397 train / 400 test" in out
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        assert f"{name:<13} missing          get it: jaxscale data download {name} --data-dir {tmp_path}" in out
    assert _run_cli(["data", "download", "digits"]) == 0
    assert "nothing to download" in capsys.readouterr().out

    files, _ = _fake_raw_files("mnist", tmp_path, np.random.default_rng(3))
    _offline_downloads(monkeypatch, files)
    assert _run_cli(["data", "download", "mnist", "--data-dir", str(tmp_path / "d")]) == 0
    assert "mnist: ready in" in capsys.readouterr().out
    assert _run_cli(["data", "info", "mnist", "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "mnist         ready            array_record, 23 train / 9 test" in out and "cifar10" not in out


# ------------------------------------------------------------------------------------------------
# digits


def test_digits_loader_split():
    ds = load_dataset("digits")
    again = load_dataset("digits")
    assert ds.x_train.shape == (digits.N_TRAIN, 8, 8, 1) == (1397, 8, 8, 1)
    assert ds.x_test.shape == (digits.N_TEST, 8, 8, 1) == (400, 8, 8, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.pixel_max == 16.0 and ds.x_train.max() == 16 and ds.num_classes == 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [40] * 10  # stratified
    assert np.array_equal(ds.x_train, again.x_train) and np.array_equal(ds.y_test, again.y_test)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = _as_multiset(bunch.images.astype(np.uint8)[..., None], bunch.target)
    both = _as_multiset(np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test]))
    assert both == full  # a partition of the bundled images, labels intact
    test_mask = digits.digits_split(bunch.target)
    # spread over the whole file, not a block at its end
    pos = np.flatnonzero(test_mask)
    assert pos.min() < 20 and pos.max() > 1777


def test_array_dataset_validates():
    x = np.zeros((3, 2, 2, 1), np.uint8)
    with pytest.raises(ValueError, match="y_train must be an int32"):
        ArrayDataset("t", x, np.zeros(3, np.int64), x, np.zeros(3, np.int32), 2, 255.0)
    with pytest.raises(ValueError, match="labels outside"):
        ArrayDataset("t", x, np.array([0, 1, 2], np.int32), x, np.zeros(3, np.int32), 2, 255.0)
    with pytest.raises(ValueError, match="x_test must be a uint8 or float32"):
        ArrayDataset("t", x, np.zeros(3, np.int32), x.astype(np.float64), np.zeros(3, np.int32), 2, 255.0)
    with pytest.raises(ValueError, match="train images uint8 and test images float32 differ in dtype"):
        ArrayDataset("t", x, np.zeros(3, np.int32), x.astype(np.float32), np.zeros(3, np.int32), 2, 255.0)
    f = x.astype(np.float32)
    assert ArrayDataset("t", f, np.zeros(3, np.int32), f, np.zeros(3, np.int32), 2, 1.0).input_shape == (2, 2, 1)


# ------------------------------------------------------------------------------------------------
# presets (PROTOCOL §3.1)


def test_presets_follow_the_protocol_table():
    cifar = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010)}
    d = presets.default_preprocessing
    assert d("cnn", "mnist") == {"mean": (0.5,), "std": (0.5,), "augment": "none"}
    assert d("resnet", "mnist") == {"mean": (0.1307,), "std": (0.3081,), "augment": "affine"}
    assert d("vit", "mnist") == {"mean": (0.1307,), "std": (0.3081,), "augment": "affine"}
    for ds in ("cifar10", "cifar100"):
        assert d("cnn", ds) == {**cifar, "augment": "none"}
        assert d("resnet", ds) == {**cifar, "augment": "crop_flip"}
        assert d("vit", ds) == {**cifar, "augment": "none"}
    for fam in presets.FAMILIES:
        assert d(fam, "digits") == {"mean": presets.DIGITS_MEAN, "std": presets.DIGITS_STD, "augment": "none"}
    assert d("ResNet", "cifar10")["augment"] == "crop_flip"
    with pytest.raises(UsageError, match="unknown model family 'mlp'"):
        d("mlp", "mnist")
    with pytest.raises(UsageError, match="unknown dataset"):
        d("cnn", "svhn")


def test_digits_normalisation_constants_match_the_train_split():
    ds = digits.load_digits_dataset()
    x = ds.x_train.astype(np.float64) / ds.pixel_max
    mean, std = float(x.mean()), float(x.std())
    assert abs(mean - presets.DIGITS_MEAN[0]) < 5e-5 and abs(std - presets.DIGITS_STD[0]) < 5e-5


# ------------------------------------------------------------------------------------------------
# sampling


def test_subsets_are_nested_prefixes_and_uniform():
    key = jax.random.PRNGKey(7)
    small = np.asarray(sampling.subset_indices(key, 1000, 100))
    large = np.asarray(sampling.subset_indices(key, 1000, 400))
    assert small.dtype == np.int32 and large.shape == (400,)
    assert np.array_equal(large[:100], small)
    assert len(np.unique(large)) == 400 and large.min() >= 0 and large.max() < 1000
    other = np.asarray(sampling.subset_indices(jax.random.PRNGKey(8), 1000, 100))
    assert not np.array_equal(other, small)
    # uniform: over 4000 seeds each of 10 items is in a 3-subset with probability 0.3
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    subs = np.asarray(jax.vmap(lambda k: sampling.subset_indices(k, 10, 3))(keys))
    freq = np.bincount(subs.ravel(), minlength=10) / 4000
    assert np.all(np.abs(freq - 0.3) < 0.035)  # ~4.8 sigma of a binomial(4000, 0.3) frequency
    with pytest.raises(ValueError, match="must be in"):
        sampling.subset_indices(key, 10, 11)


def test_subsets_vmap_over_seed_keys_like_the_training_loop():
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    f = jax.jit(jax.vmap(sampling.subset_indices, in_axes=(0, None, None)), static_argnums=(1, 2))
    batched = np.asarray(f(keys, 500, 64))
    looped = np.stack([np.asarray(sampling.subset_indices(k, 500, 64)) for k in keys])
    assert batched.shape == (4, 64) and np.array_equal(batched, looped)
    assert len({tuple(r) for r in batched}) == 4  # seeds differ


@pytest.mark.parametrize("P,bs", [(300, 128), (256, 128), (50, 128), (1, 1)])
def test_epoch_batches_cover_each_index_once(P, bs):
    idx, rem = sampling.epoch_batches(jax.random.PRNGKey(P), P, bs)
    assert idx.shape == (P // bs, bs) and rem.shape == (P % bs,)
    assert idx.dtype == jnp.int32 and rem.dtype == jnp.int32
    allidx = np.concatenate([np.asarray(idx).ravel(), np.asarray(rem)])
    assert np.array_equal(np.sort(allidx), np.arange(P))


def test_epoch_batches_vmap_and_fresh_orders():
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    idx, rem = jax.vmap(lambda k: sampling.epoch_batches(k, 300, 128))(keys)
    assert idx.shape == (3, 2, 128) and rem.shape == (3, 44)
    for s in range(3):
        one_idx, one_rem = sampling.epoch_batches(keys[s], 300, 128)
        assert np.array_equal(idx[s], one_idx) and np.array_equal(rem[s], one_rem)
    assert not np.array_equal(idx[0], idx[1])
    assert not np.array_equal(np.concatenate([idx[0].ravel(), rem[0]]), np.arange(300))  # shuffled


@pytest.mark.parametrize("n,bs", [(10, 4), (8, 4), (3, 8), (0, 4)])
def test_eval_batches_pad_and_mask(n, bs):
    idx, mask = sampling.eval_batches(n, bs)
    assert idx.shape == mask.shape == (math.ceil(n / bs), bs)
    assert idx.dtype == np.int32 and mask.dtype == bool
    assert np.array_equal(idx[mask], np.arange(n)) and np.all(idx[~mask] == 0)


# ------------------------------------------------------------------------------------------------
# transforms


def test_to_unit_and_normalize():
    x = np.array([[[[0, 128, 255]]]], np.uint8)
    u = transforms.to_unit(x, 255.0)
    assert u.dtype == jnp.float32 and np.allclose(u, [0.0, 128 / 255, 1.0])
    n = transforms.normalize(u, (0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    assert np.allclose(n, [(0 - 0.1) / 0.5, (128 / 255 - 0.2) / 0.25, (1 - 0.3) / 0.125], atol=1e-6)
    assert np.allclose(transforms.normalize(u, (0.5,), (0.5,)), 2 * np.asarray(u) - 1, atol=1e-6)


def _np_crop_flip(x, offsets, flips, pad):
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    H, W = x.shape[1:3]
    out = np.stack([xp[b, oy:oy + H, ox:ox + W] for b, (oy, ox) in enumerate(offsets)])
    return np.where(flips[:, None, None, None], out[:, :, ::-1], out)


def test_crop_flip_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((6, 5, 7, 3)).astype(np.float32)
    offsets = rng.integers(0, 9, (6, 2))
    flips = np.array([0, 1, 0, 1, 1, 0], bool)
    got = transforms.crop_flip(jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(flips), pad=4)
    assert np.array_equal(np.asarray(got), _np_crop_flip(x, offsets, flips, 4))
    same = transforms.crop_flip(jnp.asarray(x), jnp.full((6, 2), 4), jnp.zeros(6, bool), pad=4)
    assert np.array_equal(np.asarray(same), x)  # centred crop, no flip = identity
    same0 = transforms.crop_flip(jnp.asarray(x), jnp.zeros((6, 2), jnp.int32), jnp.zeros(6, bool), pad=0)
    assert np.array_equal(np.asarray(same0), x)


def _window_matches(out, x, pad):
    """For each image b: bool [2·pad+1, 2·pad+1] of crop offsets (oy, ox) of the zero-padded
    ``x[b]`` equal to ``out[b]``, unflipped and flipped. x, out: [B, H, W]."""
    H, W = x.shape[1:]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (H, W), axis=(1, 2))  # [B, 2p+1, 2p+1, H, W]
    same = (win == out[:, None, None]).all((-1, -2))
    flipped = (win[..., ::-1] == out[:, None, None]).all((-1, -2))
    return same, flipped


def test_random_crop_flip_is_a_crop_of_the_padded_input_flipped_half_the_time():
    rng = np.random.default_rng(1)
    B, pad = 400, 2
    x = rng.random((B, 6, 6, 1)).astype(np.float32) + 0.5  # strictly positive: padding is visible
    out = np.asarray(jax.jit(transforms.random_crop_flip, static_argnums=2)(jax.random.PRNGKey(0), x, pad))
    assert out.shape == x.shape
    same, flipped = _window_matches(out[..., 0], x[..., 0], pad)
    one_match = same.sum((1, 2)) + flipped.sum((1, 2))
    assert np.all(one_match == 1), "every output is exactly one crop (flipped or not) of its padded input"
    n_flip = int(flipped.sum())
    assert abs(n_flip - B / 2) < 4 * math.sqrt(B / 4)  # Bernoulli(0.5) flips
    offsets_seen = (same | flipped).any(0)
    assert offsets_seen.all()  # every offset in {0..2·pad}² occurs
    # pad = 0: each output is the image or its mirror
    out0 = np.asarray(transforms.random_crop_flip(jax.random.PRNGKey(1), x[:50], 0))
    assert all(np.array_equal(o, i) or np.array_equal(o, i[:, ::-1]) for o, i in zip(out0, x[:50]))


def _torchvision_affine_reference(img, angle, tx, ty):
    """numpy transcription of torchvision's tensor path: _get_inverse_affine_matrix (centre 0,
    scale 1, shear 0) → _gen_affine_grid → grid_sample(nearest, zeros, align_corners=False)."""
    H, W, _ = img.shape
    rot = math.radians(angle)
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-tx) + m[1] * (-ty)
    m[5] += m[3] * (-tx) + m[4] * (-ty)
    theta = np.array([[m[0], m[1], m[2]], [m[3], m[4], m[5]]])
    xg = np.linspace(-W * 0.5 + 0.5, W * 0.5 + 0.5 - 1, W)
    yg = np.linspace(-H * 0.5 + 0.5, H * 0.5 + 0.5 - 1, H)
    base = np.stack(np.broadcast_arrays(xg[None, :], yg[:, None], np.ones((H, W))), -1)  # [H, W, 3]
    grid = base @ (theta.T / np.array([0.5 * W, 0.5 * H]))  # normalised (x, y) in [-1, 1]
    ix = np.rint(((grid[..., 0] + 1) * W - 1) / 2).astype(int)
    iy = np.rint(((grid[..., 1] + 1) * H - 1) / 2).astype(int)
    ok = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    return np.where(ok[..., None], img[np.clip(iy, 0, H - 1), np.clip(ix, 0, W - 1)], 0.0)


def test_affine_identity_translation_and_rotation():
    rng = np.random.default_rng(2)
    img = rng.random((9, 9, 2)).astype(np.float32) + 0.5
    aff = jax.jit(transforms.affine)
    assert np.array_equal(np.asarray(aff(img, 0.0, 0.0, 0.0)), img)
    shifted = np.asarray(aff(img, 0.0, 2.0, -1.0))  # content 2 px right, 1 px up
    expect = np.zeros_like(img)
    expect[:-1, 2:] = img[1:, :-2]
    assert np.array_equal(shifted, expect)
    assert np.array_equal(np.asarray(aff(img, 90.0, 0.0, 0.0)), np.rot90(img, k=-1, axes=(0, 1)))
    assert np.array_equal(np.asarray(aff(img, 180.0, 0.0, 0.0)), img[::-1, ::-1])
    even = rng.random((8, 8, 1)).astype(np.float32)  # centre between pixels: 90° still exact
    assert np.array_equal(np.asarray(aff(even, -90.0, 0.0, 0.0)), np.rot90(even, k=1, axes=(0, 1)))


def test_affine_matches_torchvision_formulation():
    rng = np.random.default_rng(3)
    img = rng.random((28, 28, 1)).astype(np.float32)
    mismatched = 0
    for angle, tx, ty in [(7.3, 1, -2), (-9.1, 0, 3), (3.3, -3, 0), (-0.4, 2, 2), (45.0, 0, 0)]:
        got = np.asarray(transforms.affine(img, angle, tx, ty))
        ref = _torchvision_affine_reference(img, angle, tx, ty)
        mismatched += int((got != ref).any(-1).sum())
    # both round the same real coordinates; float32 vs float64 may split an exact .5 tie differently
    assert mismatched <= 5, mismatched


def test_random_affine_draws_protocol_parameters():
    rng = np.random.default_rng(4)
    x = rng.random((64, 28, 28, 1)).astype(np.float32) + 0.5
    out = np.asarray(jax.jit(lambda k, v: transforms.random_affine(k, v, 0.0, 0.1))(jax.random.PRNGKey(0), x))
    # degrees = 0: a pure integer shift of at most round(0.1·28) = 3 px, i.e. a crop of the image
    # zero-padded by 3 at offset (3 − ty, 3 − tx), never flipped
    same, flipped = _window_matches(out[..., 0], x[..., 0], 3)
    assert np.all(same.sum((1, 2)) == 1) and not flipped.any()
    assert same.any(0).sum() > 20  # many of the 49 shifts occur
    ident = transforms.random_affine(jax.random.PRNGKey(1), jnp.asarray(x[:4]), 0.0, 0.0)
    assert np.array_equal(np.asarray(ident), x[:4])
    rotated = np.asarray(transforms.random_affine(jax.random.PRNGKey(2), jnp.asarray(x[:8]), 10.0, 0.0))
    assert not np.array_equal(rotated, x[:8]) and rotated.shape == (8, 28, 28, 1)


def test_preprocess_order_and_vmap_over_seeds():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    kw = dict(pixel_max=255.0, mean=presets.CIFAR_MEAN, std=presets.CIFAR_STD)
    plain = transforms.preprocess(None, x, augment="none", **kw)
    assert plain.dtype == jnp.float32
    assert np.allclose(plain, (x / 255.0 - np.array(presets.CIFAR_MEAN)) / np.array(presets.CIFAR_STD), atol=1e-5)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    f = jax.jit(jax.vmap(lambda k: transforms.preprocess(k, x, augment="crop_flip", **kw)))
    out = np.asarray(f(keys))
    assert out.shape == (3, 4, 32, 32, 3) and not np.array_equal(out[0], out[1])
    # padding is applied before normalisation: zero-padded pixels become exactly -mean/std
    pad_value = -np.array(presets.CIFAR_MEAN) / np.array(presets.CIFAR_STD)
    single = np.asarray(transforms.preprocess(keys[0], x, augment="crop_flip", **kw))
    assert np.allclose(out[0], single, atol=1e-5)  # vmapped seed 0 = that seed alone (jit may fuse /std)
    border = np.isclose(out, pad_value, atol=1e-5).all(-1)
    assert border.any()  # some crops shifted in padding
    with pytest.raises(UsageError, match="unknown augmentation 'mixup': choose one of none, crop_flip, affine"):
        transforms.make_augment("mixup")
    assert set(transforms.AUGMENTS) == {"none", "crop_flip", "affine"}


def test_datasets_constant():
    assert DATASETS == ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "npz")
