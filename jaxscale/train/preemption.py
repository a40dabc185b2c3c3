"""Preemption: SIGTERM/SIGINT ask the run to stop at the next epoch boundary, save a checkpoint and exit.

The handler only records the signal; the host loop checks it after each epoch (a half-finished epoch
cannot be resumed exactly), saves, and raises :class:`Interrupted`. The CLI turns that into one message
saying how to resume and the exit code ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), the shell
convention for "terminated by a signal". A second Ctrl-C interrupts immediately (no checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclasses.dataclass
class StopFlag:
    """Set by a signal handler (or by a caller, e.g. a test); read by the host loop at epoch ends."""

    signum: Optional[int] = None

    def request(self, signum: int = signal.SIGTERM) -> None:
        if self.signum is None:
            self.signum = int(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint.

    Attributes: ``signum``, ``P`` and ``epoch`` (the last completed epoch of that P), ``checkpoint_dir``.
    """

    def __init__(self, signum: int, P: int, epoch: int, checkpoint_dir: Optional[str]):
        self.signum, self.P, self.epoch, self.checkpoint_dir = signum, P, epoch, checkpoint_dir
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after epoch {epoch} of P={P}"
                         + (f"; checkpoint saved in {checkpoint_dir}" if checkpoint_dir else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(flag: Optional[StopFlag] = None) -> Iterator[StopFlag]:
    """Within the block, SIGTERM and SIGINT set ``flag`` instead of killing the process (a second
    SIGINT raises KeyboardInterrupt at once). Outside the main thread signals cannot be caught: the
    flag is returned unconnected. Previous handlers are restored on exit."""
    flag = flag or StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handler(signum, frame):
        if signum == signal.SIGINT and flag.requested:
            raise KeyboardInterrupt  # impatient second Ctrl-C: stop now, without a checkpoint
        flag.request(signum)

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
