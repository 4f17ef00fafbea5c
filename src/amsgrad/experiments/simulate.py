"""Running one optimizer on one problem, with either engine, as a pure function.

:func:`simulate` drives an engine chunk by chunk and returns a :class:`RunResult`: the final
iterate, the average regret R(T)/T, the time taken and the :class:`Trace` recorded every
``record_every`` steps (the step's regret, x_t and R(t)/t, as the reference records them).
A callback sees every chunk as it is produced, which is how the command line draws its
progress bar, streams the trace to disk and sends metrics to MLflow. A ``should_stop``
callable, checked between chunks (milliseconds apart with the fast engine, ~0.1 s with the
torch engine), ends the run early with the steps done so far (``completed`` is then False):
that is how the command line stops on Ctrl-C or SIGTERM (:mod:`.stopping`). A plain Ctrl-C
(``KeyboardInterrupt``) raises :class:`Interrupted`, which carries the result so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from .envelope import Envelope
from .stopping import native_section
from .variants import Settings, Variant

if TYPE_CHECKING:  # the problems module compiles with numba: loaded only by the engines
    from .problems import Problem

__all__ = ["ENGINES", "Trace", "RunResult", "Interrupted", "simulate", "make_run"]

#: The engines: ``fast`` (compiled loop) and ``torch`` (the library's optimizer classes).
ENGINES = ("fast", "torch")

#: Steps per chunk: small enough for a live progress bar and a prompt Ctrl-C.
CHUNK_STEPS = {"fast": 1_000_000, "torch": 5_000}


@dataclass
class Trace:
    """What was recorded, one entry per recorded step t.

    Attributes:
        step: t.
        regret: the step's regret :math:`f_t(x_t) - f_t(x^*)`.
        x: :math:`x_t`, the iterate the step's loss was evaluated at.
        average_regret: :math:`R(t)/t`.
    """

    step: np.ndarray
    regret: np.ndarray
    x: np.ndarray
    average_regret: np.ndarray

    @classmethod
    def empty(cls) -> Trace:
        return cls(np.empty(0, np.int64), np.empty(0), np.empty(0), np.empty(0))

    @classmethod
    def concatenate(cls, parts: list[Trace]) -> Trace:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("step", "regret", "x", "average_regret")))

    def __len__(self) -> int:
        return int(self.step.size)


@dataclass
class RunResult:
    """One optimizer's run on one problem.

    Attributes:
        variant, problem, settings: what ran.
        engine: ``"fast"`` or ``"torch"``.
        steps: the steps asked for; ``steps_done`` is fewer when the run was interrupted.
        final_x: the iterate after the last step done.
        average_regret: R(T)/T over the steps done.
        seconds: wall time of the steps.
        trace: the recorded points.
        envelope: every step, summarised per log-spaced bin (what the plots draw).
    """

    variant: Variant
    problem: Problem
    settings: Settings
    engine: str
    steps: int
    steps_done: int
    final_x: float
    average_regret: float
    seconds: float
    trace: Trace = field(repr=False)
    envelope: Envelope = field(default_factory=Envelope.empty, repr=False)

    @property
    def completed(self) -> bool:
        return self.steps_done == self.steps

    @property
    def steps_per_second(self) -> float | None:
        """The throughput of the run: steps done over its wall time."""
        return self.steps_done / self.seconds if self.seconds > 0 else None

    def summary(self) -> dict:
        """The result as the command line's JSON reports it."""
        return {
            "optimizer": self.variant.name,
            "label": self.variant.label,
            "final_x": self.final_x,
            "average_regret": self.average_regret,
            "seconds": round(self.seconds, 6),
            "steps_done": self.steps_done,
            "steps_per_second": self.steps_per_second,
        }


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`simulate`; ``result`` holds the steps done until then."""

    def __init__(self, result: RunResult):
        super().__init__(f"interrupted after {result.steps_done} of {result.steps} steps")
        self.result = result


class EngineRun(Protocol):
    """What :func:`simulate` needs of an engine (see ``FastRun`` and ``TorchRun``)."""

    t: int

    @property
    def x(self) -> float: ...

    @property
    def regret_sum(self) -> float: ...

    def advance(self, count: int, record_every: int) -> Trace: ...

    def flush(self) -> Trace: ...

    def envelope(self) -> Envelope: ...


def make_run(engine: str, problem: Problem, variant: Variant, settings: Settings) -> EngineRun:
    """A fresh run of ``variant`` on ``problem`` with the named engine."""
    if engine == "fast":
        from .fast_engine import FastRun

        return FastRun(problem, variant, settings)
    if engine == "torch":
        from .torch_engine import TorchRun

        return TorchRun(problem, variant, settings)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def simulate(
    problem: Problem,
    variant: Variant,
    settings: Settings,
    steps: int,
    *,
    engine: str = "fast",
    record_every: int = 1000,
    chunk_steps: int | None = None,
    on_chunk: Callable[[Trace, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_trace: bool = True,
) -> RunResult:
    """Run ``variant`` for ``steps`` steps of ``problem``; return the result.

    Args:
        problem, variant, settings: what to run.
        steps: T, the number of steps (>= 1).
        engine: ``"fast"`` or ``"torch"``.
        record_every: record every this many steps (the reference: 1,000); 0 records nothing.
        chunk_steps: steps per chunk (default: per engine).
        on_chunk: called after every chunk with the chunk's trace and the chunk's step count.
        should_stop: checked before every chunk; when it returns True the run ends there.
        keep_trace: keep the recorded points in the result (False: only ``on_chunk`` sees them,
            so that memory stays bounded however many points a long run records).

    Raises:
        Interrupted: on Ctrl-C, with the result of the steps done.

    >>> from amsgrad.experiments import make_problem, variant, Settings
    >>> r = simulate(make_problem("online"), variant("amsgrad"), Settings(), 1_000_000)
    >>> r.final_x < -0.9, len(r.trace)
    (True, 1000)
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(record_every, bool) or int(record_every) != record_every or record_every < 0:
        raise ValueError(f"record_every must be an integer >= 0, got {record_every!r}")
    steps, record_every = int(steps), int(record_every)
    run = make_run(engine, problem, variant, settings)
    chunk = chunk_steps or CHUNK_STEPS[engine]
    parts: list[Trace] = []
    start = time.perf_counter()

    def result() -> RunResult:
        done = run.t
        return RunResult(
            variant=variant,
            problem=problem,
            settings=settings,
            engine=engine,
            steps=steps,
            steps_done=done,
            final_x=run.x,
            average_regret=run.regret_sum / done if done else float("nan"),
            seconds=time.perf_counter() - start,
            trace=Trace.concatenate(parts),
            envelope=run.envelope(),
        )

    try:
        while run.t < steps and not (should_stop is not None and should_stop()):
            count = min(chunk, steps - run.t)
            part = None
            try:
                with native_section():  # compiled code: a signal's exception waits for the chunk's end
                    part = run.advance(count, record_every)
            finally:  # a chunk that was computed is accounted for, whatever is raised at its end
                if part is not None:
                    if keep_trace:
                        parts.append(part)
                    if on_chunk is not None:
                        on_chunk(part, count)
    except KeyboardInterrupt:
        part = run.flush()  # what an interrupted chunk recorded
        if keep_trace:
            parts.append(part)
        if on_chunk is not None:
            on_chunk(part, 0)
        raise Interrupted(result()) from None
    return result()
