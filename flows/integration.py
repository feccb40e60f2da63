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
from cicd.results import JobResult, JobState
from cicd.runs import pipeline_run
from flows.gate import FlowOutcome, finish
from tasks.benchmarks import JOB_NAME as BENCHMARK_JOB
from tasks.benchmarks import benchmark_job
from tasks.checkout import checkout_task
from tasks.environments import environment_task, tool_packages
from tasks.jobs import collect
from tasks.testing import submit_suites
from tasks.usage import llm_session

FLOW_NAME: Final = "integration"
# The seed: main runs a cached LLM, i.e. recorded answers.
DEFAULT_MODE: Final = "replay"
# Prefect's generic TaskRunner type does not accept the concrete runner under mypy --strict.
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
) -> FlowOutcome:
    with pipeline_run(FLOW_NAME) as run:
        # - uses: actions/checkout@v4
        checkout = checkout_task(repo, ref)
        run.workspaces.append(checkout.path)
        config = load_config(checkout.path)
        settings = config.settings(FLOW_NAME)
        suites = integration_suites(config)

        # - run: pip install -e ".[dev,integration]"
        packages = tool_packages(config, [config.tests[name] for name in suites])
        env = environment_task(checkout.path, config.environment, packages, run.log("environment"))

        # agent-tests: services: neo4j; env: USE_MOCK_LLM -> the gateway in `mode`
        mode: LlmMode = llm_mode or settings.llm_mode or DEFAULT_MODE
        with llm_session(config, mode, run, checkout, ref, settings.budget_usd) as llm:
            jobs = list(collect(submit_suites(run, checkout.path, env, config, suites, llm.env)))
        tests_passed = all(job.state.ok for job in jobs)
        budget, usage = llm.account(tests_passed)
        jobs.append(budget)

        # performance-baseline: needs: agent-tests
        if config.benchmarks is not None and tests_passed:
            bench = benchmark_job.submit(
                env.python, checkout.path, config.benchmarks, env.environ(),
                run.reports / "benchmarks",
            )  # fmt: skip
            jobs += collect([(BENCHMARK_JOB, bench)])
        elif config.benchmarks is not None:
            jobs.append(JobResult(BENCHMARK_JOB, JobState.SKIPPED, 0.0,
                                  reason="skipped: agent tests failed"))  # fmt: skip

        return finish(run.report(checkout, ref, jobs, [usage], {"llm": budget.details}))
