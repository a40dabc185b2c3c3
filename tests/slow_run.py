"""`jaxscale run ...`, slowed down so a test can interrupt it mid-run.

    python tests/slow_run.py SECONDS_PER_EPOCH run CONFIG --out DIR ...

Identical to the CLI except that it first prints ``PID <pid>`` (so a test can signal this process and not
a ``timeout`` wrapper around it), and after every training epoch prints ``EPOCH <P_index> <epoch>`` and
sleeps, through the public ``on_epoch`` hook of :func:`jaxscale.experiment.run` (state untouched). The
tiny test runs take milliseconds per epoch: without this, a kill could not land mid-run reliably.
"""

from __future__ import annotations

import os
import sys
import time

import jaxscale.experiment as experiment
from jaxscale.cli import main


def _slowed(run, seconds: float):
    def slow_run(*args, **kwargs):
        def hook(pi, epoch, states):
            print(f"EPOCH {pi} {epoch}", flush=True)
            time.sleep(seconds)
            return states

        return run(*args, on_epoch=hook, **kwargs)

    return slow_run


if __name__ == "__main__":
    print(f"PID {os.getpid()}", flush=True)
    experiment.run = _slowed(experiment.run, float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
