"""What every flow does around its jobs: a run directory, cleanup that
survives failure and cancellation, collecting job results, and the gate.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cicd import command, paths
from cicd.config import PipelineConfig, SuiteConfig
from cicd.results import JobResult, JobState, PipelineFailed, PipelineReport
from tasks.git import remove_workspace

if TYPE_CHECKING:
    from tasks.git import Checkout

# What a flow returns: its report as JSON, or a Failed state carrying PipelineFailed.
FlowOutcome = Any


@dataclass
class PipelineRun:
    flow: str
    run_id: str
    directory: Path
    started: float = field(default_factory=time.monotonic)
    workspaces: list[Path] = field(default_factory=list)

    def log(self, job: str) -> Path:
        return self.directory / "logs" / f"{job}.log"

    @property
    def reports(self) -> Path:
        path = self.directory / "reports"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(
        self,
        checkout: Checkout,
        ref: str,
        jobs: Iterable[JobResult],
        sections: Iterable[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> PipelineReport:
        return PipelineReport(
            flow=self.flow,
            repo=checkout.repo,
            ref=ref,
            commit=checkout.commit,
            jobs=tuple(jobs),
            duration=self.elapsed(),
            extra=extra or {},
            sections=tuple(sections),
        )


def _flow_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.id
    except Exception:
        run_id = None
    return str(run_id) if run_id else uuid.uuid4().hex


@contextmanager
def pipeline_run(flow: str) -> Iterator[PipelineRun]:
    """Set up a run; on any exit (also cancellation) kill what it started and
    delete its workspaces. Reports and logs stay in the run directory."""
    run_id = _flow_run_id()
    directory = paths.runs() / f"{flow}-{run_id}"
    directory.mkdir(parents=True, exist_ok=True)
    run = PipelineRun(flow, run_id, directory)
    command.reopen()
    try:
        yield run
    except BaseException as exc:
        if not isinstance(exc, Exception):
            # Cancellation (Prefect's TerminationSignal), SIGTERM, Ctrl-C: jobs
            # may still be running in worker threads; they must not start new
            # processes once their groups are killed.
            command.kill_all(close=True)
        raise
    finally:
        # Prefect's cancellation kills the flow's process group; the jobs'
        # commands run in groups of their own and must be killed here.
        command.kill_all()
        for workspace in run.workspaces:
            remove_workspace(workspace)


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


def finish(report: PipelineReport) -> FlowOutcome:
    """Publish the summary artifacts, then gate: a failed report fails the flow.

    The flow returns a Failed state rather than raising, so Prefect logs one
    line instead of a traceback; calling the flow still raises the
    ``PipelineFailed`` it carries, with the whole report.
    """
    from prefect.states import Failed

    from tasks.reports import publish_report

    publish_report(report)
    if not report.passed:
        failed = PipelineFailed(report)
        return Failed(message=str(failed), data=failed)
    return report.to_json()


def tool_packages(config: PipelineConfig, suites: Iterable[SuiteConfig] = ()) -> list[str]:
    """What cicd-flows itself needs in the target's environment to run the jobs."""
    suites = list(suites) or list(config.tests.values())
    packages = sorted(config.quality.tools())
    if suites:
        packages.append("pytest")
    if any(suite.coverage for suite in suites):
        packages.append("pytest-cov")
    if config.benchmarks is not None:
        packages.append("pytest-benchmark")
    return packages
