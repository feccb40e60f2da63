"""PR validation: the seed's ``.github/workflows/pr.yml`` as a Prefect flow.

    checkout -> change detection -> environment
      -> quality | unit-tests | framework-tests (in parallel) -> gate

Each job keeps its own Prefect task state and the flow fails when any of them
fails. A job whose inputs are unchanged is served from the Prefect cache; a
change that touches only ignored paths (docs) skips the jobs outright.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Final

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from cicd.changes import source_fingerprint
from cicd.config import PipelineConfig
from cicd.results import JobResult, JobState
from flows.gate import FlowOutcome
from flows.opening import Opened, open_pipeline
from flows.run_names import planned_name
from flows.slot_wait import service_slots_or_requeue
from tasks.environments import Environment
from tasks.job import Job
from tasks.job_runner import collect, passed_before, run_job, submit_all
from tasks.quality import quality_jobs
from tasks.testing import suite_jobs
from tasks.tool_caches import ToolCaches
from tasks.usage import LlmBudgetJob, LlmSession, llm_session

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


def plan(
    config: PipelineConfig,
    suites: list[str],
    env: Environment,
    source: str,
    workspace: Path,
    llm_env: dict[str, str] | None = None,
    caches: ToolCaches | None = None,
) -> list[Job]:
    """The jobs of a PR run, in the order they are reported."""
    return [
        *quality_jobs(config.quality, env, source, workspace, caches),
        *suite_jobs(config, suites, env, source, llm_env),
    ]


def mock_llm(
    opened: Opened, ref: str, untrusted: bool
) -> AbstractContextManager[LlmSession | None]:
    """The LLM gateway (mock by default) when a PR suite needs one, else nothing.

    A change from a fork gets the mock whatever cicd.yaml asks: the modes that
    talk to the real API need its key, and untrusted code gets no secret, as
    GitHub gives none to workflows of pull requests from forks
    (https://docs.github.com/en/actions/security-for-github-actions/security-guides/using-secrets-in-github-actions).
    """
    config = opened.config
    if not any(config.tests[name].llm for name in pr_suites(config)):
        return nullcontext(None)
    settings = config.settings(FLOW_NAME)
    mode = DEFAULT_LLM_MODE if untrusted else settings.llm_mode or DEFAULT_LLM_MODE
    return llm_session(config, mode, opened.run, opened.checkout, ref, settings.budget_usd)


@flow(
    name=FLOW_NAME,
    flow_run_name=planned_name(FLOW_NAME),
    task_runner=JOB_RUNNER,
    log_prints=True,
)
def pr_validation(
    repo: str,
    ref: str = "HEAD",
    base: str | None = None,
    group: str | None = None,
    untrusted: bool = False,
) -> FlowOutcome:
    """``group`` (e.g. ``repo#branch``): a newer run of the same group cancels this one.
    ``untrusted`` (a pull request from a fork): no secret is loaded for it."""
    if group:
        from flows.concurrency import cancel_older_runs

        cancel_older_runs(FLOW_NAME, group)
    with open_pipeline(FLOW_NAME, repo, ref, untrusted=untrusted) as opened:
        run, checkout, config = opened.run, opened.checkout, opened.config

        suites = pr_suites(config)
        # Instant reruns: a job whose inputs are unchanged is served from the cache.
        source = source_fingerprint(checkout.path, config.ignore_paths)
        # - uses: actions/cache (.mypy_cache), written back only by trusted code
        caches = ToolCaches(checkout.repo, publish=not untrusted)
        # When every job already passed on these very inputs, nothing will run in
        # the environment: it is planned by its key, neither checked nor built (a
        # job that runs after all, its cached result unreadable, makes it ready).
        env = opened.planned_environment(config.tests[name] for name in suites)
        planned = plan(config, suites, env, source, checkout.path, caches=caches)
        all_passed = all(passed_before(job) for job in planned)

        # on: pull_request: paths-ignore (docs) -> nothing to run, but only when
        # every job already passed on these inputs: docs do not make a red commit green.
        reason = opened.skip_reason(base)
        if reason is not None and all_passed:
            skipped = [
                JobResult(n, JobState.SKIPPED, 0.0, reason=reason) for n in job_names(config)
            ]
            return opened.finish(run.report(checkout, ref, skipped))

        if not all_passed:
            # - run: pip install -e ".[dev]"   (reused while the dependency inputs are unchanged)
            env = opened.environment(config.tests[name] for name in suites)
            planned = plan(config, suites, env, source, checkout.path, caches=caches)

        # jobs: quality, unit-tests, framework-tests (in parallel), pending on the git host
        opened.statuses.pending(job_names(config))
        # Neo4j slots for the jobs, or back in the queue without holding a worker slot.
        with service_slots_or_requeue(planned), mock_llm(opened, ref, untrusted) as llm:
            # The planned jobs, unless a suite needs the gateway's variables.
            jobs = planned
            if llm is not None:
                jobs = plan(config, suites, env, source, checkout.path, llm.env, caches)
            # each job's status on the git host as soon as it ends
            results = collect(opened.statuses.follow(submit_all(jobs, run, checkout.path)))
        if llm is not None:
            passed = all(result.state.ok for result in results)
            results += (run_job(LlmBudgetJob(llm, passed), run, checkout.path),)

        # PR blocked if any job fails
        return opened.finish(run.report(checkout, ref, results))
