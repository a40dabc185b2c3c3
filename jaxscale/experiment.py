"""The main job as a Python API: config in, run directory out.

    from jaxscale.config import load_config
    from jaxscale.experiment import run
    result = run(load_config("configs/quickstart.toml"), "runs/quickstart")
    result.curves.values["test_error"]   # [nP, nS, nT]

The CLI (`jaxscale run`) is a thin shell over :func:`run`. Running the same call again on the same
``out_dir`` after a crash, kill or preemption resumes from the newest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from jaxscale.config import Config, to_toml
from jaxscale.errors import UsageError
from jaxscale.io import DirectoryLock, check_output_dir, save_text_atomic
from jaxscale.norms import NORM_NAMES
from jaxscale.results import Curves, environment_info, write_manifest
from jaxscale.train import checkpoint as checkpoint_lib
from jaxscale.train import distributed
from jaxscale.train.loop import (EpochHook, Experiment, ProgressFn, RunStats, build_experiment, choose_resume,
                                 run_experiment)
from jaxscale.train.preemption import stop_on_signals
from jaxscale.train.sharding import Layout


@dataclasses.dataclass
class RunResult:
    out_dir: Path
    curves: Curves
    stats: RunStats
    manifest: dict


CHECKPOINT_DIR = "checkpoints"
#: written last, once every other result file is complete: its presence means "finished"
MANIFEST = "manifest.json"
RESULT_FILES = ("curves.npz", "config.toml")


def is_finished(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a finished run (its manifest, written after every other file)."""
    return (Path(out_dir) / MANIFEST).is_file()


def check_run_dir(out_dir: str | Path, restart: bool = False) -> Path:
    """The refusals of :func:`run` that need no training config, checked without writing anything:
    ``out_dir`` must be a usable directory path, not hold a finished run (unless ``restart``) and
    not be in use by another run."""
    out_dir = check_output_dir(out_dir, "--out")
    _refuse_finished(out_dir, restart)
    DirectoryLock(out_dir).check()
    return out_dir


def _refuse_finished(out_dir: Path, restart: bool) -> None:
    if not restart and is_finished(out_dir):
        raise UsageError(f"{out_dir} already holds a finished run ({MANIFEST}): pass --restart (restart=True) "
                         "to run it again from scratch, or choose another --out directory")


def run(cfg: Config, out_dir: str | Path, *, progress: Optional[ProgressFn] = None, dataset=None,
        experiment: Optional[Experiment] = None, restart: bool = False, layout: Optional[Layout] = None,
        handle_signals: bool = True, warn: Optional[Callable[[str], None]] = None,
        on_epoch: Optional[EpochHook] = None) -> RunResult:
    """Train the experiment of ``cfg`` and write ``out_dir/{config.toml, curves.npz, manifest.json}``.

    Resumes from the newest usable checkpoint in ``out_dir/checkpoints`` if there is one; checkpoints
    are saved there by ``cfg.checkpoint`` (and after the last epoch) and deleted once the results are
    written. ``manifest.json`` is written last: a directory without it is unfinished, and running again
    completes it (from the final checkpoint, without training, if only the results writes failed).
    ``restart=True`` first deletes the files jaxscale wrote there (results, ``analysis/`` outputs,
    checkpoint steps) and nothing else. A finished directory raises :class:`UsageError` unless
    ``restart``, as does a directory another run is using (see :class:`~jaxscale.io.DirectoryLock`)
    or checkpoints of another training config; a refused run changes nothing on disk.

    With ``handle_signals`` (main thread only), SIGTERM/SIGINT stop the run at the next epoch boundary
    with a checkpoint and raise :class:`~jaxscale.train.preemption.Interrupted`.

    ``experiment`` (from :func:`jaxscale.train.build_experiment`) skips the build step, e.g. when the
    caller already built it to validate the config. In a multi-host run every process calls this; only
    process 0 writes the results files and holds the lock. Every file is written atomically.
    """
    out_dir = check_output_dir(out_dir, "--out")
    ck_dir = out_dir / CHECKPOINT_DIR
    primary = distributed.is_primary()
    with _claim(out_dir, primary) as claim:
        _refuse_finished(out_dir, restart)  # again, now that the directory is ours
        if restart:
            clear_run_dir(out_dir)
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        exp = experiment or build_experiment(cfg, dataset)
        exp.batching  # plans the seed batching: a run that cannot fit is refused before anything is written
        setup_s = time.perf_counter() - t0
        c = cfg.checkpoint
        checkpoints = checkpoint_lib.Checkpoints(ck_dir, keep=c.keep, every_epochs=c.every_epochs,
                                                 every_minutes=c.every_minutes, warn=warn)
        try:
            resume = choose_resume(checkpoints, cfg)  # refuses another config before anything is written
            if primary:
                save_text_atomic(out_dir / "config.toml", to_toml(cfg))
            claim.started = True
            with contextlib.ExitStack() as stack:
                stop = stack.enter_context(stop_on_signals()) if handle_signals else None
                curves, stats = run_experiment(exp, progress=progress, layout=layout, checkpoints=checkpoints,
                                               resume=resume, stop=stop, on_epoch=on_epoch)
        finally:
            checkpoints.close()
        manifest = {
            "jaxscale_results_format": 1,
            "name": cfg.name,
            "started_utc": started,
            "config": cfg.to_dict(),
            "resolved": {
                "model_family": exp.spec.family,
                "model_hyper": dict(exp.spec.hyper),
                "input_shape": list(exp.spec.input_shape),
                "num_classes": exp.spec.num_classes,
                "n_train": exp.dataset.n_train,
                "n_test": int(exp.dataset.x_test.shape[0]),
                "ensemble_strategy": exp.strategy, "seed_batching": dataclasses.asdict(exp.batching),
                "layout": stats.layout,
                "logged_epochs": exp.epochs_logged.tolist(),
                "norms": list(NORM_NAMES),
            },
            "environment": environment_info(),
            "timing": {"setup_s": setup_s, "train_wall_s": stats.wall_s, "per_P": stats.per_P,
                       "earlier_sessions_wall_s": stats.earlier_wall_s},
            "resumed_from": stats.resumed_from,
            "nonfinite_seeds": stats.nonfinite,
        }
        if primary:
            curves.save(out_dir / "curves.npz")
            write_manifest(out_dir / MANIFEST, manifest)  # last: marks the run finished
        # results are complete: the checkpoints are no longer needed
        checkpoint_lib.wipe(ck_dir)
    return RunResult(out_dir=out_dir, curves=curves, stats=stats, manifest=manifest)


