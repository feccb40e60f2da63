"""PR validation: the seed's ``.github/workflows/pr.yml`` as a Prefect flow.

    checkout -> change detection -> environment
      -> quality | unit-tests | framework-tests (in parallel) -> gate

Each job keeps its own Prefect task state and the flow fails when any of them
fails. A job whose inputs are unchanged is served from the Prefect cache; a
change that touches only ignored paths (docs) skips the jobs outright.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Final

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from cicd.config import PipelineConfig, load_config
from cicd.pipeline import PipelineRun, collect, finish, pipeline_run, tool_packages
from cicd.results import JobResult, JobState, PipelineReport
from tasks.changes import only_ignored, source_fingerprint
from tasks.environments import Environment, environment_task
from tasks.git import Checkout, changed_files, checkout_task
from tasks.quality import quality_job
from tasks.testing import test_job
from tasks.usage import account, llm_gateway, now

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


def submit_jobs(
    run: PipelineRun,
    checkout: Checkout,
    config: PipelineConfig,
    env: Environment,
    inputs_key: str,
    llm_env: dict[str, str] | None,
) -> tuple[JobResult, ...]:
    futures = []
    if config.quality.tools():
        future = quality_job.submit(
            checkout.path, env, config.quality, run.log("quality"), inputs_key
        )
        futures.append(("quality", future))
    for name in pr_suites(config):
        suite = config.tests[name]
        future = test_job.with_options(name=f"tests-{name}").submit(
            name, checkout.path, env, suite, config.services, run.reports,
            llm_env if suite.llm else None, run.log(name), False,
            # An LLM suite's answers are not a function of the inputs: never cached.
            None if suite.llm else inputs_key,
        )  # fmt: skip
        futures.append((name, future))
    return collect(futures)


@flow(name=FLOW_NAME, task_runner=JOB_RUNNER, log_prints=True)
def pr_validation(
    repo: str, ref: str = "HEAD", base: str | None = None, group: str | None = None
) -> dict[str, Any]:
    """``group`` (e.g. ``repo#branch``): a newer run of the same group cancels this one."""
    if group:
        from cicd.concurrency import cancel_older_runs

        cancel_older_runs(FLOW_NAME, group)
    started_at = now()
    with pipeline_run(FLOW_NAME) as run:
        # - uses: actions/checkout@v4
        checkout = checkout_task(repo, ref)
        run.workspaces.append(checkout.path)
        config = load_config(checkout.path)

        # on: pull_request: paths-ignore (docs) -> nothing to run
        reason = skip_reason(checkout, config, base)
        if reason is not None:
            skipped = tuple(JobResult(n, JobState.SKIPPED, 0.0, reason=reason)
                            for n in job_names(config))  # fmt: skip
            return finish(report(checkout, ref, skipped, run))

        # - run: pip install -e ".[dev]"   (reused while the dependency inputs are unchanged)
        suites = [config.tests[name] for name in pr_suites(config)]
        env = environment_task(
            checkout.path, config.environment, tool_packages(config, suites), run.log("environment")
        )
        inputs_key = source_fingerprint(checkout.path, config.ignore_paths)

        # jobs: quality, unit-tests, framework-tests (in parallel); a mock LLM if any job needs one
        settings = config.settings(FLOW_NAME)
        needs_llm = any(suite.llm for suite in suites)
        mode = settings.llm_mode or DEFAULT_LLM_MODE
        gateway_context = (
            llm_gateway(config, mode, checkout.path, settings.budget_usd, FLOW_NAME)
            if needs_llm
            else nullcontext(None)
        )
        with gateway_context as gateway:
            llm_env = gateway.env(config.llm.export) if gateway is not None else None
            jobs = submit_jobs(run, checkout, config, env, inputs_key, llm_env)
        sections: tuple[str, ...] = ()
        if gateway is not None:
            budget, usage = account(
                gateway, run_id=run.run_id, flow=FLOW_NAME, repo=checkout.repo, ref=ref,
                started_at=started_at, passed=all(j.state.ok for j in jobs),
                budget_usd=settings.budget_usd,
            )  # fmt: skip
            jobs, sections = (*jobs, budget), (usage,)

        # PR blocked if any job fails
        return finish(report(checkout, ref, jobs, run, sections))


def report(
    checkout: Checkout,
    ref: str,
    jobs: tuple[JobResult, ...],
    run: PipelineRun,
    sections: tuple[str, ...] = (),
) -> PipelineReport:
    return PipelineReport(
        flow=FLOW_NAME, repo=checkout.repo, ref=ref, commit=checkout.commit,
        jobs=jobs, duration=run.elapsed(), sections=sections,
    )  # fmt: skip
