"""Release publishing, as in the seed's ``publish`` job: an idempotent upload.

Why the upload plans before it uploads: an index never lets a file name be
replaced, so a release that is re-run (after a crash, a flaky network, a
failure after publishing) must recognise what is already there. Each local
file is compared by name and sha256 with the index's simple page: the same
bytes are skipped, different bytes under the same name refuse the whole
release before anything is sent, and only the rest is uploaded. Re-running a
release is therefore safe on any index, not only on those that support
``twine upload --skip-existing``.

Never ambiguous: files are uploaded one ``twine upload`` at a time, so when the
index goes away between two of them, :class:`PartialPublish` says which files
are on the index and which are not (a rerun uploads the rest). Two releases of
one version on one worker are serialised by a lock per index, project and
version: the second plans after the first has finished, finds every file there
with the same hash, and reports the version as already published.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from cicd import command
from cicd.errors import BadInput
from cicd.locking import file_lock
from cicd.paths import home as cicd_home
from tasks.package_index import (  # PublishError re-exported: callers catch it here
    HTTP_TIMEOUT,
    IndexFile,
    IndexUnavailable,
    PublishError,
    list_index_files,
    remote_sha256,
)
from tasks.packaging import ReleaseRefused, _tidy, _twine_env, sha256_file

DEFAULT_REPOSITORY_URL = "https://upload.pypi.org/legacy/"
UPLOAD_TIMEOUT = 900.0

_HTTP_STATUS = re.compile(r"HTTPError: (\d{3})")
# How requests (under twine) reports an index it could not talk to.
_UNREACHABLE = ("ConnectionError", "Max retries exceeded", "Timeout", "timed out")

Action = Literal["uploaded", "skipped", "would-upload", "missing"]


class PartialPublish(PublishError):
    """Some files reached the index, then an upload failed: the report says which."""

    def __init__(self, report: PublishReport, cause: str) -> None:
        self.report = report
        self.cause = cause
        on_index = report.names("uploaded") + report.names("skipped")
        super().__init__(
            f"partial publish of {report.project} {report.version} to {report.repository_url}: "
            f"on the index: {', '.join(on_index) or 'nothing'}; "
            f"not on the index: {', '.join(report.names('missing'))}. "
            f"Rerun the release to upload the rest. Cause: {cause}"
        )

    def __reduce__(self) -> tuple[type[PartialPublish], tuple[PublishReport, str]]:
        return (type(self), (self.report, self.cause))


# ---------------------------------------------------------------------------
# Publish


@dataclass(frozen=True)
class PublishedFile:
    name: str
    sha256: str
    size: int
    action: Action

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PublishReport:
    project: str
    version: str
    repository_url: str
    index_url: str
    dry_run: bool
    files: tuple[PublishedFile, ...]

    def names(self, action: Action) -> list[str]:
        return [f.name for f in self.files if f.action == action]

    @property
    def already_published(self) -> bool:
        """Every file was on the index before, with the same hash: nothing to do."""
        return bool(self.files) and all(f.action == "skipped" for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [f.to_dict() for f in self.files]
        return data


def distribution_identity(paths: Iterable[Path]) -> tuple[str, str]:
    """The one ``(project, version)`` that every distribution file names."""
    seen: set[tuple[str, str]] = set()
    for path in paths:
        try:
            if path.name.endswith(".whl"):
                name, version, _, _ = parse_wheel_filename(path.name)
            else:
                name, version = parse_sdist_filename(path.name)
        except (InvalidWheelFilename, InvalidSdistFilename) as exc:
            raise BadInput(f"{path}: not a wheel or sdist file name ({exc})") from None
        seen.add((str(name), str(version)))
    if len(seen) != 1:
        found = ", ".join(f"{n} {v}" for n, v in sorted(seen)) or "none"
        raise BadInput(f"a release publishes one project version; the files name: {found}")
    return seen.pop()


def _same_origin(a: str, b: str) -> bool:
    left, right = urlsplit(a), urlsplit(b)
    return (left.scheme, left.netloc) == (right.scheme, right.netloc)


def plan_publish(
    paths: Sequence[Path],
    existing: Mapping[str, IndexFile],
    client: httpx.Client,
    *,
    label: str,
    index_url: str,
) -> list[PublishedFile]:
    """Skip identical files, refuse conflicting ones (all of them named), upload the rest."""
    planned: list[PublishedFile] = []
    conflicts: list[str] = []
    for path in paths:
        local = sha256_file(path)
        size = path.stat().st_size
        remote = existing.get(path.name)
        if remote is None:
            planned.append(PublishedFile(path.name, local, size, "would-upload"))
            continue
        remote_hash = remote_sha256(client, remote)
        if remote_hash == local:
            planned.append(PublishedFile(path.name, local, size, "skipped"))
        else:
            conflicts.append(
                f"{path.name} is already on {index_url} with sha256 {remote_hash}, "
                f"but the file built now has sha256 {local}"
            )
    if conflicts:
        raise ReleaseRefused(
            f"refusing to publish {label}: an index never replaces a file, so the version "
            "must be bumped. Nothing was uploaded.\n" + "\n".join(conflicts)
        )
    return planned


def publish(
    paths: Sequence[Path],
    *,
    repository_url: str,
    index_url: str,
    username: str | None,
    password: str | None,
    dry_run: bool,
    python: Path | str = sys.executable,
    timeout: float = UPLOAD_TIMEOUT,
    log_path: Path | None = None,
) -> PublishReport:
    """Upload the distributions that the index does not hold yet.

    Credentials reach twine through ``TWINE_USERNAME``/``TWINE_PASSWORD``,
    never its command line (visible in ``ps``) nor the log. They are also sent
    to the index query, but only when it is on the repository's own origin: a
    PyPI token has no business at a third-party mirror.
    """
    if not paths:
        raise BadInput("no distributions to publish")
    for path in paths:
        if not path.is_file():
            raise BadInput(f"distribution {path} does not exist")
    project, version = distribution_identity(paths)
    auth = (
        httpx.BasicAuth(username, password)
        if username and password and _same_origin(index_url, repository_url)
        else None
    )
    # Held from the plan to the last upload: a second release of this version
    # plans only once the first is done, and finds its files there.
    with file_lock(publish_lock_path(repository_url, project, version)):
        with httpx.Client(auth=auth, timeout=HTTP_TIMEOUT, follow_redirects=True) as client:
            existing = list_index_files(client, index_url, project)
            planned = plan_publish(
                paths, existing, client, label=f"{project} {version}", index_url=index_url
            )

        def report(files: Iterable[PublishedFile]) -> PublishReport:
            return PublishReport(project, version, repository_url, index_url, dry_run, tuple(files))

        if dry_run:
            return report(planned)
        done: list[PublishedFile] = []
        for index, (path, entry) in enumerate(zip(paths, planned, strict=True)):
            if entry.action != "would-upload":
                done.append(entry)
                continue
            try:
                # One file per call: what reached the index is known file by file.
                _twine_upload([path], repository_url, username, password, python, timeout, log_path)
            except (PublishError, IndexUnavailable) as exc:
                if not done:
                    raise  # no file of this version is on the index: not partial
                rest = [
                    replace(f, action="missing") if f.action == "would-upload" else f
                    for f in planned[index:]
                ]
                raise PartialPublish(report([*done, *rest]), str(exc)) from exc
            done.append(replace(entry, action="uploaded"))
    return report(done)


def publish_lock_path(repository_url: str, project: str, version: str) -> Path:
    """The lock of one version on one index (``$CICD_HOME/locks``)."""
    key = f"{repository_url.rstrip('/')}\0{canonicalize_name(project)}\0{version}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cicd_home() / "locks" / f"publish-{canonicalize_name(project)}-{digest}.lock"


def _twine_upload(
    paths: Sequence[Path],
    repository_url: str,
    username: str | None,
    password: str | None,
    python: Path | str,
    timeout: float,
    log_path: Path | None,
) -> None:
    env = _twine_env()
    env["TWINE_USERNAME"] = username or ""
    env["TWINE_PASSWORD"] = password or ""
    # A configured default repository would fight --repository-url.
    env.pop("TWINE_REPOSITORY", None)
    env.pop("TWINE_REPOSITORY_URL", None)
    argv = [
        # --no-color: rich's colour codes would end up in logs and error messages.
        str(python),
        "-m",
        "twine",
        "--no-color",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        repository_url,
        *map(str, paths),
    ]
    result = command.run(argv, env=env, timeout=timeout, log_path=log_path)
    if result.ok:
        return
    output = _tidy(result.tail(20))
    if password:
        output = output.replace(password, "***")
    names = ", ".join(p.name for p in paths)
    message = f"twine upload of {names} to {repository_url} failed:\n{output}"
    status = _HTTP_STATUS.search(result.output)
    unreachable = any(sign in result.output for sign in _UNREACHABLE)
    # The index unreachable or unwell (5xx) is worth a retry, which the plan
    # makes safe; a 4xx (credentials, a rejected file) or anything else is not.
    if result.timed_out or unreachable or (status is not None and status.group(1)[0] == "5"):
        raise IndexUnavailable(message)
    raise PublishError(message)
