"""Release: the seed's ``.github/workflows/release.yml`` as a Prefect flow.

    validate (tag == version) -> build (python -m build in a clean workspace,
      the built metadata's version == tag, twine check --strict) -> full tests
      -> publish (idempotent; credentials from a Secret block) -> changelog -> release record

Nothing is uploaded unless every earlier stage passed; a conflicting file on
the index stops the release before the first upload.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Final

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from cicd import masking
from cicd.config import PipelineConfig
from cicd.git import clone_workspace, commit_timestamp
from cicd.results import JobResult, JobState
from flows.gate import FlowOutcome
from flows.opening import open_pipeline
from flows.run_names import planned_name
from tasks import changelog, packaging, publishing
from tasks.job_runner import collect, run_job, submit_all
from tasks.release_jobs import (
    ACTIONS,
    PUBLISH_JOB,
    BuildJob,
    PublishJob,
    built_files,
    built_identity,
    check_release_checkout,
    published_files,
)
from tasks.testing import suite_jobs

FLOW_NAME: Final = "release"
JOB_RUNNER: Any = ThreadPoolTaskRunner(max_workers=4)


def release_suites(config: PipelineConfig) -> list[str]:
    """The full test suite unless configured otherwise (seed: ``pytest tests/``)."""
    configured = config.settings(FLOW_NAME).suites
    return configured if configured is not None else list(config.tests)


def stopped(results: list[JobResult], reason: str) -> list[JobResult]:
    """The results so far and ``publish`` skipped: nothing is uploaded after a failure."""
    return [*results, JobResult(PUBLISH_JOB, JobState.SKIPPED, 0.0, reason=reason)]


@flow(
    name=FLOW_NAME,
    flow_run_name=planned_name(FLOW_NAME),
    task_runner=JOB_RUNNER,
    log_prints=True,
)
def release(
    repo: str, ref: str, dry_run: bool = False, repository_url: str | None = None
) -> FlowOutcome:
    logger = get_run_logger()
    with open_pipeline(FLOW_NAME, repo, ref) as opened:
        run, checkout, config = opened.run, opened.checkout, opened.config

        # validate: the tag names the version in pyproject.toml (a dynamic one
        # is known after the build, from the built metadata) and is in the checkout
        prefix = config.release.tag_prefix
        _, declared = packaging.read_project_version(checkout.path)
        if declared is not None:
            packaging.check_tag_matches(ref, declared, prefix)
        check_release_checkout(checkout, ref, static_version=declared is not None)

        # build: python -m build; the built wheel's and sdist's version == tag;
        # twine check --strict. Before the tests, so that a wrong computed
        # version costs a build, not a test suite; from a clean workspace of
        # its own, so that nothing the tests write reaches what is published.
        pristine = replace(checkout, path=clone_workspace(checkout.mirror, checkout.commit))
        run.workspaces.append(pristine.path)
        check_release_checkout(pristine, ref, static_version=declared is not None)
        epoch = commit_timestamp(checkout.path, checkout.commit)
        build_job = BuildJob(run.directory / "dist", epoch, ref, prefix)
        build = run_job(build_job, run, pristine.path)
        if not build.state.ok:
            return opened.finish(run.report(checkout, ref, stopped([build], "build failed")))
        name, version = built_identity(build)

        # validate: run full test suite (stop on any failure)
        suites = release_suites(config)
        env = opened.environment(config.tests[s] for s in suites)
        jobs = suite_jobs(config, suites, env)
        opened.statuses.pending(job.name for job in jobs)
        tests = collect(opened.statuses.follow(submit_all(jobs, run, checkout.path)))
        results = [*tests, build]
        if not all(result.state.ok for result in tests):
            return opened.finish(run.report(checkout, ref, stopped(results, "tests failed")))

        # publish (idempotent; dry run does everything but upload)
        target = (
            repository_url or config.release.repository_url or publishing.DEFAULT_REPOSITORY_URL
        )
        files = tuple(built_files(build))
        publish = run_job(PublishJob(files, config.release, target, dry_run), run, checkout.path)
        results.append(publish)
        if not publish.state.ok:
            return opened.finish(run.report(checkout, ref, results))

        # create-release: changelog since the previous tag, release record
        previous = changelog.previous_tag(checkout.path, ref, match=f"{config.release.tag_prefix}*")
        commits = changelog.commits_between(checkout.path, previous, checkout.commit)
        notes = changelog.render_changelog(version, changelog.group_conventional(commits))
        record = changelog.release_record(
            name,
            version,
            ref,
            published_files(publish),
            notes,
            previous_tag=previous,
            commit=checkout.commit,
            repository_url=target,
            dry_run=dry_run,
        )
        record = masking.mask_json(record)
        (run.directory / "release.json").write_text(json.dumps(record, indent=2))
        create_markdown_artifact(
            key="release-record",
            markdown=changelog.render_release_markdown(record),
            description=f"{name} {version}",
        )
        create_table_artifact(key="release-files", table=record["files"])
        counts = {action: len(publish.details[action]) for action in ACTIONS}
        logger.info("release %s %s: %s", name, version, counts)
        return opened.finish(run.report(checkout, ref, results, extra={"release": record}))
