"""The run directory is a record nothing damages, and every bad input or failed write is one line
(exit 2): refused resumes, --restart, half-written results, concurrent runs, full disks, corrupt
checkpoints, stop requests between two Ps, and the one-line message of every malformed flag."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxscale import experiment
from jaxscale.cli import main
from jaxscale.config import config_from_dict, to_toml
from jaxscale.errors import UsageError
from jaxscale.io import DirectoryLock
from jaxscale.results import Curves
from jaxscale.train import build_experiment, run_experiment
from jaxscale.train.checkpoint import CHECKSUM_FILE, Checkpoints
from jaxscale.train.preemption import Interrupted, StopFlag
from scale_helpers import REPO

#: one P, one seed, one epoch: the smallest run that trains, logs and checkpoints
TINY = {"name": "tiny", "model": {"family": "cnn", "preset": "tiny"}, "data": {"dataset": "digits"},
        "train": {"P": [40], "seeds": 1, "epochs": 1, "batch_size": 32, "log_points": 1},
        "checkpoint": {"every_minutes": 0}}


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (and every folder, as "dir")."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("jaxscale: error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def tiny(tmp_path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(to_toml(config_from_dict(TINY)))
    return p


# ------------------------------------------------------------------------------------------------
# The record: refused resume, --restart, the lock


def _fake_checkpoint(out: Path, config: dict) -> None:
    ck = Checkpoints(out / "checkpoints", keep=2)
    ck.save(1, {"w": jnp.zeros((2, 3))}, {"test_error": np.zeros((1, 2, 3))},
            {"P_index": 0, "epoch": 1, "seeds_padded": 2, "config": config})
    ck.close()


def test_refused_resume_leaves_the_directory_unchanged(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    _fake_checkpoint(out, {"train": {"lr": 1.0}})
    (out / "config.toml").write_text("the config that made the checkpoints\n")
    before = tree_digest(out)
    assert main(["run", str(tiny), "--out", str(out), "--quiet", "--set", "train.lr=0.5"]) == 2
    assert "different training config" in capsys.readouterr().err
    assert tree_digest(out) == before  # config.toml not rewritten with the refused settings


def test_restart_removes_only_what_jaxscale_wrote(tmp_path):
    out = tmp_path / "run"
    (out / "analysis").mkdir(parents=True)
    (out / "checkpoints" / "12").mkdir(parents=True)
    (out / "checkpoints" / "12" / "meta").write_text("x")
    (out / "checkpoints" / "13.orbax-checkpoint-tmp-99").mkdir()
    for name in ("curves.npz", "manifest.json", "config.toml", "analysis/report.md", "analysis/curves.png",
                 "analysis/analysis.json"):
        (out / name).write_text("old run")
    mine = {"notes.txt": "mine", "analysis/my_figure.png": "mine", "checkpoints/README": "mine"}
    (out / "checkpoints" / "keep_me").mkdir()
    for name, text in mine.items():
        (out / name).write_text(text)
    experiment.clear_run_dir(out)
    assert tree_digest(out) == {"analysis": "dir", "analysis/my_figure.png": tree_digest(out)["analysis/my_figure.png"],
                                "checkpoints": "dir", "checkpoints/README": tree_digest(out)["checkpoints/README"],
                                "checkpoints/keep_me": "dir", "notes.txt": tree_digest(out)["notes.txt"]}
    (out / "analysis" / "my_figure.png").unlink()
    experiment.clear_run_dir(out)
    assert not (out / "analysis").exists()  # an analysis folder left empty goes


def _hold_lock(directory: Path) -> subprocess.Popen:
    code = ("import sys,time; from jaxscale.io import DirectoryLock; DirectoryLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_on_a_directory_in_use_is_refused_and_a_killed_holder_frees_it(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        before = tree_digest(out)
        assert main(["run", str(tiny), "--out", str(out), "--quiet"]) == 2
        line = one_error_line(capsys)
        assert "in use by another jaxscale run" in line and f"pid {holder.pid}" in line
        assert tree_digest(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    DirectoryLock(out).acquire().release()  # the kernel dropped the dead holder's lock


def test_a_run_refused_after_claiming_an_existing_directory_leaves_it_as_it_was(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = tree_digest(out)
    cfg = config_from_dict(TINY, {"data.dataset": "mnist", "data.data_dir": str(tmp_path / "no_data")})
    with pytest.raises(UsageError):  # the dataset is missing: found only once run() builds the experiment
        experiment.run(cfg, out, handle_signals=False)
    assert tree_digest(out) == before  # no lock file, no checkpoints folder
    experiment.check_run_dir(out)
    assert tree_digest(out) == before


def test_out_naming_a_file_or_a_path_under_a_file_is_refused(tiny, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    for out, needle in ((f, "is a file"), (f / "sub", "lies under the file")):
        assert main(["run", str(tiny), "--out", str(out), "--quiet"]) == 2
        assert needle in one_error_line(capsys)
        assert main(["perceptron", "run", str(REPO / "configs" / "perceptron.toml"), "--out", str(out)]) == 2
        assert needle in one_error_line(capsys)
    assert f.read_text() == "x"


# ------------------------------------------------------------------------------------------------
# Half-written results finish without training; arch overrides train; corrupt unverified checkpoints


def test_half_written_results_are_finished_by_a_rerun_without_training(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["run", str(tiny), "--out", str(out), "--quiet", "--set", "model.arch.convs=[2, 4]"]

    def full_disk(path, manifest):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(experiment, "write_manifest", full_disk)
    assert main(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("jaxscale: error: No space left on device") and "re-run the same command" in line
    assert (out / "curves.npz").is_file() and not experiment.is_finished(out)
    first = Curves.load(out)
    spare = tmp_path / "spare"
    shutil.copytree(out, spare)
    monkeypatch.undo()

    assert main(args) == 0  # not "already finished": the manifest is missing
    err = capsys.readouterr().err
    assert "resuming from checkpoint 1: P=40 (1/1) complete" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resolved"]["model_hyper"]["convs"] == [2, 4]  # the [model.arch] override trained
    assert manifest["resumed_from"] == {"step": 1, "P": 40, "epoch": 1}
    for k, v in Curves.load(out).values.items():
        np.testing.assert_array_equal(v, first.values[k])
    assert not (out / "checkpoints").exists()

    # the same final checkpoint without its checksum file and with its data destroyed: unusable, so the
    # rerun says so, deletes it and trains again (no zarr traceback)
    step = spare / "checkpoints" / "1"
    (step / CHECKSUM_FILE).unlink()
    for p in step.rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"garbage")
    assert main([*args[:3], str(spare), *args[4:]]) == 0
    err = capsys.readouterr().err
    assert "is unusable" in err and "skipped and deleted" in err
    assert experiment.is_finished(spare)
    for k, v in Curves.load(spare).values.items():
        np.testing.assert_array_equal(v, first.values[k])


def test_a_checkpoint_the_disk_cannot_hold_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    import shutil as shutil_mod

    from jaxscale.train import checkpoint

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: shutil_mod._ntuple_diskusage(10, 10, 10))
    ck = Checkpoints(tmp_path / "ck")
    with pytest.raises(OSError) as e:
        ck.save(1, {"w": jnp.zeros((4, 4))}, {"test_error": np.zeros((1, 1, 1))}, {})
    assert e.value.errno == errno.ENOSPC
    ck.close()
    assert ck.steps() == []


def test_orbax_write_errors_become_os_errors(tmp_path):
    ck = Checkpoints(tmp_path / "ck")
    with pytest.raises(OSError) as e:
        with ck._disk_errors():
            raise ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device [os_error_code='28']")
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(KeyError):  # anything else is left alone
        with ck._disk_errors():
            raise KeyError("x")
    ck.close()


def test_plots_on_a_full_disk_are_one_line(tmp_path, capsys, monkeypatch):
    from jaxscale.analysis import plots

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots, "atomic_write_bytes", full_disk)
    ref = REPO.parent / "shared" / "reference" / "curves" / "CNN_CIFAR10.npz"
    if not ref.is_file():
        ref = Path("/work/shared/reference/curves/CNN_CIFAR10.npz")
    assert main(["analyze", str(ref), "--plots", str(tmp_path / "figs")]) == 2
    assert "No space left on device" in one_error_line(capsys)


# ------------------------------------------------------------------------------------------------
# Stop requests at a P boundary


def test_stop_between_two_Ps_saves_the_finished_P_without_starting_the_next(tmp_path):
    cfg = config_from_dict(TINY, {"train.P": [40, 70]})
    stop = StopFlag()
    events = []

    def progress(ev):
        events.append(ev)
        if ev["event"] == "P_done":  # the signal lands after P=40's last epoch-boundary check
            stop.request(signal.SIGTERM)

    ck = Checkpoints(tmp_path / "ck", keep=2)
    with pytest.raises(Interrupted) as e:
        run_experiment(build_experiment(cfg), progress=progress, checkpoints=ck, resume=None, stop=stop)
    ck.close()
    assert (e.value.P, e.value.epoch) == (40, 1)
    assert not any(ev.get("P") == 70 for ev in events)  # nothing of the next P ran
    assert ck.steps() == [1]


# ------------------------------------------------------------------------------------------------
# Config values and flags: one line each


@pytest.mark.parametrize("flags, needle", [
    (["--set", "train=3"], "train must be a table"),
    (["--set", "train.lr.x=3"], "train.lr"),
    (["--set", "train.batch_size.x=3"], "train.batch_size is a value, not a table"),
    (["--set", "train.weight_decay=nan"], "train.weight_decay must be a finite number"),
    (["--set", "data.std=[inf]", "--set", "data.mean=[0.0]"], "must be a finite number"),
    (["--set", "train.seeds=99999999999"], "out of range"),
    (["--P", "70,40"], "is not increasing"),
    (["--P", "40,40"], "duplicates"),
    (["--set", 'name="../../x"'], "not a valid run name"),
    (["--set", 'name=""'], "not a valid run name"),
    (["--set", "model.arch.channels=[16, 32]"], "unknown cnn option 'channels'"),
])
def test_bad_values_are_one_line(tiny, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    assert main(["run", str(tiny), "--out", str(out), "--quiet", *flags]) == 2
    assert needle in one_error_line(capsys)
    assert not out.exists()


def test_non_utf8_configs_and_the_wrong_command(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'name = "x"\n\xff\xfe = 1\n')
    for cmd in (["run"], ["perceptron", "run"]):
        assert main([*cmd, str(bad)]) == 2
        assert "not UTF-8" in one_error_line(capsys)
    assert main(["run", str(REPO / "configs" / "perceptron.toml")]) == 2
    assert "jaxscale perceptron run" in one_error_line(capsys)
    assert main(["perceptron", "run", str(REPO / "configs" / "quickstart.toml")]) == 2
    assert "`jaxscale run" in one_error_line(capsys)


def test_coordinator_address_and_timeout(tiny, capsys):
    assert main(["run", str(tiny), "--coordinator", "nohost:abc", "--num-processes", "2", "--process-id", "1"]) == 2
    assert "HOST:PORT" in one_error_line(capsys)
    t0 = time.monotonic()
    assert main(["run", str(tiny), "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1",
                 "--coordinator-timeout", "1"]) == 2
    assert time.monotonic() - t0 < 20
    assert "no coordinator answered at 127.0.0.1:1 within 1 s" in capsys.readouterr().err


def _run_dir_with_curves(tmp_path: Path, test_error: np.ndarray) -> Path:
    d = tmp_path / "r"
    d.mkdir()
    nP, nS, nT = test_error.shape
    logn = np.log(np.broadcast_to(np.arange(1, nT + 1, dtype=float), test_error.shape)) + np.arange(nP)[:, None, None]
    Curves(P=np.arange(1, nP + 1) * 100, seeds=np.arange(nS), epochs=np.arange(1, nT + 1),
           values={"train_error": test_error, "test_error": test_error, "train_loss": test_error,
                   "test_loss": test_error, "log_spectral_complexity": logn}).save(d / "curves.npz")
    return d


@pytest.mark.parametrize("flags, needle", [
    (["--seed", "-1"], "--seed -1 is negative"),
    (["--bootstrap", "1000000"], "--bootstrap 1000000 is out of range"),
    (["--grid", "0,5,100000000"], "n <= 10000"),
    (["--grid", "-10,-5,10"], "--grid=VALUE"),
])
def test_analyze_flags_are_bounded(tmp_path, capsys, flags, needle):
    d = _run_dir_with_curves(tmp_path, np.full((3, 2, 5), 0.5))
    before = tree_digest(d)
    assert main(["analyze", str(d), *flags]) == 2
    assert needle in one_error_line(capsys)
    assert tree_digest(d) == before


def test_analyze_messages_name_the_real_problem(tmp_path, capsys):
    d = _run_dir_with_curves(tmp_path, np.full((3, 2, 5), np.nan))
    assert main(["analyze", str(d)]) == 2
    assert "test_error is NaN everywhere" in one_error_line(capsys)
    text = tmp_path / "t.npz"
    text.write_text("not an archive")
    assert main(["analyze", str(text)]) == 2
    assert "not a zip archive" in one_error_line(capsys)
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["analyze", str(d), "--plots", str(f)]) == 2
    assert "is a file" in one_error_line(capsys)


def test_a_stored_index_beyond_a_cut_reference_file_is_named_as_the_files(tmp_path, capsys):
    src = Path("/work/shared/reference/curves/CNN_CIFAR10.npz")
    src = src if src.is_file() else REPO.parent / "shared" / "reference" / "curves" / "CNN_CIFAR10.npz"
    with np.load(src, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    nP = len(a["P_arr"]) if "P_arr" in a else None
    if nP is None:
        pytest.fail(f"reference keys changed: {sorted(a)}")
    cut = {k: (v[:1] if v.ndim >= 1 and v.shape[0] == nP and k != "log_x_grid" else v) for k, v in a.items()}
    cut["fit_min_P"] = np.asarray(2)
    np.savez(tmp_path / "cut.npz", **cut)
    assert main(["analyze", str(tmp_path / "cut.npz"), "--no-plots"]) == 2
    line = one_error_line(capsys)
    assert "stores fit_min_P = 2" in line and "--min-p 0" in line


def test_summary_counts_only_seeds_that_finished():
    te = np.full((1, 4, 3), 0.3)
    te[0, 1:, 2] = np.nan  # 3 of 4 seeds diverged before the last logged epoch
    c = Curves(P=np.array([100]), seeds=np.arange(4), epochs=np.arange(1, 4),
               values={"test_error": te, "log_spectral_complexity": np.zeros_like(te)})
    row = experiment.summary_rows(c)[0]
    assert (row["seeds_ok"], row["seeds"]) == (1, 4)
    assert "1/4" in experiment.format_summary([row])


def test_bootstrap_progress_is_shown_only_when_long(capsys):
    from jaxscale.analysis.cli import _BootstrapProgress

    quick = _BootstrapProgress()
    for b in range(5):
        quick(b, 5)
    assert capsys.readouterr().err == ""
    slow = _BootstrapProgress(quiet_s=0.0, interval_s=0.0)
    for b in range(3):
        slow(b, 3)
    assert capsys.readouterr().err.splitlines()[-1].startswith("analyze: bootstrap replicate 3/3")
