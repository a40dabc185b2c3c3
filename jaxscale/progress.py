"""Progress display for long runs (CLI side; training itself never prints).

On a terminal one status line is rewritten in place; in a log file (CI, nohup) a line is printed at
most every ``interval`` seconds plus one per finished P, so logs stay short.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class ProgressPrinter:
    def __init__(self, stream: TextIO | None = None, interval: float | None = None):
        self.stream = stream if stream is not None else sys.stderr  # looked up now: tests swap sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self._last = 0.0
        self._test_err = float("nan")

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if kind == "log":
            self._test_err = ev["test_error"]
            return
        if kind == "P_done":
            self._emit(f"P={ev['P']} done ({ev['P_index'] + 1}/{ev['n_P']}) in {fmt_duration(ev['wall_s'])}, "
                       f"last test error {self._test_err:.4f}", final=True)
            self._test_err = float("nan")  # the next P has no logged error yet
            return
        now = time.monotonic()
        if now - self._last < self.interval and ev["epoch"] not in (1, ev["epochs"]):
            return
        self._last = now
        rate = ev["img_per_s"]
        rate_s = f"{rate:,.0f} img/s" if math.isfinite(rate) else "compiling"
        err_s = f"{self._test_err:.4f}" if math.isfinite(self._test_err) else "-"
        self._emit(
            f"P={ev['P']} [{ev['P_index'] + 1}/{ev['n_P']}] epoch {ev['epoch']}/{ev['epochs']} "
            f"loss {ev['loss']:.4f} test err {err_s} | {rate_s} | ETA {fmt_duration(ev['eta_s'])}"
        )

    def _emit(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
