"""What every job shares: steps run against one deadline, and the rule that
turns a failed job into a failed Prefect task (so each job keeps its own state).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.states import Failed

from cicd import command
from cicd.results import JobResult, JobState, StepResult
from cicd.sandbox_step import confine_step

JobOutcome = JobResult | State
# A submitted job task.
JobFuture = PrefectFuture[JobOutcome]


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


def run_step(
    name: str,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    deadline: Deadline,
    log_path: Path | None = None,
) -> StepResult:
    if deadline.expired:
        return StepResult(name, " ".join(argv), -1, 0.0, timed_out=True, output_tail="not started")
    try:
        # Confined (cicd/sandbox.py): the step sees its workspace, not the worker.
        with confine_step(argv, cwd, env) as (confined_argv, confined_env):
            result = command.run(
                confined_argv,
                cwd=cwd,
                env=confined_env,
                timeout=deadline.remaining(),
                log_path=log_path,
            )
    except FileNotFoundError as exc:
        return StepResult(name, " ".join(argv), 127, 0.0, output_tail=str(exc))
    except command.Cancelled as exc:
        return StepResult(name, " ".join(argv), -15, 0.0, output_tail=str(exc))
    return StepResult(
        name=name,
        command=" ".join(argv),
        returncode=result.returncode,
        duration=result.duration,
        timed_out=result.timed_out,
        output_tail=result.tail(40),
    )


def state_of(steps: Sequence[StepResult]) -> JobState:
    if any(step.timed_out for step in steps):
        return JobState.TIMED_OUT
    if any(not step.ok for step in steps):
        return JobState.FAILED
    return JobState.PASSED


def failure_reason(steps: Sequence[StepResult], deadline: Deadline) -> str:
    timed_out = [s.name for s in steps if s.timed_out]
    if timed_out:
        return f"timed out after {deadline.seconds:.0f}s in {timed_out[0]}; process group killed"
    failed = [f"{s.name} (exit {s.returncode})" for s in steps if not s.ok]
    return ", ".join(failed)


def job_outcome(result: JobResult) -> JobOutcome:
    """What a job task returns: its result, or a Failed state carrying it.

    A Failed state marks the task failed without a traceback in the logs (a
    failing test is the job's answer, not an error of ours), and the flow
    still gets the whole result from the state's data.
    """
    if result.state.ok:
        return result
    keep_out_of_cache()
    return Failed(message=f"{result.name} {result.state.value}: {result.reason}", data=result)


def keep_out_of_cache() -> None:
    """Tell the running task's transaction not to store its result.

    Prefect's task engine stages and commits the data of a *returned* state
    under the cache key whatever the state's type (``handle_success`` in
    ``prefect/task_engine.py``): without this a failing job's result is served
    as ``Cached`` on the next run of the same inputs and the rerun reports
    green. ``write_on_commit`` is the transaction's own switch for that write
    (https://docs.prefect.io/v3/develop/transactions).
    """
    from prefect.transactions import get_transaction

    transaction = get_transaction()
    if transaction is not None:
        transaction.write_on_commit = False


def job_result(name: str, future: Any) -> JobResult:
    """The result of a submitted job task, whatever state it ended in."""
    future.wait()
    state = future.state
    if state.is_completed():
        result: JobResult = future.result()
        if state.name == "Cached":
            return cached(result)
        return result
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, JobResult):  # a Failed state carrying the job's result
        return outcome
    message = str(outcome) if isinstance(outcome, BaseException) else (state.message or state.name)
    return JobResult(
        name=name, state=JobState.FAILED, duration=0.0, reason=f"{state.name}: {message}"
    )


def cached(result: JobResult) -> JobResult:
    """A result served from the cache keeps its own verdict.

    Only passing results are written (``tasks.jobs.keep_out_of_cache``), but a
    store written by an older version may hold a failure: it stays a failure.
    """
    if not result.state.ok:
        return replace(result, reason=f"{result.reason} (served from the Prefect cache)")
    return replace(result, state=JobState.CACHED, reason="served from the Prefect cache")


def collect(futures: Iterable[tuple[str, Any]]) -> tuple[JobResult, ...]:
    return tuple(job_result(name, future) for name, future in futures)
