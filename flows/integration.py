"""Integration: the seed's ``.github/workflows/integration.yml`` as a Prefect flow.

checkout -> change detection -> environment -> LLM gateway (mock | replay | record | live)
  -> agent-tests (with their services) -> LLM usage and budget
  -> performance-baseline (needs: agent-tests) -> gate
"""

from __future__ import annotations

from typing import Any, Final

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from cicd.changes import source_fingerprint
from cicd.config import LlmMode, PipelineConfig
from cicd.results import JobResult, JobState
from flows.gate import FlowOutcome
from flows.opening import open_pipeline
from flows.run_names import planned_name
from flows.slot_wait import service_slots_or_requeue
from tasks.benchmarks import JOB_NAME as BENCHMARK_JOB
from tasks.benchmarks import BenchmarkJob
from tasks.job_runner import collect, passed_before, run_job, submit_all
from tasks.testing import suite_jobs
from tasks.usage import BUDGET_JOB, LlmBudgetJob, llm_session

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


@flow(
    name=FLOW_NAME,
    flow_run_name=planned_name(FLOW_NAME),
    task_runner=JOB_RUNNER,
    log_prints=True,
)
def integration(
    repo: str, ref: str = "HEAD", base: str | None = None, llm_mode: LlmMode | None = None
) -> FlowOutcome:
    """``base``: the commit before the push; a push that touches only ignored
    paths (``on: push: paths-ignore``) runs nothing."""
    with open_pipeline(FLOW_NAME, repo, ref) as opened:
        run, checkout, config = opened.run, opened.checkout, opened.config
        settings = config.settings(FLOW_NAME)
        suites = integration_suites(config)

        # - run: pip install -e ".[dev,integration]"
        env = opened.environment(config.tests[name] for name in suites)

        # on: push: paths-ignore (docs) -> nothing to run, but only when every job
        # already passed on these inputs (as in pr-validation): the agent suites
        # talk to an LLM and are never cached, so with them a push always runs.
        reason = opened.skip_reason(base)
        source = source_fingerprint(checkout.path, config.ignore_paths)
        planned = suite_jobs(config, suites, env, source)
        if reason is not None and all(passed_before(job) for job in planned):
            names = [*suites, BUDGET_JOB] + ([BENCHMARK_JOB] if config.benchmarks else [])
            skipped = [JobResult(n, JobState.SKIPPED, 0.0, reason=reason) for n in names]
            return opened.finish(run.report(checkout, ref, skipped))

        # agent-tests: services: neo4j; env: USE_MOCK_LLM -> the gateway in `mode`
        mode: LlmMode = llm_mode or settings.llm_mode or DEFAULT_MODE
        # Neo4j slots for the jobs, or back in the queue without holding a worker slot.
        with (
            service_slots_or_requeue(planned),
            llm_session(config, mode, run, checkout, ref, settings.budget_usd) as llm,
        ):
            jobs = suite_jobs(config, suites, env, llm_env=llm.env)
            # pending on the git host, then each job's status as it ends
            opened.statuses.pending(job.name for job in jobs)
            results = list(collect(opened.statuses.follow(submit_all(jobs, run, checkout.path))))
        tests_passed = all(result.state.ok for result in results)
        budget = run_job(LlmBudgetJob(llm, tests_passed), run, checkout.path)
        results.append(budget)

        # performance-baseline: needs: agent-tests
        if config.benchmarks is not None and tests_passed:
            benchmarks = BenchmarkJob(env.python, config.benchmarks, env.environ())
            results.append(run_job(benchmarks, run, checkout.path))
        elif config.benchmarks is not None:
            not_run = JobResult(BENCHMARK_JOB, JobState.SKIPPED, 0.0, reason="agent tests failed")
            results.append(not_run)

        return opened.finish(run.report(checkout, ref, results, extra={"llm": budget.details}))
