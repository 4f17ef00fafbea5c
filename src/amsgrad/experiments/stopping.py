"""How a long job stops when asked: SIGINT (Ctrl-C) and SIGTERM become a flag, not an exception.

Python turns Ctrl-C into a ``KeyboardInterrupt`` raised wherever the main thread happens to
be. Raised inside a compiled parallel loop (numba), in the middle of a database write or of a
file being saved, it crashes the process or leaves half-written results. :class:`StopOnSignal`
installs handlers that only record the first signal; the experiments check the flag between
chunks of work (a fraction of a second apart), finish the chunk, and return what they have,
so that the command can save it and close its runs.

A second signal means "now": the handler raises :class:`Abort` (a ``BaseException``, so that
no ``except Exception`` swallows it), and the command closes its runs as KILLED and exits at
once, saving only what is already on disk. Further signals are ignored while it does so.

Compiled code must never see such an exception: numba's parallel loops call back into the
interpreter, which runs pending signal handlers, and an exception raised there crashes the
call (``SystemError: ... returned a result with an exception set``). Chunks of compiled work
therefore run inside :func:`native_section`, which holds any exception a signal raises (an
:class:`Abort`, or a plain Ctrl-C's ``KeyboardInterrupt``) until the chunk has returned.

>>> import os, signal
>>> with StopOnSignal() as stop:
...     before = stop()
...     os.kill(os.getpid(), signal.SIGTERM)
...     after = stop(), stop.signal_name, stop.exit_status
>>> before, after
(False, (True, 'SIGTERM', 143))
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["Abort", "StopOnSignal", "native_section", "never", "SIGNALS"]

#: The signals that stop a job: Ctrl-C, ``kill``/a scheduler's timeout, and a closed terminal.
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def never() -> bool:
    """A ``should_stop`` that never asks to stop."""
    return False


class Abort(BaseException):
    """A second stop signal arrived: stop at once, without finishing the current work."""

    def __init__(self, signum: int):
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}")
        self.signum = signum


class StopOnSignal:
    """Within ``with``, the first SIGINT/SIGTERM/SIGHUP sets a flag; the second raises :class:`Abort`.

    The object is the ``should_stop`` callable the experiments take. Outside the main thread
    (where Python cannot install handlers) it changes nothing and never asks to stop.

    Args:
        on_first: called (in the main thread) when the first signal arrives, e.g. to print
            "stopping…" on a terminal.
        ignore_after_stop: once a signal has arrived, leave the handlers in place when the
            ``with`` ends, ignoring any later signal (for a command that is about to exit).
    """

    def __init__(self, on_first: Callable[[int], None] | None = None, ignore_after_stop: bool = False):
        self.signum: int | None = None
        self.aborted = False
        self._on_first = on_first
        self._ignore_after_stop = ignore_after_stop
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def exit_status(self) -> int:
        """128 + the first signal's number, as a shell reports a process the signal ended (130, 143)."""
        return 128 + int(self.signum) if self.signum is not None else 0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.aborted:
            return  # a third signal: the command is already ending as fast as it can
        if self.signum is not None:
            self.aborted = True
            _raise_when_safe(Abort(signum))
            return
        self.signum = signum
        if self._on_first is not None:
            self._on_first(signum)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._ignore_after_stop and self.signum is not None:
            # A stopped command is ending: later signals are ignored, rather than met by Python's
            # default, which would end the process with a traceback or by the signal. The handler
            # alone is not enough: while the interpreter shuts down it puts back SIG_DFL wherever
            # a Python handler was installed (but leaves SIG_IGN), so a signal then would kill it.
            self.aborted = True
            if threading.current_thread() is threading.main_thread():
                for signum in self._previous:
                    signal.signal(signum, signal.SIG_IGN)
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


# Compiled sections in progress (main thread), and the exception a signal raised meanwhile.
_depth = 0
_held: list[BaseException] = []


def _raise_when_safe(error: BaseException) -> None:
    if _depth:
        _held[:] = [error]
        return
    raise error


def _hold_keyboard_interrupt(signum: int, frame: Any) -> None:
    _raise_when_safe(KeyboardInterrupt())


@contextmanager
def native_section() -> Iterator[None]:
    """Run compiled code with exceptions from signal handlers held until it returns.

    Within it, Python's default Ctrl-C handler is replaced by one that holds the
    ``KeyboardInterrupt``, and :class:`StopOnSignal` holds its :class:`Abort`; either is
    raised when the outermost section ends.
    """
    global _depth
    swapped = False
    if _depth == 0 and threading.current_thread() is threading.main_thread():
        swapped = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if swapped:
            signal.signal(signal.SIGINT, _hold_keyboard_interrupt)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if swapped:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if _depth == 0 and _held:
        error = _held.pop()
        _held.clear()
        raise error


def stderr_note(prog: str) -> Callable[[int], None]:
    """An ``on_first`` that tells a person at a terminal what is happening (silent off a terminal)."""

    def note(signum: int) -> None:
        if sys.stderr.isatty():
            name = signal.Signals(signum).name
            print(f"\n{prog}: {name}: stopping and saving what was computed (press Ctrl-C again to quit at once)",
                  file=sys.stderr, flush=True)

    return note
