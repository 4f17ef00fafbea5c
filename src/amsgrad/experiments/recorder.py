"""The recording process: ``python -m amsgrad.experiments.recorder``, run by :class:`~.tracking.BackgroundTracker`.

It reads messages from its standard input (see :func:`~.tracking.read_frame`) and records
them with a :class:`~.tracking.Tracker`:

``("open", experiment, uri)``, then any of
``("start", handle, name, params, description, tags, parent)``,
``("metrics", handle, steps, values)``, ``("artifact", handle, path)``,
``("finish", handle, status)``, and finally ``("close",)`` or ``("abort", status)``.

It answers on its standard output with ``("ready",)`` once its signal handlers are in place,
``("started", handle, run)`` for each run it opens (its id, as the JSON reports runs),
``("error", message)`` once, when recording fails,
and ``("closed", runs, error)`` at the end. It ignores SIGINT and SIGTERM (the command decides
when to stop); SIGUSR1 means "abort is coming: skip the metric values still in the pipe". If
the command disappears without saying goodbye (its end of the pipe closes), every open run is
closed as KILLED: a run this process opened is never left RUNNING.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from .tracking import Tracker, read_frame, write_frame


def serve(stdin: Any, stdout: Any) -> int:
    skipping = False

    def skip_metrics(signum, frame) -> None:
        nonlocal skipping
        skipping = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, skip_metrics)
    write_frame(stdout, ("ready",))  # from here on SIGUSR1 is safe to send
    _warm_up()

    tracker: Tracker | None = None
    handles: dict[int, Any] = {}
    reported = False

    def report_error() -> None:
        nonlocal reported
        if tracker is not None and tracker.error is not None and not reported:
            reported = True
            write_frame(stdout, ("error", tracker.error))

    while True:
        message = read_frame(stdin)
        if message is None:  # the command is gone
            if tracker is not None:
                tracker.abort("KILLED")
            return 0
        op = message[0]
        if op == "open":
            _, experiment, uri = message
            tracker = Tracker(experiment, uri)
            tracker.connect()
        elif tracker is None:
            continue
        elif op == "start":
            _, handle, name, params, description, tags, parent = message
            if not skipping:
                run = handles[handle] = tracker.start_run(name, params, description, tags, parent=handles.get(parent))
                if run is not None:
                    write_frame(stdout, ("started", handle, tracker.describe_runs()[-1]))
        elif op == "metrics":
            if not skipping:
                _, handle, steps, values = message
                tracker.log_metrics(handles.get(handle), steps, values)
        elif op == "artifact":
            if not skipping:
                tracker.log_artifact(handles.get(message[1]), message[2])
        elif op == "finish":
            _, handle, status = message
            if not skipping:
                tracker.finish(handles.get(handle), status)
        elif op in ("close", "abort"):
            if op == "abort":
                tracker.abort(message[1])
            else:
                tracker.close()
            write_frame(stdout, ("closed", tracker.describe_runs(), tracker.error))
            return 0
        report_error()


def _warm_up() -> None:
    """Import MLflow (and its SQL store, for a local database) before the first message needs it (not pandas).

    For a local database this process also takes the artifact root that ``mlflow server`` gives
    its stores: new experiments then keep their artifacts in ``mlartifacts/`` beside the
    database, at relative locations (see :mod:`.mlflow_store`), and MLflow makes no ``mlruns``
    folder in the working directory.
    """
    import os

    from . import mlflow_store
    from .tracking import tracking_uri

    if mlflow_store.sqlite_path(tracking_uri()) is not None:
        os.environ.setdefault(mlflow_store.SERVER_ARTIFACT_ROOT_VARIABLE, mlflow_store.PROXY_ROOT)
    # MLflow imports pandas, where installed, only to offer a dataset constructor (guarded by an
    # ImportError check); recording never needs it, and importing it is a fifth of this start.
    sys.modules.setdefault("pandas", None)  # type: ignore[assignment]
    try:
        import mlflow.tracking  # noqa: F401

        if mlflow_store.sqlite_path(tracking_uri()) is not None:
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    except Exception:  # noqa: BLE001 - the "open" message reports any real problem
        pass


def main() -> int:
    return serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main())
