"""What a run is doing, as events for whoever watches: the terminal of
``cicd run`` (``cicd/cli/progress_view.py``), a test.

Jobs emit these from the places every job goes through (``job_runner``,
``job.run_step``, ``services.lifecycle``); listeners render them. The job
layer knows nothing about terminals, and the CLI nothing about how a job
runs. Like ``logging``'s handlers: a process-wide list of listeners, called
synchronously in the thread that emits (a job's Prefect worker thread, when
the flow runs in this process as ``cicd run`` runs it), so listeners must be
quick and thread-safe. A listener that raises is dropped from the call, never
from the job: a broken terminal must not fail a pipeline.

Every text an event carries is masked (``cicd/masking.py``) before any
listener sees it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from cicd import masking
from cicd.results import JobResult, PipelineReport

logger = logging.getLogger("cicd.progress")


@dataclass(frozen=True)
class JobStarted:
    job: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class StepStarted:
    job: str
    step: str
    command: str  # masked
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class StepFinished:
    job: str
    step: str
    returncode: int
    duration: float
    timed_out: bool = False
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class JobFinished:
    """A job's end, also one that never ran here (served from the cache)."""

    result: JobResult  # reason masked
    at: float = field(default_factory=time.time)

    @property
    def job(self) -> str:
        return self.result.name


@dataclass(frozen=True)
class ServiceStarting:
    job: str | None
    service: str
    backend: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ServiceReady:
    job: str | None
    service: str
    seconds: float
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RunFinished:
    """The run's verdict, as soon as it is known: before its artifacts are
    published, its commit statuses posted, and Prefect's own end of the flow
    run (its final state, its heartbeat thread joined). A watcher may report
    the verdict and its exit code from here; what follows changes neither."""

    report: PipelineReport  # every job's reason masked
    at: float = field(default_factory=time.time)

    @property
    def job(self) -> None:
        return None  # the run's, no job's: views that key lines by job skip it

    @property
    def passed(self) -> bool:
        return self.report.passed


ProgressEvent = (
    JobStarted
    | StepStarted
    | StepFinished
    | JobFinished
    | ServiceStarting
    | ServiceReady
    | RunFinished
)
Listener = Callable[[ProgressEvent], None]

_listeners: list[Listener] = []
_lock = threading.Lock()
# The job a thread is running: steps and services name it without every
# caller passing it down (a job's steps run in its own worker thread).
_current = threading.local()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock, contextlib.suppress(ValueError):
        _listeners.remove(listener)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """``listener`` receives every event emitted inside the block."""
    add_listener(listener)
    try:
        yield listener
    finally:
        remove_listener(listener)


def emit(event: ProgressEvent) -> None:
    with _lock:
        listeners = tuple(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            logger.exception("a progress listener failed on %s", type(event).__name__)


def current_job() -> str | None:
    name: str | None = getattr(_current, "job", None)
    return name


@contextlib.contextmanager
def job_running(name: str) -> Iterator[None]:
    """Mark this thread as running job ``name`` (emits JobStarted)."""
    previous = current_job()
    _current.job = name
    emit(JobStarted(name))
    try:
        yield
    finally:
        _current.job = previous


@contextlib.contextmanager
def acting_for(name: str | None) -> Iterator[None]:
    """Mark this thread as working for job ``name``, started in another thread
    (a job's tools side by side): its steps are that job's."""
    previous = current_job()
    _current.job = name
    try:
        yield
    finally:
        _current.job = previous


def step_started(step: str, command: str) -> None:
    emit(StepStarted(current_job() or "", step, masking.mask(command)))


def step_finished(step: str, returncode: int, duration: float, timed_out: bool) -> None:
    emit(StepFinished(current_job() or "", step, returncode, duration, timed_out))


def job_finished(result: JobResult) -> None:
    emit(JobFinished(replace(result, reason=masking.mask(result.reason))))


def service_starting(service: str, backend: str) -> None:
    emit(ServiceStarting(current_job(), service, backend))


def service_ready(service: str, seconds: float) -> None:
    emit(ServiceReady(current_job(), service, seconds))


def run_finished(report: PipelineReport) -> None:
    jobs = tuple(replace(job, reason=masking.mask(job.reason)) for job in report.jobs)
    emit(RunFinished(replace(report, jobs=jobs)))
