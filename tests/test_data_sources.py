"""Data without a download: preparing tfds datasets from raw files on disk (checksums verified),
and a user's own arrays from an .npz file. Real Fashion-MNIST files: tests/test_real_data.py."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.checksums import UrlInfo

from jaxscale.config import config_from_dict
from jaxscale.data import load_dataset, npz_source, presets, tfds_source
from jaxscale.errors import UsageError
from jaxscale.experiment import run

from test_data import _as_multiset, _fake_raw_files

REPO = Path(__file__).resolve().parent.parent


def _record_checksums(monkeypatch, name: str, files: dict) -> None:
    """Make tfds' recorded checksums those of our small fake raw files (tfds checks them again)."""
    cls = tfds_source._PREPARERS[name]
    infos = {}
    for url, info in cls.url_infos.items():
        data = Path(files[info.filename]).read_bytes()
        infos[url] = UrlInfo(size=len(data), checksum=hashlib.sha256(data).hexdigest(), filename=info.filename)
    monkeypatch.setattr(cls, "url_infos", infos)


def _no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("prepare --from must not download")

    monkeypatch.setattr(tfds.download.DownloadManager, "_download", refuse)
    monkeypatch.setattr(tfds_source, "check_reachable", refuse)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_prepare_from_files_writes_what_a_download_writes(name, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    files, expected = _fake_raw_files(name, raw, np.random.default_rng(3))
    _record_checksums(monkeypatch, name, files)
    _no_network(monkeypatch)
    where = tfds_source.prepare_from_files(name, str(raw), str(tmp_path / "tfds"))
    assert Path(where, "dataset_info.json").exists()
    ds = load_dataset(name, str(tmp_path / "tfds"))
    for split in ("train", "test"):
        assert _as_multiset(getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")) == _as_multiset(*expected[split])
    # nothing left behind but the prepared dataset (the staging folder is gone; raw files untouched)
    assert sorted(p.name for p in (tmp_path / "tfds").iterdir() if not p.name.startswith("downloads")) == [name]
    assert sorted(p.name for p in raw.iterdir()) == sorted(files)
    # a second call is a no-op
    assert tfds_source.prepare_from_files(name, str(raw), str(tmp_path / "tfds")) == where


def test_prepare_from_files_lists_missing_and_mismatching_files(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    files, _ = _fake_raw_files("mnist", raw, np.random.default_rng(4))
    _record_checksums(monkeypatch, "mnist", files)
    _no_network(monkeypatch)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    blob = bytearray((raw / "train-images-idx3-ubyte.gz").read_bytes())
    blob[-20] ^= 0xFF
    (raw / "train-images-idx3-ubyte.gz").write_bytes(bytes(blob))
    with pytest.raises(UsageError) as err:
        tfds_source.prepare_from_files("mnist", str(raw), str(tmp_path / "tfds"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "t10k-labels-idx1-ubyte.gz: missing" in msg
    assert f"train-images-idx3-ubyte.gz: {len(blob)} bytes, sha256 {hashlib.sha256(blob).hexdigest()[:12]}" in msg
    assert "expected" in msg and "fix: copy the original files" in msg
    assert "t10k-images-idx3-ubyte.gz" not in msg.split("fix:")[0]  # a good file is not reported
    assert not tfds.builder("mnist", data_dir=str(tmp_path / "tfds")).is_prepared()
    assert not any(p.name.startswith(".mnist-raw-") for p in (tmp_path / "tfds").iterdir())
    with pytest.raises(UsageError, match="not a folder"):
        tfds_source.prepare_from_files("mnist", str(tmp_path / "nope"), str(tmp_path / "tfds"))


def test_repackaged_gzip_header_is_restored_to_the_recorded_bytes(tmp_path, monkeypatch):
    """A gzip whose header a repackager rewrote (name dropped, mtime reset) is restored from the
    original mtime recorded for its tfds checksum; then it matches tfds' sha256 exactly."""
    payload = np.random.default_rng(5).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    original = gzip.compress(payload, mtime=1234567890)
    # what `gzip` writes for a named file: FNAME flag + stored name
    original = original[:3] + b"\x08" + original[4:10] + b"train-labels-idx1-ubyte\0" + original[10:]
    repacked = original[:3] + b"\x00" + (1591347949).to_bytes(4, "little") + original[8:10] + original[34:]
    assert gzip.decompress(repacked) == payload and repacked != original
    checksum = hashlib.sha256(original).hexdigest()
    monkeypatch.setitem(tfds_source._ORIGINAL_GZIP_MTIME, checksum, 1234567890)
    assert tfds_source._restore_gzip_header(repacked, "train-labels-idx1-ubyte.gz", checksum) == original
    assert tfds_source._restore_gzip_header(original, "train-labels-idx1-ubyte.gz", checksum) == original
    assert tfds_source._restore_gzip_header(b"not a gzip at all", "x.gz", checksum) is None
    assert tfds_source._restore_gzip_header(repacked, "x.gz", "0" * 64) is None  # no recorded mtime


def test_cli_prepare_is_one_line_on_a_bad_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxscale", "data", "prepare", "fashion_mnist", "--from",
                           str(tmp_path), "--data-dir", str(tmp_path / "tfds")], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    for f in ("train-images-idx3-ubyte.gz: missing", "t10k-labels-idx1-ubyte.gz: missing"):
        assert f in lines[0]


# ------------------------------------------------------------------------------------------------
# Your own arrays


def _save(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _arrays(rng, n=40, m=20, shape=(6, 6), classes=3, dtype=np.uint8):
    x = rng.integers(0, 256, (n, *shape)).astype(dtype)
    xt = rng.integers(0, 256, (m, *shape)).astype(dtype)
    return dict(x_train=x, y_train=rng.integers(0, classes, n), x_test=xt, y_test=rng.integers(0, classes, m))


def test_npz_loads_nhw_uint8_and_nhwc_float(tmp_path):
    rng = np.random.default_rng(0)
    a = _arrays(rng)
    ds = npz_source.load_npz_dataset(_save(tmp_path / "mine.npz", **a))
    assert ds.name == "mine" and ds.x_train.shape == (40, 6, 6, 1) and ds.x_train.dtype == np.uint8
    assert ds.pixel_max == 255.0 and ds.num_classes == int(max(a["y_train"].max(), a["y_test"].max())) + 1
    np.testing.assert_array_equal(ds.x_test[..., 0], a["x_test"])
    f = {k: (v.astype(np.float64)[..., None].repeat(3, -1) / 7 if k.startswith("x") else v) for k, v in a.items()}
    ds = npz_source.load_npz_dataset(_save(tmp_path / "f.npz", **f))
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (40, 6, 6, 3) and ds.pixel_max == 1.0
    mean, std = presets.default_preprocessing("cnn", "npz", ds)["mean"], presets.default_preprocessing("cnn", "npz", ds)["std"]
    x = f["x_train"]
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-6)


@pytest.mark.parametrize("change,needle", [
    (lambda a: a.pop("y_test"), "missing array(s) y_test"),
    (lambda a: a.update(x_train=a["x_train"][:, None].repeat(3, 1)), "looks channel-first"),
    (lambda a: a.update(x_train=a["x_train"][0]), "has shape (6, 6)"),
    (lambda a: a.update(y_train=a["y_train"].astype(np.float32)), "y_train has dtype float32"),
    (lambda a: a.update(y_train=a["y_train"][:-1]), "y_train has shape (39,) for 40 images"),
    (lambda a: a.update(y_test=a["y_test"] - 5), "negative labels"),
    (lambda a: a.update(x_test=a["x_test"][:, :5]), "x_train images are (6, 6, 1) but x_test images are (5, 6, 1)"),
    (lambda a: a.update(x_train=np.where(np.arange(36).reshape(6, 6) == 3, np.nan, a["x_train"] / 255.0),
                        x_test=a["x_test"] / 255.0), "1 NaN"[0:0] + "NaN or infinite"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.int32) * 2), "integer pixels must lie in 0..255"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.complex64)), "has dtype complex64"),
    (lambda a: a.update(y_train=np.zeros(40, int), y_test=np.zeros(20, int)), "every label is 0"),
    (lambda a: a.update(x_test=a["x_test"] / 255.0), "x_train is uint8 but x_test is float32"),
])
def test_npz_errors_are_one_line_with_the_fix(tmp_path, change, needle):
    a = _arrays(np.random.default_rng(1))
    change(a)
    with pytest.raises(UsageError) as err:
        npz_source.load_npz_dataset(_save(tmp_path / "bad.npz", **a))
    assert needle in str(err.value) and "fix" in str(err.value) or needle in str(err.value)
    assert "\n" not in str(err.value)


