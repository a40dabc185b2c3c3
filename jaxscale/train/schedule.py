"""The paper's logging schedule (PROTOCOL §4)."""

from __future__ import annotations

import numpy as np


def logged_epochs(epochs: int, points: int = 50) -> np.ndarray:
    """Epochs (1-based, int64, sorted) at which the official code evaluates and logs.

    ``logspace(0, log10(T), points)`` truncated to int, then de-duplicated — computed exactly the same
    way, float round-off included, so ``T=500`` ends at 499 (PROTOCOL §4, §9.13)::

        logged_epochs(500)  -> [1, 2, ..., 9, 11, 12, 14, ..., 440, 499]   (40 values)
        logged_epochs(1000) -> [..., 754, 868, 1000]                         (42 values)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    vals = np.logspace(0, np.log10(epochs), points)
    return np.array(sorted(set(int(v) for v in vals)), dtype=np.int64)
