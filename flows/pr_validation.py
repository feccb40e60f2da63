"""PR validation: the seed's ``.github/workflows/pr.yml`` as a Prefect flow.

    checkout -> environment -> quality | unit-tests | framework-tests -> gate

The three jobs run in parallel and each keeps its own Prefect task state; the
flow fails when any of them fails.
"""

from __future__ import annotations

from typing import Any, Final

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from cicd.config import PipelineConfig, load_config
from cicd.pipeline import collect, finish, pipeline_run, tool_packages
from cicd.results import PipelineReport
from tasks.environments import environment_task
from tasks.git import checkout_task
from tasks.quality import quality_job
from tasks.testing import test_job

FLOW_NAME: Final = "pr-validation"


def pr_suites(config: PipelineConfig) -> list[str]:
    """The suites a PR runs: as configured, else every suite that needs no LLM."""
    configured = config.settings(FLOW_NAME).suites
    if configured is not None:
        return configured
    return [name for name, suite in config.tests.items() if not suite.llm]


# Prefect's generic TaskRunner type does not accept the concrete runner under mypy --strict.
JOB_RUNNER: Any = ThreadPoolTaskRunner(max_workers=4)


@flow(name=FLOW_NAME, task_runner=JOB_RUNNER, log_prints=True)
def pr_validation(repo: str, ref: str = "HEAD", base: str | None = None) -> dict[str, Any]:
    with pipeline_run(FLOW_NAME) as run:
        # - uses: actions/checkout@v4
        checkout = checkout_task(repo, ref)
        run.workspaces.append(checkout.path)
        config = load_config(checkout.path)
        suites = pr_suites(config)

        # - run: pip install -e ".[dev]"   (reused while the dependency inputs are unchanged)
        env = environment_task(
            checkout.path,
            config.environment,
            tool_packages(config, [config.tests[name] for name in suites]),
            run.log("environment"),
        )

        # jobs: quality, unit-tests, framework-tests (in parallel)
        futures = []
        if config.quality.tools():
            futures.append(
                (
                    "quality",
                    quality_job.submit(checkout.path, env, config.quality, run.log("quality")),
                )
            )
        for name in suites:
            futures.append(
                (
                    name,
                    test_job.with_options(name=f"tests-{name}").submit(
                        name,
                        checkout.path,
                        env,
                        config.tests[name],
                        config.services,
                        run.reports,
                        None,
                        run.log(name),
                    ),
                )
            )

        # PR blocked if any job fails
        report = PipelineReport(
            flow=FLOW_NAME,
            repo=checkout.repo,
            ref=ref,
            commit=checkout.commit,
            jobs=collect(futures),
            duration=run.elapsed(),
        )
        return finish(report)
