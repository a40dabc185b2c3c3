"""Real Fashion-MNIST files on disk (Debian's `dataset-fashion-mnist` package or a copy of Zalando's
originals): prepare with tfds' checksums verified, load, and train the paper's MNIST CNN on them.

Marked `realdata`: the plain `pytest` leaves these out so a laptop without the files is not failed;
`.ci/run` installs the package and runs `pytest -m realdata`, where a missing folder is a failure.
Point JAXSCALE_FASHION_MNIST_DIR at another folder holding the four raw files to use a copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxscale.config import config_from_dict
from jaxscale.data import load_dataset, tfds_source
from jaxscale.errors import UsageError
from jaxscale.experiment import run

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parent.parent
RAW = Path(os.environ.get("JAXSCALE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def raw_dir() -> Path:
    missing = [f for f in FILES if not (RAW / f).is_file()]
    if missing:  # a failure, not a skip: this step runs only where the files are meant to be
        pytest.fail(f"Fashion-MNIST raw files {missing} not in {RAW}: `apt-get install dataset-fashion-mnist` "
                    f"or set JAXSCALE_FASHION_MNIST_DIR")
    return RAW


@pytest.fixture(scope="module")
def data_dir(raw_dir, tmp_path_factory) -> Path:
    """Prepared once through the CLI, exactly as the README says."""
    d = tmp_path_factory.mktemp("tfds")
    proc = subprocess.run([sys.executable, "-m", "jaxscale", "data", "prepare", "fashion_mnist", "--from",
                           str(raw_dir), "--data-dir", str(d)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fashion_mnist: ready in" in proc.stdout and "60000 train" in proc.stdout
    return d


def test_prepared_fashion_mnist_is_the_real_dataset(data_dir):
    ds = load_dataset("fashion_mnist", str(data_dir))
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.num_classes == 10 and ds.pixel_max == 255.0
    # Zalando's published facts: 6000 train and 1000 test images per class; mean pixel 0.2860
    assert np.bincount(ds.y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
    assert abs(ds.x_train.mean() / 255.0 - 0.2860) < 5e-4
    # the same pixels and labels as the raw IDX files (as multisets: tfds stores in hashed-key order)
    x_raw = tfds_source.read_idx_gz(RAW / "t10k-images-idx3-ubyte.gz")
    y_raw = tfds_source.read_idx_gz(RAW / "t10k-labels-idx1-ubyte.gz")
    key = lambda x, y: sorted(zip(y.tolist(), (img.tobytes() for img in x)))  # noqa: E731
    assert key(ds.x_test[..., 0], ds.y_test) == key(x_raw, y_raw)


def test_damaged_or_missing_raw_files_are_refused(raw_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(raw_dir, copy, ignore=lambda d, names: [n for n in names if n not in FILES])
    blob = bytearray((copy / "train-labels-idx1-ubyte.gz").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (copy / "train-labels-idx1-ubyte.gz").write_bytes(bytes(blob))
    (copy / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UsageError) as err:
        tfds_source.prepare_from_files("fashion_mnist", str(copy), str(tmp_path / "tfds"))
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz: missing" in msg
    assert "train-labels-idx1-ubyte.gz: 29491 bytes" in msg and "expected 29515 bytes, sha256 a04f17134ac0" in msg
    assert "train-images-idx3-ubyte.gz" not in msg.split("fix:")[0]  # the intact files pass
    assert not (tmp_path / "tfds" / "fashion_mnist").exists()


def test_readme_command_runs_on_real_files(data_dir, tmp_path):
    """`jaxscale run configs/cnn_fashion_mnist.toml --P 1000 --seeds 2 --epochs 2` (README)."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "jaxscale", "run", "configs/cnn_fashion_mnist.toml", "--P", "1000",
                           "--seeds", "2", "--epochs", "2", "--data-dir", str(data_dir), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out / "curves.npz") as f:
        assert f["test_error"].shape == (1, 2, 2) and np.isfinite(f["test_error"]).all()
        assert (f["test_error"] <= 0.95).all() and np.isfinite(f["log_spectral_complexity"]).all()


def test_paper_mnist_cnn_learns_real_fashion_mnist(data_dir, tmp_path):
    """The paper's 12.9 M-parameter MNIST CNN on real images leaves chance within 3 epochs of
    P = 1000 (init factor 1: the protocol's 0.05 sits at chance for the first ~10 epochs), and its
    spectral complexity grows while it learns, as the paper's implicit-bias picture says."""
    cfg = config_from_dict({
        "model": {"family": "cnn", "preset": "mnist", "init_factor": 1.0},
        "data": {"dataset": "fashion_mnist", "data_dir": str(data_dir)},
        "train": {"P": [1000], "seeds": 1, "seed_start": 100, "epochs": 3, "log_points": 2},
    })
    res = run(cfg, tmp_path / "learn", handle_signals=False)
    v = res.curves.values
    te, tl = v["test_error"][0, 0], v["train_loss"][0, 0]
    assert res.curves.epochs.tolist() == [1, 3]
    assert te[-1] < 0.35 and te[-1] < te[0], te      # chance is 0.9
    assert tl[-1] < tl[0] < 2.3, tl
    assert v["log_spectral_complexity"][0, 0, -1] > v["log_spectral_complexity"][0, 0, 0]
