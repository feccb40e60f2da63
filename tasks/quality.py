"""Quality checks, as in the seed's ``quality`` job: ruff, mypy, black --check.

All configured tools run even when an earlier one fails, so one run shows
every problem (a GitHub Actions job would stop at the first failing step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cicd.config import QualityConfig, ToolConfig
from cicd.results import JobResult
from tasks.environments import Environment
from tasks.job import JobContext, JobInputs, failure_reason, run_step, state_of

JOB_NAME = "quality"


def tool_argv(tool: str, python: Path, config: ToolConfig) -> list[str]:
    base = [str(python), "-m", tool]
    if tool == "ruff":
        return [*base, "check", *config.args, "--", *config.paths]
    if tool == "black":
        return [*base, "--check", "--diff", *config.args, "--", *config.paths]
    return [*base, *config.args, "--", *config.paths]


@dataclass(frozen=True)
class QualityJob:
    """Every configured tool over the workspace, in the target's environment."""

    config: QualityConfig
    env: Environment
    # The commit's fingerprint when a pass may be reused; None runs afresh.
    source: str | None = None
    name: str = JOB_NAME

    kind: ClassVar[str] = "quality"
    version: ClassVar[str] = "1"

    @property
    def timeout(self) -> float:
        return self.config.timeout

    def inputs(self) -> JobInputs:
        return JobInputs(self.source, config=self.config, environment=self.env.key)

    def run(self, context: JobContext) -> JobResult:
        environ = self.env.environ()
        steps = tuple(
            run_step(
                tool,
                tool_argv(tool, self.env.python, config),
                cwd=context.workspace,
                env=environ,
                deadline=context.deadline,
                log_path=context.log(self.name),
            )
            for tool, config in self.config.tools().items()
        )
        state = state_of(steps)
        return JobResult(
            name=self.name,
            state=state,
            duration=sum(step.duration for step in steps),
            steps=steps,
            reason="" if state.ok else failure_reason(steps, context.deadline),
        )


def quality_jobs(config: QualityConfig, env: Environment, source: str | None) -> list[QualityJob]:
    """The quality job, or none when no tool is configured."""
    return [QualityJob(config, env, source)] if config.tools() else []
