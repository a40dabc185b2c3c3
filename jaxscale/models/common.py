"""Small helpers shared by the model families: conv geometry and argument checks."""

from __future__ import annotations

from jaxscale.errors import UsageError

Padding = tuple[tuple[int, int], tuple[int, int]]


def conv_output_hw(
    hw: tuple[int, int], kernel: int, stride: int, padding: Padding
) -> tuple[int, int]:
    """Spatial output ``(H, W)`` of a conv/pool with square ``kernel``, ``stride`` and explicit padding.

    Same floor rule as PyTorch's Conv2d/MaxPool2d and Flax's explicit/VALID padding.
    """
    (pt, pb), (pl, pr) = padding
    h = (hw[0] + pt + pb - kernel) // stride + 1
    w = (hw[1] + pl + pr - kernel) // stride + 1
    return (h, w)


def require(condition: bool, message: str) -> None:
    """Raise :class:`UsageError` with ``message`` (problem + fix, one line) unless ``condition``."""
    if not condition:
        raise UsageError(message)
