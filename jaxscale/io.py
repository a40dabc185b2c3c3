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
