"""Quality checks, as in the seed's ``quality`` job: ruff, mypy, black --check.

All configured tools run even when an earlier one fails, so one run shows
every problem (a GitHub Actions job would stop at the first failing step).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task

from cicd.changes import job_cache_key
from cicd.config import QualityConfig, ToolConfig
from cicd.results import JobResult
from tasks.environments import Environment
from tasks.jobs import (
    Deadline,
    JobFuture,
    JobOutcome,
    failure_reason,
    job_outcome,
    run_step,
    state_of,
)

if TYPE_CHECKING:
    from cicd.runs import PipelineRun

JOB_NAME = "quality"


def tool_argv(tool: str, python: Path, config: ToolConfig) -> list[str]:
    base = [str(python), "-m", tool]
    if tool == "ruff":
        return [*base, "check", *config.args, "--", *config.paths]
    if tool == "black":
        return [*base, "--check", "--diff", *config.args, "--", *config.paths]
    return [*base, *config.args, "--", *config.paths]


def run_quality(
    workspace: Path, env: Environment, config: QualityConfig, log_path: Path | None = None
) -> JobResult:
    started = time.monotonic()
    deadline = Deadline(config.timeout)
    environ = env.environ()
    steps = tuple(
        run_step(
            name,
            tool_argv(name, env.python, tool),
            cwd=workspace,
            env=environ,
            deadline=deadline,
            log_path=log_path,
        )
        for name, tool in config.tools().items()
    )
    state = state_of(steps)
    return JobResult(
        name=JOB_NAME,
        state=state,
        duration=time.monotonic() - started,
        steps=steps,
        reason="" if state.ok else failure_reason(steps, deadline),
    )


@task(
    name="quality",
    cache_key_fn=job_cache_key,
    persist_result=True,
    cache_expiration=timedelta(days=7),
)
def quality_job(
    workspace: Path,
    env: Environment,
    config: QualityConfig,
    log_path: Path | None = None,
    inputs_key: str | None = None,
) -> JobOutcome:
    """``inputs_key`` (the source fingerprint) turns on caching: same inputs, same result."""
    return job_outcome(run_quality(workspace, env, config, log_path))


def submit_quality(
    run: PipelineRun, workspace: Path, env: Environment, config: QualityConfig, inputs_key: str
) -> list[tuple[str, JobFuture]]:
    """The quality job as a started task, or nothing when no tool is configured."""
    if not config.tools():
        return []
    return [(JOB_NAME, quality_job.submit(workspace, env, config, run.log(JOB_NAME), inputs_key))]
