"""Train functions for the grid tests, importable by Dask's worker processes."""

from __future__ import annotations

import os
import signal
import time

from amsgrad.experiments.realdata.training import train


def slow_train(config, data, should_stop=None, on_progress=None):
    """:func:`train`, pausing 0.2 s at each record, so that a test can act while runs are going."""

    def progress(step, values):
        if on_progress is not None:
            on_progress(step, values)
        time.sleep(0.2)

    return train(config, data, should_stop=should_stop, on_progress=progress)


def crash_on_seed_1(config, data, should_stop=None, on_progress=None):
    """Kill this worker process (as the kernel's OOM killer would) on every run with seed 1."""
    if config.seed == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return train(config, data, should_stop=should_stop, on_progress=on_progress)


def must_not_run(config, data, should_stop=None, on_progress=None):
    raise AssertionError(f"{config.key()} was run again")
