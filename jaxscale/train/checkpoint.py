"""Checkpoints: the whole run state on disk with orbax-checkpoint, verified by our own checksums.

A checkpoint is taken at an epoch boundary, step number ``P_index * epochs + epoch``, and holds all
that is needed to continue *exactly*: ``state``, the ensemble :class:`~jaxscale.train.state.TrainState`
of the current P, padding seeds included (the epoch's data order is ``fold_in(key, epoch)``, so nothing
else is needed); ``curves``, the learning curves logged so far (all P), float64 ``[nP, S, nT]`` per
metric; ``meta``: P index, epoch, layout, the training config it belongs to and the run statistics.

orbax writes asynchronously and atomically (an interrupted save leaves only a temporary folder,
removed at the next start) but does **not** detect corrupted or truncated files (TOOLCHAIN.md). So once
a save is committed, process 0 writes ``jaxscale_sha256.json`` into the step directory: the SHA-256 of
every file in it. On resume the newest checkpoint whose files all match is used; newer ones that fail
are reported, deleted and skipped. One without the checksum file (the process died between the commit
and the checksum) is used only when no verified one exists, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np

from jaxscale.io import save_json_atomic
from jaxscale.train import distributed

CHECKSUM_FILE = "jaxscale_sha256.json"
#: the folder an interrupted orbax save leaves behind
ORBAX_TMP = re.compile(r"\d+\.orbax-checkpoint-tmp.*")
#: free space a checkpoint save leaves beyond its own size (bytes)
SPACE_MARGIN = 1 << 20
_NO_CHECKSUM = "no checksum file"


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped or used without verification."""


