"""The job interface: what every CI job (quality, a test suite, a matrix entry,
benchmarks, build, publish, the LLM budget) is to the pipelines.

In the spirit of pre-commit's ``lang_base.py``: a commented Protocol that the
plugins implement, kept apart from the registry (``tasks/all_jobs.py``) and
from the one place that turns a job into a Prefect task
(``tasks/job_runner.py``). A job does its work in ``run``; it does not know
about Prefect, caching, retries or artifacts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from cicd import command
from cicd.errors import CicdError
from cicd.results import JobResult, JobState, StepResult
from cicd.runs import PipelineRun
from cicd.sandbox import kill_note
from cicd.sandbox_step import confine_step
from tasks import progress
from tasks.core_shares import SHARES
from tasks.step_logs import StepLog, run_logger


@dataclass(frozen=True)
class JobInputs:
    """Everything that decides a job's result; the cache key is made of these.

    ``source`` is the fingerprint of the commit's files (``cicd.changes``):
    ``None`` means the job must run afresh every time (nightly, release, LLM
    suites) and is never cached. ``config`` is the job's own configuration,
    ``environment`` the key of the environment it runs in, ``services`` the
    configuration of the services it starts, ``extra`` anything else
    (variables, flags). Values must be JSON-serialisable or pydantic models.
    """

    source: str | None
    config: Any = None
    environment: str | None = None
    services: Any = None
    extra: Any = None


class Job(Protocol):
    # The job's name in reports and ``--json`` ("quality", "unit", "matrix-py3.12").
    @property
    def name(self) -> str: ...

    # The Prefect task name of this kind of job ("quality", "tests", "build").
    kind: ClassVar[str]

    # Bump when what ``run`` computes or stores changes (a new step, count or
    # field): a result cached by an older implementation is then not served.
    version: ClassVar[str]

    # The job's time budget in seconds, for all its steps together.
    @property
    def timeout(self) -> float: ...

    # What decides the result (see JobInputs).
    def inputs(self) -> JobInputs: ...

    # Do the work. Return the verdict; raise ``JobSkipped`` when the job does
    # not apply here, an ``InfrastructureError`` when something outside the
    # target failed (it is retried), any other ``CicdError`` for a failure
    # with a reason. Every other exception is a bug of ours, reported as such.
    def run(self, context: JobContext) -> JobResult: ...


class JobSkipped(CicdError):
    """The job does not apply (e.g. a Python version this worker lacks)."""


class Deadline:
    """A job's time budget, shared by its steps."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0


@dataclass(frozen=True)
class JobContext:
    """What a job runs with: its pipeline run (logs, reports) and its deadline."""

    run: PipelineRun
    workspace: Path
    deadline: Deadline

    def log(self, job: str) -> Path:
        return self.run.log(job)


def run_step(
    name: str,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    deadline: Deadline,
    log_path: Path | None = None,
    job: str | None = None,
    shown: str | None = None,
) -> StepResult:
    """One command of a job, within what is left of the job's deadline.

    The command and, live, its output go to the run's logs (``tasks.step_logs``,
    bounded per step; ``log_path`` keeps the whole output, named by the job
    ``job``, default the log file's name). ``shown``: what the live view and
    the run's log say the step runs, when ``argv`` wraps a command a user knows
    (the log file and the result keep ``argv`` itself).

    Raises ``command.Cancelled`` when the run is being torn down, also when the
    command was killed by that teardown: its exit status is not a verdict.
    """
    if deadline.expired:
        return StepResult(name, " ".join(argv), -1, 0.0, timed_out=True, output_tail="not started")
    progress.step_started(name, shown or " ".join(argv))
    started = time.monotonic()
    job_name = job or (log_path.stem if log_path is not None else "job")
    live = StepLog(job_name, name, shown or " ".join(argv), log_path, run_logger())
    try:
        # A share of the cores (tasks/core_shares.py), then confined
        # (cicd/sandbox.py): the step sees its workspace, not the worker.
        with SHARES.step(job_name, timeout=deadline.remaining()) as granted:
            if not granted:
                return _not_started(name, argv, started, "no core was free before the deadline")
            with confine_step(argv, cwd, env) as (confined_argv, confined_env):
                result = command.run(
                    confined_argv,
                    cwd=cwd,
                    env=confined_env,
                    timeout=deadline.remaining(),
                    log_path=log_path,
                    on_line=live.line,
                )
    except FileNotFoundError as exc:
        live.logger.error("%s: %s", live.prefix, exc)
        progress.step_finished(name, 127, time.monotonic() - started, False)
        return StepResult(name, " ".join(argv), 127, 0.0, output_tail=str(exc))
    except BaseException:
        progress.step_finished(name, -1, time.monotonic() - started, False)
        raise
    live.ended(result)
    progress.step_finished(name, result.returncode, result.duration, result.timed_out)
    if not result.ok and command.closed():
        raise command.Cancelled(f"{name} was stopped: the run is shutting down")
    return StepResult(
        name=name,
        command=" ".join(argv),
        returncode=result.returncode,
        duration=result.duration,
        timed_out=result.timed_out,
        output_tail=result.tail(40),
    )


def _not_started(name: str, argv: Sequence[str], started: float, why: str) -> StepResult:
    waited = time.monotonic() - started
    progress.step_finished(name, -1, waited, True)
    return StepResult(name, " ".join(argv), -1, waited, timed_out=True, output_tail=why)


def state_of(steps: Sequence[StepResult]) -> JobState:
    if any(step.timed_out for step in steps):
        return JobState.TIMED_OUT
    if any(not step.ok for step in steps):
        return JobState.FAILED
    return JobState.PASSED


def failure_reason(steps: Sequence[StepResult], deadline: Deadline) -> str:
    timed_out = [s.name for s in steps if s.timed_out]
    if timed_out:
        return f"timed out after {deadline.seconds:.0f}s in {timed_out[0]}; {kill_note()}"
    failed = [f"{s.name} (exit {s.returncode})" for s in steps if not s.ok]
    return ", ".join(failed)
