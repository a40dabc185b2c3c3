"""Session-wide test settings.

Many tests build the same small programs again (every ``build_experiment`` makes fresh closures, so
``jit``'s in-memory cache never sees them twice): a persistent XLA compilation cache shared by this
pytest process and the ``jaxscale`` processes it starts compiles each distinct program once per
session. A cached executable is the same executable, so every number a test checks is unchanged.
"""

from __future__ import annotations

import os

import jax
import pytest

from scale_helpers import session_dir


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    cache = str(session_dir(tmp_path_factory, "xla-cache"))
    saved = {k: os.environ.get(k) for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache  # inherited by the subprocesses tests start
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
