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

from cicd.config import LlmMode, PipelineConfig, SuiteConfig, load_config
from cicd.pipeline import collect, finish, pipeline_run, tool_packages
from cicd.results import PipelineFailed, PipelineReport
from tasks.environments import environment_task
from tasks.git import checkout_task
from tasks.llm.budget import format_usd
from tasks.notify import notify
from tasks.testing import matrix_job, test_job
from tasks.usage import account, llm_gateway, now, saved_recordings

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


@flow(name=FLOW_NAME, task_runner=JOB_RUNNER, log_prints=True)
def nightly(repo: str, ref: str = "main", llm_mode: LlmMode | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    started_at = now()
    with pipeline_run(FLOW_NAME) as run:
        checkout = checkout_task(repo, ref)
        run.workspaces.append(checkout.path)
        config = load_config(checkout.path)
        settings = config.settings(FLOW_NAME)
        mode: LlmMode = llm_mode or settings.llm_mode or DEFAULT_MODE
        suites = nightly_suites(config)
        packages = tool_packages(config, [config.tests[s] for s in suites])
        env = environment_task(checkout.path, config.environment, packages, run.log("environment"))

        recordings_copy = run.directory / "llm-recordings"
        with llm_gateway(
            config, mode, checkout.path, settings.budget_usd, FLOW_NAME, recordings_copy
        ) as gateway:
            llm_env = gateway.env(config.llm.export)
            # full-test-suite: pytest tests/ --cov --cov-report=html --junit-xml
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
                        True,
                    ),
                )
                for name in suites
            ]
            # matrix-testing: python-version: [...] (the default version ran above)
            matrix = matrix_suite(config)
            for version in settings.python:
                if matrix is None or version == config.environment.python:
                    continue
                entry = f"matrix-py{version}"
                futures.append(
                    (
                        entry,
                        matrix_job.with_options(name=entry).submit(
                            entry,
                            checkout.path,
                            config.environment.model_copy(update={"python": version}),
                            packages,
                            matrix[1],
                            config.services,
                            run.reports / entry,
                        ),
                    )
                )
            jobs = list(collect(futures))

        # Track LLM costs: the budget fails the run, the alert threshold notifies.
        budget, usage = account(
            gateway,
            run_id=run.run_id,
            flow=FLOW_NAME,
            repo=checkout.repo,
            ref=ref,
            started_at=started_at,
            passed=all(j.state.ok for j in jobs),
            budget_usd=settings.budget_usd,
        )
        jobs.append(budget)
        spent = float(budget.details.get("spent_usd", 0.0))
        for job in jobs:
            if "coverage_html" in job.details:
                create_link_artifact(
                    key=f"nightly-coverage-{job.name}".replace("_", "-"),
                    link=f"file://{job.details['coverage_html']}",
                    link_text=f"coverage HTML ({job.name})",
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
        # Notify on failure (if: failure()) and on an over-threshold cost.
        subjects = []
        if not report.passed:
            subjects.append(("Nightly tests failed", failure_message(report)))
        if settings.alert_usd is not None and spent > settings.alert_usd:
            subjects.append(
                (
                    "Nightly LLM cost alert",
                    f"LLM spend {format_usd(spent)} exceeds the alert threshold "
                    f"{format_usd(settings.alert_usd)} ({checkout.repo}@{ref})",
                )
            )
        notified: list[str] = []
        for subject, body in subjects:
            delivery = notify(config.notify, subject, body, logger)
            notified += [f"{subject}: {target}" for target in delivery.delivered]
        try:
            return {**finish(report), "notified": notified}
        except PipelineFailed as failed:
            failed.report.extra["notified"] = notified
            raise
