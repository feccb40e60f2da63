"""Release: the seed's ``.github/workflows/release.yml`` as a Prefect flow.

    validate (tag == version, full tests) -> build (python -m build, twine check --strict)
      -> publish (idempotent; credentials from a Secret block) -> changelog -> release record

Nothing is uploaded unless every earlier stage passed; a conflicting file on
the index stops the release before the first upload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from cicd.config import PipelineConfig, ReleaseConfig, load_config
from cicd.results import JobResult, JobState
from cicd.runs import pipeline_run
from flows.gate import FlowOutcome, finish
from tasks import changelog, packaging
from tasks.checkout import checkout_task
from tasks.environments import environment_task, tool_packages
from tasks.jobs import collect
from tasks.testing import submit_suites

FLOW_NAME: Final = "release"
JOB_RUNNER: Any = ThreadPoolTaskRunner(max_workers=4)


def release_suites(config: PipelineConfig) -> list[str]:
    """The full test suite unless configured otherwise (seed: ``pytest tests/``)."""
    configured = config.settings(FLOW_NAME).suites
    return configured if configured is not None else list(config.tests)


def credentials(release: ReleaseConfig) -> tuple[str | None, str | None]:
    if not release.credentials_secret:
        return None, None
    from prefect.blocks.system import Secret

    from tasks.llm import install_redactor

    password = str(Secret.load(release.credentials_secret).get())  # type: ignore[union-attr]
    install_redactor([password])
    return release.username, password


@task(name="build", retries=1, retry_delay_seconds=5)
def build_task(root: Path, out_dir: Path, epoch: int, log_path: Path) -> list[Path]:
    files = packaging.build_distributions(
        root, out_dir, installer="uv", source_date_epoch=epoch, log_path=log_path
    )
    packaging.check_distributions(files, log_path=log_path)
    return files


@task(
    name="publish",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=lambda t, r, s: packaging_retryable(s),
)
def publish_task(
    files: list[Path], release: ReleaseConfig, repository_url: str, dry_run: bool, log_path: Path
) -> packaging.PublishReport:
    username, password = credentials(release)
    return packaging.publish(
        files,
        repository_url=repository_url,
        index_url=release.index_url or packaging.index_url_for(repository_url),
        username=username,
        password=password,
        dry_run=dry_run,
        log_path=log_path,
    )


def packaging_retryable(state: Any) -> bool:
    from cicd.errors import retry_on_infrastructure

    return retry_on_infrastructure(None, None, state)


@flow(name=FLOW_NAME, task_runner=JOB_RUNNER, log_prints=True)
def release(
    repo: str, ref: str, dry_run: bool = False, repository_url: str | None = None
) -> FlowOutcome:
    logger = get_run_logger()
    with pipeline_run(FLOW_NAME) as run:
        checkout = checkout_task(repo, ref)
        run.workspaces.append(checkout.path)
        config = load_config(checkout.path)

        # validate: the tag names the version in pyproject.toml
        name, version = packaging.read_project_version(checkout.path)
        version = packaging.check_tag_matches(ref, version, config.release.tag_prefix)

        # validate: run full test suite (stop on any failure)
        suites = release_suites(config)
        packages = tool_packages(config, [config.tests[s] for s in suites])
        env = environment_task(checkout.path, config.environment, packages, run.log("environment"))
        jobs = list(collect(submit_suites(run, checkout.path, env, config, suites)))
        if not all(job.state.ok for job in jobs):
            jobs.append(JobResult("publish", JobState.SKIPPED, 0.0, reason="tests failed"))
            return finish(run.report(checkout, ref, jobs))

        # build: python -m build; twine check --strict
        epoch = int(_commit_time(checkout.path, checkout.commit))
        files = build_task(checkout.path, run.directory / "dist", epoch, run.log("build"))

        # publish (idempotent; dry run does everything but upload)
        target = repository_url or config.release.repository_url or packaging.DEFAULT_REPOSITORY_URL
        published = publish_task(files, config.release, target, dry_run, run.log("publish"))
        jobs.append(
            JobResult(
                "publish",
                JobState.PASSED,
                0.0,
                reason="dry run: nothing uploaded" if dry_run else "",
                details={a: published.names(a) for a in ("uploaded", "skipped", "would-upload")},
            )
        )

        # create-release: changelog since the previous tag, release record
        previous = changelog.previous_tag(checkout.path, ref, match=f"{config.release.tag_prefix}*")
        commits = changelog.commits_between(checkout.path, previous, checkout.commit)
        notes = changelog.render_changelog(version, changelog.group_conventional(commits))
        record = changelog.release_record(
            name,
            version,
            ref,
            published.files,
            notes,
            previous_tag=previous,
            commit=checkout.commit,
            repository_url=target,
            dry_run=dry_run,
        )
        (run.directory / "release.json").write_text(json.dumps(record, indent=2))
        create_markdown_artifact(
            key="release-record",
            markdown=changelog.render_release_markdown(record),
            description=f"{name} {version}",
        )
        create_table_artifact(key="release-files", table=[f.to_dict() for f in published.files])
        logger.info(
            "release %s %s: %s",
            name,
            version,
            {a: len(published.names(a)) for a in ("uploaded", "skipped", "would-upload")},
        )
        return finish(run.report(checkout, ref, jobs, extra={"release": record}))


def _commit_time(root: Path, commit: str) -> str:
    from cicd import command

    result = command.run(["git", "-C", str(root), "log", "-1", "--format=%ct", commit], timeout=60)
    return result.output.strip() or "0"
