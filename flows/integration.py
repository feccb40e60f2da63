"""Integration: the seed's ``.github/workflows/integration.yml`` as a Prefect flow.

checkout -> environment -> LLM gateway (mock | replay | record | live)
  -> agent-tests (with their services) -> LLM usage and budget
  -> performance-baseline (needs: agent-tests) -> gate
"""

from __future__ import annotations

from typing import Any, Final

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from cicd.config import LlmMode, PipelineConfig, load_config
from cicd.pipeline import collect, finish, pipeline_run, tool_packages
from cicd.results import JobResult, JobState, PipelineReport
from tasks.benchmarks import JOB_NAME as BENCHMARK_JOB
from tasks.benchmarks import benchmark_job
from tasks.environments import environment_task
from tasks.git import checkout_task
from tasks.testing import test_job
from tasks.usage import account, llm_gateway, now, saved_recordings

FLOW_NAME: Final = "integration"
DEFAULT_MODE: Final = "replay"
JOB_RUNNER: Any = ThreadPoolTaskRunner(max_workers=4)


def integration_suites(config: PipelineConfig) -> list[str]:
    """As configured, else every suite that talks to the LLM."""
    configured = config.settings(FLOW_NAME).suites
    if configured is not None:
        return configured
    return [name for name, suite in config.tests.items() if suite.llm]


@flow(name=FLOW_NAME, task_runner=JOB_RUNNER, log_prints=True)
def integration(
    repo: str, ref: str = "HEAD", base: str | None = None, llm_mode: LlmMode | None = None
) -> dict[str, Any]:
    started_at = now()
    with pipeline_run(FLOW_NAME) as run:
        checkout = checkout_task(repo, ref)
        run.workspaces.append(checkout.path)
        config = load_config(checkout.path)
        settings = config.settings(FLOW_NAME)
        suites = integration_suites(config)
        mode: LlmMode = llm_mode or settings.llm_mode or DEFAULT_MODE
        env = environment_task(
            checkout.path,
            config.environment,
            tool_packages(config, [config.tests[name] for name in suites]),
            run.log("environment"),
        )

        # agent-tests: services: neo4j; env: USE_MOCK_LLM -> the gateway in `mode`
        recordings_copy = run.directory / "llm-recordings"
        with llm_gateway(
            config, mode, checkout.path, settings.budget_usd, FLOW_NAME, recordings_copy
        ) as gateway:
            llm_env = gateway.env(config.llm.export)
            futures = [
                (
                    name,
                    test_job.with_options(name=f"tests-{name}").submit(
                        name,
                        checkout.path,
                        env,
                        config.tests[name],
                        config.services,
                        run.reports,
                        llm_env if config.tests[name].llm else None,
                        run.log(name),
                    ),
                )
                for name in suites
            ]
            jobs = list(collect(futures))
        tests_passed = all(job.state.ok for job in jobs)
        budget, usage = account(
            gateway,
            run_id=run.run_id,
            flow=FLOW_NAME,
            repo=checkout.repo,
            ref=ref,
            started_at=started_at,
            passed=tests_passed,
            budget_usd=settings.budget_usd,
        )
        jobs.append(budget)

        # performance-baseline: needs: agent-tests
        if config.benchmarks is not None:
            if tests_passed:
                bench = benchmark_job.submit(
                    env.python,
                    checkout.path,
                    config.benchmarks,
                    env.environ(),
                    run.reports / "benchmarks",
                )
                jobs += collect([(BENCHMARK_JOB, bench)])
            else:
                jobs.append(
                    JobResult(
                        BENCHMARK_JOB, JobState.SKIPPED, 0.0, reason="skipped: agent tests failed"
                    )
                )

        report = PipelineReport(
            flow=FLOW_NAME,
            repo=checkout.repo,
            ref=ref,
            commit=checkout.commit,
            jobs=tuple(jobs),
            duration=run.elapsed(),
            sections=(usage,),
            extra={"llm": {**budget.details, "recordings": saved_recordings(recordings_copy)}},
        )
        return finish(report)
