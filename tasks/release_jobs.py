"""The release's ``build`` and ``publish`` jobs (seed's ``release.yml``).

Neither is ever cached: a release builds from its tag and asks the index what
is there every time (publishing is idempotent, see ``tasks/publishing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cicd.config import ReleaseConfig
from cicd.results import JobResult, JobState
from tasks import packaging, publishing
from tasks.job import JobContext, JobInputs

BUILD_JOB = "build"
PUBLISH_JOB = "publish"
ACTIONS: tuple[publishing.Action, ...] = ("uploaded", "skipped", "would-upload")


@dataclass(frozen=True)
class BuildJob:
    """``python -m build`` (reproducible: stamped with the commit's time), then
    ``twine check --strict``."""

    out_dir: Path
    source_date_epoch: int
    name: str = BUILD_JOB

    kind: ClassVar[str] = "build"
    version: ClassVar[str] = "1"
    timeout: ClassVar[float] = packaging.BUILD_TIMEOUT + packaging.CHECK_TIMEOUT

    def inputs(self) -> JobInputs:
        return JobInputs(None, extra={"source_date_epoch": self.source_date_epoch})

    def run(self, context: JobContext) -> JobResult:
        log = context.log(self.name)
        files = packaging.build_distributions(
            context.workspace,
            self.out_dir,
            installer="uv",
            source_date_epoch=self.source_date_epoch,
            log_path=log,
        )
        packaging.check_distributions(files, log_path=log)
        return JobResult(
            self.name, JobState.PASSED, 0.0, details={"files": [str(f) for f in files]}
        )


def built_files(build: JobResult) -> list[Path]:
    return [Path(name) for name in build.details.get("files", [])]


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
        published = publishing.publish(
            list(self.files),
            repository_url=self.repository_url,
            index_url=self.release.index_url or publishing.index_url_for(self.repository_url),
            username=username,
            password=password,
            dry_run=self.dry_run,
            log_path=context.log(self.name),
        )
        details: dict[str, object] = {action: published.names(action) for action in ACTIONS}
        details["files"] = [f.to_dict() for f in published.files]
        reason = "dry run: nothing uploaded" if self.dry_run else ""
        return JobResult(self.name, JobState.PASSED, 0.0, reason=reason, details=details)


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
