"""Atomic file writes: a reader never sees a half-written results file.

Every writer goes to a temporary file in the destination directory, fsyncs it, then
``os.replace``s it onto the final name (atomic on POSIX). If the process dies mid-write,
only a ``.tmp-*`` file is left behind and the previous version (if any) is intact.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; results should get the permissions any new file would get
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` atomically (loadable with allow_pickle=False)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def save_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_bytes(path, text.encode())


def save_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a directory that can be created or written, else :class:`UsageError` (naming
    ``flag``, e.g. ``--out``); creates nothing."""
    from jaxscale.errors import UsageError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file, not a directory: choose a directory path")
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {str(path)!r} lies under the file {str(existing)!r}: choose a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r}: {str(existing)!r} is not writable: choose a writable place")
    return path


class DirectoryLock:
    """An exclusive lock on a run directory, held while a run writes to it.

    ``fcntl.flock`` on ``DIR/.jaxscale.lock``, which holds the owner's pid. The kernel releases the
    lock when its process exits in any way (kill -9 included), so it never stays stuck; the file
    itself stays (it is not the lock). A second run on the directory is refused at once, naming the
    pid of the first.
    """

    NAME = ".jaxscale.lock"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        """Take the lock (creating the lock file) and record this process's pid in it."""
        fd = self._locked(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644))
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def check(self) -> None:
        """Raise :class:`UsageError` if another process holds the lock; writes nothing."""
        if self.path.is_file():
            os.close(self._locked(os.open(self.path, os.O_RDONLY)))

    def _locked(self, fd: int) -> int:
        import fcntl

        from jaxscale.errors import UsageError

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"{self.directory} is in use by another jaxscale run (pid {holder}): wait for it to "
                             "finish or stop it, or choose another --out") from None
        return fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
