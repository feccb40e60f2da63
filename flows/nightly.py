"""Nightly full validation: the seed's ``.github/workflows/nightly.yml`` as a Prefect flow.

checkout -> environment -> LLM gateway (live, or record)
  -> full-test-suite (coverage with HTML report) | matrix (Python versions)
  -> track LLM costs (budget fails, alert threshold notifies) -> notify on failure -> gate
"""

from __future__ import annotations

from typing import Any, Final

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from cicd.config import LlmMode, PipelineConfig, SuiteConfig
from cicd.results import JobResult, PipelineReport
from flows.gate import FlowOutcome
from flows.opening import open_pipeline
from flows.run_names import planned_name
from tasks.environments import tool_packages
from tasks.job import Job
from tasks.job_runner import collect, run_job, submit_all
from tasks.llm.budget import format_usd
from tasks.notify import notify
from tasks.testing import MatrixJob, suite_jobs
from tasks.usage import LlmBudgetJob, llm_session

FLOW_NAME: Final = "nightly"
DEFAULT_MODE: Final = "live"
MATRIX_SUITE: Final = "unit"
JOB_RUNNER: Any = ThreadPoolTaskRunner(max_workers=4)


def nightly_suites(config: PipelineConfig) -> list[str]:
    configured = config.settings(FLOW_NAME).suites
    return configured if configured is not None else list(config.tests)


def matrix_suite(config: PipelineConfig) -> tuple[str, SuiteConfig] | None:
    """The suite the Python matrix runs: ``unit`` (as in the seed), else the first
    suite that needs neither services nor an LLM."""
    if MATRIX_SUITE in config.tests:
        return MATRIX_SUITE, config.tests[MATRIX_SUITE]
    plain = [(n, s) for n, s in config.tests.items() if not s.services and not s.llm]
    return plain[0] if plain else None


def failure_message(report: PipelineReport) -> str:
    lines = [f"{report.repo}@{report.ref} ({report.commit[:12]})"]
    for job in report.jobs:
        if not job.state.ok:
            lines.append(f"- {job.name}: {job.state.value} {job.reason}".rstrip())
            if job.tests:
                lines += [f"    {f.name}: {f.message}" for f in job.tests.failures[:5]]
    return "\n".join(lines)


@flow(
    name=FLOW_NAME,
    flow_run_name=planned_name(FLOW_NAME),
    task_runner=JOB_RUNNER,
    log_prints=True,
)
def nightly(repo: str, ref: str = "main", llm_mode: LlmMode | None = None) -> FlowOutcome:
    logger = get_run_logger()
    with open_pipeline(FLOW_NAME, repo, ref) as opened:
        run, checkout, config = opened.run, opened.checkout, opened.config
        settings = config.settings(FLOW_NAME)
        suites = nightly_suites(config)

        # - run: pip install -e ".[dev,integration]"
        env = opened.environment(config.tests[s] for s in suites)

        mode: LlmMode = llm_mode or settings.llm_mode or DEFAULT_MODE
        with llm_session(config, mode, run, checkout, ref, settings.budget_usd) as llm:
            jobs: list[Job] = [
                # full-test-suite: pytest tests/ --cov --cov-report=html --junit-xml
                *suite_jobs(config, suites, env, llm_env=llm.env, coverage_html=True),
                # matrix-testing: python-version: [...] (the default version ran above)
                *matrix_jobs(config, suites, settings.python),
            ]
            # pending on the git host, then each job's status as it ends
            opened.statuses.pending(job.name for job in jobs)
            results = list(collect(opened.statuses.follow(submit_all(jobs, run, checkout.path))))

        # Track LLM costs: the budget fails the run, the alert threshold notifies.
        passed = all(result.state.ok for result in results)
        budget = run_job(LlmBudgetJob(llm, passed), run, checkout.path)
        results.append(budget)
        publish_coverage_links(results)
        report = run.report(checkout, ref, results, extra={"llm": budget.details})

        # - name: Notify on failure (if: failure()), and on an over-threshold cost
        spent = float(budget.details.get("spent_usd", 0.0))
        report.extra["notified"] = send_notifications(report, config, spent, logger)
        return opened.finish(report)


def matrix_jobs(
    config: PipelineConfig, suites: list[str], versions: list[str]
) -> list[MatrixJob]:
    """One ``matrix-py<version>`` job per extra Python version, each in its own environment."""
    matrix = matrix_suite(config)
    if matrix is None:
        return []
    suite = matrix[1]
    packages = tuple(tool_packages(config, [config.tests[s] for s in suites]))
    return [
        MatrixJob(
            name=f"matrix-py{version}",
            env_config=config.environment.model_copy(update={"python": version}),
            packages=packages,
            suite=suite,
            services={s: config.services[s] for s in suite.services if s in config.services},
        )
        for version in versions
        if version != config.environment.python
    ]


def publish_coverage_links(jobs: list[JobResult]) -> None:
    for job in jobs:
        if "coverage_html" in job.details:
            create_link_artifact(
                key=f"nightly-coverage-{job.name}".replace("_", "-").replace(".", "-"),
                link=f"file://{job.details['coverage_html']}",
                link_text=f"coverage HTML ({job.name})",
            )


def send_notifications(
    report: PipelineReport, config: PipelineConfig, spent: float, logger: Any
) -> list[str]:
    """Notify on failure and on cost over the alert threshold; what was delivered."""
    alert = config.settings(FLOW_NAME).alert_usd
    subjects = []
    if not report.passed:
        subjects.append(("Nightly tests failed", failure_message(report)))
    if alert is not None and spent > alert:
        subjects.append((
            "Nightly LLM cost alert",
            f"LLM spend {format_usd(spent)} exceeds the alert threshold {format_usd(alert)} "
            f"({report.repo}@{report.ref})",
        ))  # fmt: skip
    notified: list[str] = []
    for subject, body in subjects:
        delivery = notify(config.notify, subject, body, logger)
        notified += [f"{subject}: {target}" for target in delivery.delivered]
    return notified
