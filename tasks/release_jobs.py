"""The release's ``build`` and ``publish`` jobs (seed's ``release.yml``).

Neither is ever cached: a release builds from its tag and asks the index what
is there every time (publishing is idempotent, see ``tasks/publishing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cicd.config import ReleaseConfig
from cicd.git import Checkout, is_shallow, tag_commit, unshallow
from cicd.results import JobResult, JobState
from tasks import package_index, packaging, publishing
from tasks.job import JobContext, JobInputs

BUILD_JOB = "build"
PUBLISH_JOB = "publish"
ACTIONS: tuple[publishing.Action, ...] = ("uploaded", "skipped", "would-upload", "missing")


def check_release_checkout(checkout: Checkout, tag: str, *, static_version: bool) -> None:
    """The workspace holds the tag, on the commit being released, with its history.

    setuptools-scm and hatch-vcs compute the version with ``git describe``
    from the workspace's ``.git``
    (https://setuptools-scm.readthedocs.io/en/latest/usage/#default-versioning-scheme):
    without the tag, or in a shallow clone that cuts it off, they build
    ``0.1.dev1+g<sha>`` instead of the tagged version. cicd's workspace is a full
    ``git clone`` of the mirror (tags included); a mirror of a shallow clone is
    unshallowed from its origin where possible. A static version needs no git,
    so a shallow history is refused only where the backend may read it.
    """
    name = tag.removeprefix("refs/tags/")
    if is_shallow(checkout.path) and not unshallow(checkout.path) and not static_version:
        raise packaging.ReleaseRefused(
            f"the checkout of {name} from {checkout.repo} is shallow and its origin has no "
            "more history: a version computed from git (setuptools-scm, hatch-vcs) needs "
            "the full history and tags; release from a full clone"
        )
    tagged = tag_commit(checkout.path, name)
    if tagged is None:
        raise packaging.ReleaseRefused(
            f"{name} is not a tag in {checkout.repo}: a release is made from a tag"
        )
    if tagged != checkout.commit:
        raise packaging.ReleaseRefused(
            f"tag {name} points at {tagged} in the workspace, not at the released "
            f"commit {checkout.commit}"
        )


@dataclass(frozen=True)
class BuildJob:
    """``python -m build`` (reproducible: stamped with the commit's time), the
    built version checked against the tag, then ``twine check --strict``."""

    out_dir: Path
    source_date_epoch: int
    tag: str
    tag_prefix: str = "v"
    name: str = BUILD_JOB

    kind: ClassVar[str] = "build"
    version: ClassVar[str] = "2"
    timeout: ClassVar[float] = packaging.BUILD_TIMEOUT + packaging.CHECK_TIMEOUT

    def inputs(self) -> JobInputs:
        return JobInputs(
            None,
            extra={
                "source_date_epoch": self.source_date_epoch,
                "tag": self.tag,
                "tag_prefix": self.tag_prefix,
            },
        )

    def run(self, context: JobContext) -> JobResult:
        log = context.log(self.name)
        files = packaging.build_distributions(
            context.workspace,
            self.out_dir,
            installer="uv",
            source_date_epoch=self.source_date_epoch,
            log_path=log,
        )
        # Before twine: a wrong version is a refusal (nothing published), and cheap.
        project, version = packaging.built_version(files, self.tag, self.tag_prefix)
        packaging.check_distributions(files, log_path=log)
        details = {"files": [str(f) for f in files], "project": project, "version": version}
        return JobResult(self.name, JobState.PASSED, 0.0, details=details)


def built_files(build: JobResult) -> list[Path]:
    return [Path(name) for name in build.details.get("files", [])]


def built_identity(build: JobResult) -> tuple[str, str]:
    """``(project, version)`` as the built distributions' metadata states them."""
    return str(build.details["project"]), str(build.details["version"])


@dataclass(frozen=True)
class PublishJob:
    """Upload what the index lacks; a dry run does everything but upload."""

    files: tuple[Path, ...]
    release: ReleaseConfig
    repository_url: str
    dry_run: bool
    name: str = PUBLISH_JOB

    kind: ClassVar[str] = "publish"
    version: ClassVar[str] = "1"
    timeout: ClassVar[float] = publishing.UPLOAD_TIMEOUT

    def inputs(self) -> JobInputs:
        return JobInputs(None, config=self.release, extra={"dry_run": self.dry_run})

    def run(self, context: JobContext) -> JobResult:
        username, password = credentials(self.release)
        try:
            published = publishing.publish(
                list(self.files),
                repository_url=self.repository_url,
                index_url=(
                    self.release.index_url or package_index.index_url_for(self.repository_url)
                ),
                username=username,
                password=password,
                dry_run=self.dry_run,
                log_path=context.log(self.name),
            )
        except publishing.PartialPublish as partial:
            return partial_result(self.name, partial)
        if self.dry_run:
            reason = "dry run: nothing uploaded"
        elif published.already_published:
            reason = (
                f"already published: {published.project} {published.version} is on the "
                "index with the same files (sha256), nothing uploaded"
            )
        else:
            reason = ""
        details = publish_details(published)
        return JobResult(self.name, JobState.PASSED, 0.0, reason=reason, details=details)


def partial_result(name: str, partial: publishing.PartialPublish) -> JobResult:
    """Failed, with the files on the index and those not in --json and the summary."""
    return JobResult(
        name,
        JobState.FAILED,
        0.0,
        reason=str(partial),
        details=publish_details(partial.report),
        section=publish_section(partial.report),
    )


def publish_details(report: publishing.PublishReport) -> dict[str, object]:
    details: dict[str, object] = {action: report.names(action) for action in ACTIONS}
    details["files"] = [f.to_dict() for f in report.files]
    return details


def publish_section(report: publishing.PublishReport) -> str:
    """The summary's list of what is on the index and what is not."""
    lines = [f"## Publish of {report.project} {report.version}: partial", ""]
    marks = {"uploaded": "on the index (uploaded now)", "skipped": "on the index (before)"}
    for entry in report.files:
        lines.append(f"- `{entry.name}`: {marks.get(entry.action, 'NOT on the index')}")
    lines += ["", "Rerun the release to upload the missing files."]
    return "\n".join(lines)


def published_files(publish: JobResult) -> list[publishing.PublishedFile]:
    return [publishing.PublishedFile(**entry) for entry in publish.details.get("files", [])]


def credentials(release: ReleaseConfig) -> tuple[str | None, str | None]:
    """The index token from its Prefect Secret block, masked in logs from now on."""
    if not release.credentials_secret:
        return None, None
    from prefect.blocks.system import Secret

    from tasks.llm import install_redactor

    password = str(Secret.load(release.credentials_secret).get())  # type: ignore[union-attr]
    install_redactor([password])
    return release.username, password
