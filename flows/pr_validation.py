"""PR validation: the seed's ``.github/workflows/pr.yml`` as a Prefect flow.

    checkout -> change detection -> environment
      -> quality | unit-tests | framework-tests (in parallel) -> gate

Each job keeps its own Prefect task state and the flow fails when any of them
fails. A job whose inputs are unchanged is served from the Prefect cache; a
change that touches only ignored paths (docs) skips the jobs outright.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from cicd.changes import only_ignored, source_fingerprint
from cicd.config import PipelineConfig, load_config
from cicd.git import Checkout, changed_files
from cicd.results import JobResult, JobState
from cicd.runs import PipelineRun, pipeline_run
from flows.gate import FlowOutcome, finish
from tasks.checkout import checkout_task
from tasks.environments import environment_task, tool_packages
from tasks.jobs import collect
from tasks.quality import submit_quality
from tasks.testing import submit_suites
from tasks.usage import LlmSession, llm_session

FLOW_NAME: Final = "pr-validation"
# The seed: PR runs use a mock LLM (free, fast).
DEFAULT_LLM_MODE: Final = "mock"
# Prefect's generic TaskRunner type does not accept the concrete runner under mypy --strict.
JOB_RUNNER: Any = ThreadPoolTaskRunner(max_workers=4)


def pr_suites(config: PipelineConfig) -> list[str]:
    """The suites a PR runs: as configured, else every suite that needs no LLM."""
    configured = config.settings(FLOW_NAME).suites
    if configured is not None:
        return configured
    return [name for name, suite in config.tests.items() if not suite.llm]


def job_names(config: PipelineConfig) -> list[str]:
    return (["quality"] if config.quality.tools() else []) + pr_suites(config)


def skip_reason(checkout: Checkout, config: PipelineConfig, base: str | None) -> str | None:
    """Why every job can be skipped: the change touches only ignored paths."""
    if not base:
        return None
    changed = changed_files(checkout.mirror, base, checkout.commit)
    if not only_ignored(changed, config.ignore_paths):
        return None
    shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
    return f"skipped: only paths no job depends on changed ({shown}; ignore_paths)"


def mock_llm(
    run: PipelineRun, checkout: Checkout, config: PipelineConfig, ref: str
) -> AbstractContextManager[LlmSession | None]:
    """The LLM gateway (mock by default) when a PR suite needs one, else nothing."""
    if not any(config.tests[name].llm for name in pr_suites(config)):
        return nullcontext(None)
    settings = config.settings(FLOW_NAME)
    mode = settings.llm_mode or DEFAULT_LLM_MODE
    return llm_session(config, mode, run, checkout, ref, settings.budget_usd)


@flow(name=FLOW_NAME, task_runner=JOB_RUNNER, log_prints=True)
def pr_validation(
    repo: str, ref: str = "HEAD", base: str | None = None, group: str | None = None
) -> FlowOutcome:
    """``group`` (e.g. ``repo#branch``): a newer run of the same group cancels this one."""
    if group:
        from flows.concurrency import cancel_older_runs

        cancel_older_runs(FLOW_NAME, group)
    with pipeline_run(FLOW_NAME) as run:
        # - uses: actions/checkout@v4
        checkout = checkout_task(repo, ref)
        run.workspaces.append(checkout.path)
        config = load_config(checkout.path)

        # on: pull_request: paths-ignore (docs) -> nothing to run
        reason = skip_reason(checkout, config, base)
        if reason is not None:
            skipped = [
                JobResult(n, JobState.SKIPPED, 0.0, reason=reason) for n in job_names(config)
            ]
            return finish(run.report(checkout, ref, skipped))

        # - run: pip install -e ".[dev]"   (reused while the dependency inputs are unchanged)
        suites = [config.tests[name] for name in pr_suites(config)]
        env = environment_task(
            checkout.path, config.environment, tool_packages(config, suites), run.log("environment")
        )
        inputs_key = source_fingerprint(checkout.path, config.ignore_paths)

        # jobs: quality, unit-tests, framework-tests (in parallel)
        with mock_llm(run, checkout, config, ref) as llm:
            futures = submit_quality(run, checkout.path, env, config.quality, inputs_key)
            futures += submit_suites(
                run, checkout.path, env, config, pr_suites(config),
                llm.env if llm else None, inputs_key=inputs_key,
            )  # fmt: skip
            jobs = collect(futures)
        sections: list[str] = []
        if llm is not None:
            budget, usage = llm.account(all(job.state.ok for job in jobs))
            jobs, sections = (*jobs, budget), [usage]

        # PR blocked if any job fails
        return finish(run.report(checkout, ref, jobs, sections))