def clear_run_dir(out_dir: Path) -> None:
    """Delete what jaxscale wrote in ``out_dir`` (``--restart``): the manifest first (so an interrupted
    clean-up never looks finished), the other results, analysis outputs and checkpoint steps. Files
    and folders jaxscale did not write stay."""
    from jaxscale.analysis.cli import ANALYSIS_DIR, analysis_files

    if distributed.is_primary():
        for name in (MANIFEST, *RESULT_FILES):
            (out_dir / name).unlink(missing_ok=True)
        analysis_dir = out_dir / ANALYSIS_DIR
        for path in analysis_files(analysis_dir):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            analysis_dir.rmdir()  # only if nothing else is in it
    checkpoint_lib.wipe(out_dir / CHECKPOINT_DIR)


class _Claim:
    started = False  # set once the run has written its first file


@contextlib.contextmanager
def _claim(out_dir: Path, primary: bool):
    """Hold the run directory's lock (process 0). If the run fails before writing anything, remove
    what claiming it created (the directory, its lock file, an empty checkpoints folder), so a
    refused run leaves no trace."""
    claim = _Claim()
    if not primary:
        yield claim
        return
    created = not out_dir.exists()
    had_checkpoints = (out_dir / CHECKPOINT_DIR).exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out_dir)
    new_lock_file = not lock.path.exists()
    lock.acquire()
    try:
        yield claim
    except BaseException:
        if not claim.started:
            if new_lock_file:
                lock.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                if not had_checkpoints:
                    (out_dir / CHECKPOINT_DIR).rmdir()  # only if empty
                if created:
                    out_dir.rmdir()
        raise
    finally:
        lock.release()


def summary_rows(curves: Curves, norm: str = "spectral_complexity") -> list[dict]:
    """Per P: final and best test error (seed mean ± std), the best epoch of the mean curve, and
    λ* = the norm at each seed's own best logged epoch, averaged over seeds (PROTOCOL §6.4's l_0).
    Only the seeds that finished (finite at the last logged epoch) count: ``seeds_ok`` of ``seeds``."""
    te = curves.values["test_error"]
    key = f"log_{norm}" if f"log_{norm}" in curves.values else next(k for k in curves.values if k.startswith("log_"))
    logn = curves.values[key]
    rows = []
    for i, P in enumerate(curves.P):
        e = te[i]  # [nS, nT]
        ok = np.isfinite(e[:, -1])  # a diverged seed is NaN from then on: it did not finish
        row = {"P": int(P), "norm": key[4:], "seeds_ok": int(ok.sum()), "seeds": int(len(ok))}
        if ok.any():
            e_ok, n_ok = e[ok], logn[i][ok]
            mean_curve = np.nanmean(e_ok, axis=0)
            final = e_ok[:, -1]
            best_t = int(np.nanargmin(mean_curve))
            per_seed_best = np.array([np.nanargmin(r) for r in e_ok])
            lam = np.exp(n_ok[np.arange(len(n_ok)), per_seed_best])
            row.update(final_mean=float(np.nanmean(final)), final_std=float(np.nanstd(final)),
                       best_mean=float(mean_curve[best_t]), best_epoch=int(curves.epochs[best_t]),
                       lambda_star=float(np.nanmean(lam)))
        rows.append(row)
    return rows


def format_summary(rows: list[dict]) -> str:
    lines = [f"{'P':>8} {'final test err':>18} {'best test err':>14} {'best epoch':>10} {'λ* (' + rows[0]['norm'] + ')':>28} {'seeds':>7}"]
    for r in rows:
        if "final_mean" not in r:
            lines.append(f"{r['P']:>8} {'all seeds diverged':>18}")
            continue
        lines.append(
            f"{r['P']:>8} {r['final_mean']:>10.4f} ± {r['final_std']:.4f} {r['best_mean']:>14.4f} "
            f"{r['best_epoch']:>10d} {r['lambda_star']:>28.4g} {r['seeds_ok']:>3}/{r['seeds']:<3}"
        )
    return "\n".join(lines)
