"""The release artifact: the commit's wheel, built once (``python -m build``
through ``tasks/packaging.py``, as the release pipeline builds it) or fetched
from an index, then kept by its sha256 under ``$CICD_HOME/deploy/artifacts``.
Every environment installs that file; nothing is rebuilt between them.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from cicd import command
from cicd.errors import BadInput, InfrastructureError
from cicd.git import commit_timestamp
from tasks import packaging
from tasks.deploy.base import Release
from tasks.deploy.state import atomic_write_json, deploy_root


def artifacts_dir() -> Path:
    return deploy_root() / "artifacts"


def keep(wheel: Path, commit: str, ref: str) -> Release:
    """Store ``wheel`` by content and describe it as a release."""
    if not wheel.name.endswith(".whl"):
        raise BadInput(f"{wheel}: a deploy artifact is a wheel (.whl)")
    metadata = packaging.read_built_metadata(wheel)
    digest = packaging.sha256_file(wheel)
    home = artifacts_dir() / digest
    home.mkdir(parents=True, exist_ok=True)
    stored = home / wheel.name
    if not stored.is_file():
        shutil.copyfile(wheel, stored.with_suffix(".part"))
        stored.with_suffix(".part").replace(stored)
    return Release(metadata.name, metadata.version, commit, ref, str(stored), digest)


def built_for(commit: str) -> Release | None:
    """The artifact already built from ``commit`` (promotion reuses it, never rebuilds)."""
    pointer = artifacts_dir() / "by-commit" / f"{commit}.json"
    if not pointer.is_file():
        return None
    release = Release.from_json(json.loads(pointer.read_text()))
    return release if Path(release.wheel).is_file() else None


def build_release(workspace: Path, commit: str, ref: str, log_path: Path | None = None) -> Release:
    """The commit's wheel: built once, with the commit's time as SOURCE_DATE_EPOCH
    (reproducible builds, https://reproducible-builds.org/docs/source-date-epoch/)."""
    existing = built_for(commit)
    if existing is not None:
        return Release(
            existing.name, existing.version, commit, ref, existing.wheel, existing.sha256
        )
    deploy_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=deploy_root()) as out:
        built = packaging.build_distributions(
            workspace,
            Path(out),
            source_date_epoch=commit_timestamp(workspace, commit),
            log_path=log_path,
        )
        wheels = [p for p in built if p.name.endswith(".whl")]
        if not wheels:
            raise packaging.PackagingError(f"the build of {ref} made no wheel")
        release = keep(wheels[0], commit, ref)
    atomic_write_json(artifacts_dir() / "by-commit" / f"{commit}.json", release.to_json())
    return release


def fetch_release(requirement: str, index_url: str | None, commit: str, ref: str) -> Release:
    """``pip download --no-deps`` of one requirement (``name==version``) from the index."""
    with tempfile.TemporaryDirectory() as out:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--dest",
            out,
            requirement,
        ]
        if index_url:
            argv += ["--index-url", index_url]
        result = command.run(argv, timeout=300)
        if not result.ok:
            raise InfrastructureError(f"fetching {requirement} failed: {result.tail(10)}")
        wheels = sorted(Path(out).glob("*.whl"))
        if not wheels:
            raise BadInput(f"{requirement}: the index has no wheel")
        return keep(wheels[0], commit, ref)