def test_npz_unreadable_files(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(UsageError, match="not a readable .npz file"):
        npz_source.load_npz_dataset(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1),
             x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(UsageError, match="object arrays"):
        npz_source.load_npz_dataset(str(tmp_path / "obj.npz"))
    with pytest.raises(UsageError, match="no such file"):
        npz_source.load_npz_dataset(str(tmp_path / "absent.npz"))


def test_npz_config_keys_go_together():
    with pytest.raises(UsageError, match="data.path goes with data.dataset = 'npz'.*give data.path"):
        config_from_dict({"data": {"dataset": "npz"}, "train": {"P": [10]}})
    with pytest.raises(UsageError, match="remove data.path or set data.dataset = 'npz'"):
        config_from_dict({"data": {"dataset": "digits", "path": "x.npz"}, "train": {"P": [10]}})


@pytest.mark.slow  # trains twice; the default run keeps the npz loading and validation tests
def test_npz_of_the_digits_trains_to_the_same_numbers_as_digits(tmp_path):
    """The same images through the npz path (float pixels, explicit normalisation) give bitwise the
    same curves as the bundled digits: the user-data path changes nothing but where data comes from."""
    digits = load_dataset("digits")
    path = _save(tmp_path / "digits.npz", x_train=(digits.x_train[..., 0] / 16.0).astype(np.float32),
                 y_train=digits.y_train.astype(np.int64), x_test=(digits.x_test[..., 0] / 16.0).astype(np.float32),
                 y_test=digits.y_test.astype(np.int64))
    base = {"model": {"family": "cnn", "preset": "digits", "init_factor": 0.1},
            "train": {"P": [64], "seeds": 1, "epochs": 2, "batch_size": 32, "log_points": 2},
            "data": {"mean": list(presets.DIGITS_MEAN), "std": list(presets.DIGITS_STD)}}
    ref = run(config_from_dict({**base, "data": {**base["data"], "dataset": "digits"}}), tmp_path / "a",
              handle_signals=False)
    mine = run(config_from_dict({**base, "data": {**base["data"], "dataset": "npz", "path": path}}), tmp_path / "b",
               handle_signals=False)
    assert ref.curves.values.keys() == mine.curves.values.keys()
    for k, v in ref.curves.values.items():
        np.testing.assert_array_equal(v, mine.curves.values[k], err_msg=k)
    assert all(np.isfinite(v).all() for v in mine.curves.values.values())


@pytest.mark.parametrize("damage", ["garbage dataset_info.json", "foreign record files"])
def test_damaged_prepared_copy_is_one_line_with_the_fix(damage, tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    files, _ = _fake_raw_files("mnist", raw, np.random.default_rng(6))
    _record_checksums(monkeypatch, "mnist", files)
    _no_network(monkeypatch)
    where = Path(tfds_source.prepare_from_files("mnist", str(raw), str(tmp_path / "tfds")))
    if damage == "garbage dataset_info.json":
        (where / "dataset_info.json").write_text("{not json")
    else:  # another dataset's (here: random) bytes under the record files' names
        for f in where.glob("*.array_record-*"):
            f.write_bytes(np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UsageError) as err:
        load_dataset("mnist", str(tmp_path / "tfds"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cannot read the prepared dataset 'mnist'")
    assert "fix: delete that folder and prepare it again" in msg
    st = tfds_source.dataset_status("mnist", str(tmp_path / "tfds"))
    assert st["state"] == ("unreadable" if damage.startswith("garbage") else "ready")
    from jaxscale.data import cli as data_cli
    import argparse

    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    assert data_cli.run(parser.parse_args(["info", "--data-dir", str(tmp_path / "tfds")])) == 0
    out = capsys.readouterr().out
    assert ("mnist         unreadable" in out) == damage.startswith("garbage")
