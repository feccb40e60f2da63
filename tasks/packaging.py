"""Release packaging, as in the seed's ``build`` job: version checks,
``python -m build`` and ``twine check --strict``. The upload is in
:mod:`tasks.publishing`.

Why builds can be reproducible: a re-run rebuilds from the same commit, and a
wheel or sdist with new timestamps would look like different content under the
same name. With ``source_date_epoch`` (the tagged commit's time) the backend
stamps the wheel with it and the sdist's tar metadata is normalised here, so a
re-run produces the same bytes and is skipped instead of refused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from packaging.version import InvalidVersion, Version

from cicd import command
from cicd.errors import BadInput, CicdError, ConfigError

BUILD_TIMEOUT = 900.0
CHECK_TIMEOUT = 300.0


class ReleaseRefused(BadInput):
    """The release must not go ahead as asked: tag/version mismatch, a file conflict."""


class PackagingError(CicdError):
    """Building or checking the distributions failed; the message carries the tool's output."""


# ---------------------------------------------------------------------------
# Version and tag


def read_project_version(root: Path) -> tuple[str, str]:
    """``(name, version)`` from ``[project]`` in ``root/pyproject.toml``.

    A dynamic version (setuptools-scm, hatch-vcs, ...) is refused: the tag is
    checked against the version *in the file*, so the file must state it.
    """
    path = root / "pyproject.toml"
    where = str(path)
    if not path.is_file():
        raise ConfigError(where, ["file not found; a release needs [project] name and version"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, [f"not valid TOML ({exc})"]) from None
    project = data.get("project")
    if not isinstance(project, dict):
        raise ConfigError(where, ["table [project] is missing"])
    problems: list[str] = []
    name = project.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("field 'project.name' is missing")
    dynamic = project.get("dynamic", [])
    version = project.get("version")
    if isinstance(dynamic, list) and "version" in dynamic:
        problems.append(
            "field 'project.version' is dynamic; a release needs a static version "
            "in pyproject.toml to compare with the tag"
        )
    elif not isinstance(version, str) or not version.strip():
        problems.append("field 'project.version' is missing")
    else:
        try:
            Version(version)
        except InvalidVersion:
            problems.append(f"field 'project.version': {version!r} is not a PEP 440 version")
    if problems:
        raise ConfigError(where, problems)
    assert isinstance(name, str) and isinstance(version, str)
    return name, version


def check_tag_matches(tag: str, version: str, prefix: str = "v") -> str:
    """Refuse a release whose tag disagrees with the package version.

    Versions are compared normalised (``v1.0`` matches ``1.0.0``, ``v1.0.0-rc1``
    matches ``1.0.0rc1``). Returns the normalised version.
    """
    name = tag.removeprefix("refs/tags/")
    if not name.startswith(prefix):
        raise ReleaseRefused(f"tag {name} does not start with the tag prefix {prefix!r}")
    try:
        tagged = Version(name[len(prefix) :])
    except InvalidVersion:
        raise ReleaseRefused(
            f"tag {name} does not name a version (expected {prefix}X.Y.Z)"
        ) from None
    try:
        declared = Version(version)
    except InvalidVersion:
        raise ReleaseRefused(
            f"version {version!r} in pyproject.toml is not a PEP 440 version"
        ) from None
    if tagged != declared:
        raise ReleaseRefused(f"tag {name} does not match version {version} in pyproject.toml")
    return str(declared)


# ---------------------------------------------------------------------------
# Build and check


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def normalize_sdist(path: Path, epoch: int) -> None:
    """Rewrite an sdist so its bytes depend only on its content and ``epoch``.

    setuptools stamps every member with the file's mtime (a fresh checkout:
    now) and gzip with the build time, so two builds of one commit differ.
    Member order and content are kept; owners, times and the gzip header are not.
    """
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(path, "r:gz") as source:
        for member in source.getmembers():
            data = None
            if member.isfile():
                extracted = source.extractfile(member)
                assert extracted is not None
                data = extracted.read()
            clean = tarfile.TarInfo(member.name)
            clean.size = member.size if member.isfile() else 0
            clean.type = member.type
            clean.linkname = member.linkname
            clean.mode = member.mode
            # Not clamped (min with the mtime): then a file older than the
            # commit, as in a developer's tree, would still change the bytes.
            clean.mtime = epoch
            clean.uid = clean.gid = 0
            clean.uname = clean.gname = ""
            members.append((clean, data))
    tmp = path.with_name(path.name + ".tmp")
    with (
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as target,
    ):
        for info, data in members:
            target.addfile(info, None if data is None else io.BytesIO(data))
    tmp.replace(path)


def build_distributions(
    root: Path,
    out_dir: Path,
    python: Path | str = sys.executable,
    *,
    installer: Literal["pip", "uv"] | None = None,
    source_date_epoch: int | None = None,
    timeout: float = BUILD_TIMEOUT,
    log_path: Path | None = None,
) -> list[Path]:
    """``python -m build --sdist --wheel`` of ``root``; returns the new files in ``out_dir``.

    ``python`` must have ``build`` installed (the cicd-flows interpreter does).
    The build runs into an empty scratch directory first so that stale files
    already in ``out_dir`` are never mistaken for this build's output.
    """
    if not (root / "pyproject.toml").is_file() and not (root / "setup.py").is_file():
        raise BadInput(f"{root}: no pyproject.toml or setup.py to build")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(source_date_epoch)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        argv = [str(python), "-m", "build", "--sdist", "--wheel", "--outdir", str(scratch)]
        if installer is not None:
            argv += ["--installer", installer]
        result = command.run(
            [*argv, str(root)], cwd=root, env=env, timeout=timeout, log_path=log_path
        )
        if not result.ok:
            why = (
                f"timed out after {timeout:.0f}s"
                if result.timed_out
                else f"exit {result.returncode}"
            )
            raise PackagingError(f"python -m build failed for {root} ({why}):\n{result.tail(40)}")
        built = sorted(p for p in scratch.iterdir() if p.is_file())
        if not built:
            raise PackagingError(
                f"python -m build produced no files for {root}:\n{result.tail(20)}"
            )
        final: list[Path] = []
        for path in built:
            if source_date_epoch is not None and path.name.endswith(".tar.gz"):
                normalize_sdist(path, source_date_epoch)
            dest = out_dir / path.name
            path.replace(dest)
            final.append(dest)
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_distributions(
    paths: Sequence[Path],
    *,
    python: Path | str = sys.executable,
    timeout: float = CHECK_TIMEOUT,
    log_path: Path | None = None,
) -> str:
    """``twine check --strict``: metadata valid and the long description renders on PyPI.

    Returns twine's report; raises :class:`PackagingError` with it on failure.
    """
    if not paths:
        raise BadInput("no distributions to check")
    for path in paths:
        if not path.is_file():
            raise BadInput(f"distribution {path} does not exist")
    argv = [str(python), "-m", "twine", "--no-color", "check", "--strict", *map(str, paths)]
    result = command.run(argv, env=_twine_env(), timeout=timeout, log_path=log_path)
    if not result.ok:
        raise PackagingError(f"twine check --strict failed:\n{_tidy(result.tail(40))}")
    return _tidy(result.output)


def _twine_env() -> dict[str, str]:
    env = dict(os.environ)
    # twine prints through rich, which wraps at 80 columns without a terminal
    # and pads every line: file names would be cut in two in error messages.
    env["COLUMNS"] = "250"
    return env


def _tidy(output: str) -> str:
    return "\n".join(line.rstrip() for line in output.splitlines())