def file_digests(step_dir: Path) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of every file under ``step_dir`` except the checksum file."""
    out = {}
    for p in sorted(step_dir.rglob("*")):
        if p.is_file() and p.name != CHECKSUM_FILE:
            with open(p, "rb") as f:
                out[str(p.relative_to(step_dir))] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def verify(step_dir: Path) -> Optional[str]:
    """``None`` if every file of the checkpoint matches its recorded checksum, else the reason."""
    try:
        recorded = json.loads((step_dir / CHECKSUM_FILE).read_text())["sha256"]
    except FileNotFoundError:
        return _NO_CHECKSUM
    except (ValueError, KeyError, TypeError):
        return "unreadable checksum file"
    actual = file_digests(step_dir)
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            return f"file {name} is missing"
        if name not in recorded:
            return f"unexpected file {name}"
        if actual[name] != recorded[name]:
            return f"file {name} does not match its checksum (corrupted or truncated)"
    return None


class Checkpoints:
    """The checkpoints of one run directory (``<out>/checkpoints``).

    Args:
      directory: where step directories live (created if needed).
      keep: how many of the newest checkpoints to keep.
      every_epochs, every_minutes: the periodic policy of :meth:`due` (0 = that rule off).
      warn: receives one-line warnings (skipped checkpoints); default ``warnings.warn``.
      async_save: let orbax write in the background while training continues.

    Every process of a multi-host run must create it and call its methods together.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, every_epochs: int = 0,
                 every_minutes: float = 0.0, warn: Optional[Callable[[str], None]] = None,
                 async_save: bool = True):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        self.every_epochs, self.every_minutes = every_epochs, every_minutes
        self.warn = warn or (lambda message: warnings.warn(message, CheckpointWarning, stacklevel=3))
        self._primary = distributed.is_primary()
        self._ocp = ocp
        if self._primary and self.directory.is_dir():
            # an interrupted save's temporary folder; removed here, before anything reads the directory
            # (orbax's own cleanup_tmp_directories runs in a background thread: racy)
            for p in self.directory.iterdir():
                if p.is_dir() and ORBAX_TMP.fullmatch(p.name):
                    shutil.rmtree(p, ignore_errors=True)
        self._mgr = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save))
        #: steps :meth:`choose` returned without a checksum file to verify them
        self.unverified: set[int] = set()
        self._hasher: Optional[threading.Thread] = None
        self._hash_error: Optional[BaseException] = None
        self._last_save = time.monotonic()

    def due(self, epoch: int) -> bool:
        """Whether the periodic policy asks for a checkpoint after ``epoch`` (1-based, within a P)."""
        if self.every_epochs and epoch % self.every_epochs == 0:
            return True
        return bool(self.every_minutes) and time.monotonic() - self._last_save >= 60.0 * self.every_minutes

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, curves: dict[str, np.ndarray], meta: dict) -> None:
        """Start saving (returns while orbax writes in the background); the checksum file follows
        once the save is committed."""
        self._join_hasher()
        self._check_space(state, curves)
        ocp = self._ocp
        with self._disk_errors():
            self._mgr.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                curves=ocp.args.StandardSave({k: np.asarray(v) for k, v in curves.items()}),
                meta=ocp.args.JsonSave(meta),
            ))
        self._last_save = time.monotonic()
        if self._primary:
            self._hasher = threading.Thread(target=self._finish, args=(step,), daemon=True)
            self._hasher.start()

    def _finish(self, step: int) -> None:
        try:
            self._mgr.wait_until_finished()
            step_dir = self.step_dir(step)
            if step_dir.is_dir():  # max_to_keep may already have dropped it (keep=1)
                save_json_atomic(step_dir / CHECKSUM_FILE, {"sha256": file_digests(step_dir)})
        except BaseException as e:  # reported on the main thread by _join_hasher
            self._hash_error = e

    def _join_hasher(self) -> None:
        if self._hasher is not None:
            self._hasher.join()
            self._hasher = None
        if self._hash_error is not None:
            e, self._hash_error = self._hash_error, None
            with self._disk_errors():
                raise e

    def _check_space(self, state: Any, curves: dict[str, np.ndarray]) -> None:
        """Refuse a save the disk cannot hold before orbax starts it: a save that fails half-way
        fails in orbax's background threads, which then report it noisily at exit."""
        need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
        need += sum(np.asarray(v).nbytes for v in curves.values())
        free = shutil.disk_usage(self.directory).free
        if free < 1.2 * need + SPACE_MARGIN:
            raise OSError(errno.ENOSPC, f"No space left on device for a {need / 2**20:.1f} MiB checkpoint "
                          f"({free / 2**20:.1f} MiB free)", str(self.directory))

    @contextlib.contextmanager
    def _disk_errors(self):
        """orbax reports a failed write (full disk, no permission) as a ValueError whose text carries
        the errno: raise it as the OSError it is, so callers can tell it from a bug."""
        try:
            yield
        except Exception as e:
            code = None if isinstance(e, OSError) else re.search(r"os_error_code='(\d+)'", str(e))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(self.directory)) from None

    def wait(self) -> None:
        """Block until every started save is committed and has its checksum file."""
        self._join_hasher()
        with self._disk_errors():
            self._mgr.wait_until_finished()
        distributed.barrier("jaxscale-checkpoint-wait")

    def close(self) -> None:
        """Wait for the saves in flight and stop orbax's background threads (also after a failed
        save, whose error is then raised)."""
        try:
            self.wait()
        finally:
            with contextlib.suppress(Exception):  # the save's own error is the one to report
                self._mgr.close()

    def steps(self) -> list[int]:
        """Committed steps, oldest first (uncommitted temporary folders are not steps)."""
        return sorted(self._mgr.all_steps())

    def read_meta(self, step: int) -> dict:
        """The ``meta`` item, read straight from its JSON file (orbax's ``JsonSave`` layout): no orbax
        call, so process 0 can validate on its own without the other processes joining in."""
        meta = json.loads((self.step_dir(step) / "meta" / "metadata").read_text())
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
        return meta

    def choose(self) -> Optional[tuple[int, dict]]:
        """The newest usable checkpoint as ``(step, meta)``, or ``None``. Unusable newer ones are
        reported through ``warn`` and deleted (their step numbers will be written again)."""
        chosen, bad = -1, []
        if self._primary:
            for s in reversed(self.steps()):
                reason = verify(self.step_dir(s))
                if reason is None:
                    try:
                        self.read_meta(s)
                        chosen = s
                        break
                    except Exception as e:  # noqa: BLE001 — any failure means unusable
                        reason = f"unreadable ({type(e).__name__})"
                bad.append((s, reason))
            if chosen < 0:  # the newest one without a checksum file, if any
                chosen = next((s for s, reason in bad if reason == _NO_CHECKSUM), -1)
                if chosen >= 0:
                    self.unverified.add(chosen)
                    self.warn(f"checkpoint {self.step_dir(chosen)} has no checksum file (the process was stopped "
                              "right after saving it) and no verified checkpoint exists: using it unverified")
            for s, reason in bad:
                if s > chosen:
                    self._delete(s, f"unusable ({reason})")
            if chosen < 0 and bad:
                self.warn(f"no usable checkpoint in {self.directory}: starting from scratch")
        chosen = distributed.broadcast_int(chosen)
        # every process must agree on it: a restore failure discards an unverified one everywhere
        if distributed.broadcast_int(int(chosen in self.unverified)):
            self.unverified.add(chosen)
        distributed.barrier("jaxscale-checkpoint-choose")
        self._mgr.reload()
        return None if chosen < 0 else (chosen, self.read_meta(chosen))

    def _delete(self, step: int, reason: str) -> None:
        self.warn(f"checkpoint {self.step_dir(step)} is {reason}: skipped and deleted")
        shutil.rmtree(self.step_dir(step), ignore_errors=True)

    def discard(self, step: int, reason: str) -> None:
        """Delete checkpoint ``step`` found unusable while restoring it (all processes call this)."""
        if self._primary:
            self._delete(step, reason)
        distributed.barrier("jaxscale-checkpoint-discard")
        self._mgr.reload()

    def restore_state(self, step: int, target: Any) -> Any:
        """The ensemble state of ``step``; ``target`` is a pytree of ``jax.ShapeDtypeStruct`` (with
        shardings) describing the saved state and where to put it."""
        args = self._ocp.args
        return self._mgr.restore(step, args=args.Composite(state=args.StandardRestore(target)))["state"]

    def restore_curves(self, step: int) -> dict[str, np.ndarray]:
        """The curves logged up to ``step`` (host arrays)."""
        args = self._ocp.args
        r = self._mgr.restore(step, args=args.Composite(curves=args.StandardRestore()))
        return {k: np.asarray(v) for k, v in r["curves"].items()}


def wipe(directory: str | Path) -> None:
    """Delete the checkpoints of a run directory: its step folders (digits) and orbax's temporary
    folders of interrupted saves only (anything else a user put there stays, and the folder goes
    only once empty); process 0 only, the others wait."""
    directory = Path(directory)
    if distributed.is_primary() and directory.is_dir():
        for p in directory.iterdir():
            if p.is_dir() and (p.name.isdecimal() or ORBAX_TMP.fullmatch(p.name)):
                shutil.rmtree(p)
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty
    distributed.barrier("jaxscale-checkpoint-wipe")
