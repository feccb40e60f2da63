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

import email.parser
import gzip
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.utils import canonicalize_name
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


def read_project_version(root: Path) -> tuple[str | None, str | None]:
    """``(name, version)`` as ``root/pyproject.toml`` declares them, before any build.

    A version that the build backend computes (``dynamic = ["version"]``:
    setuptools-scm, hatch-vcs, flit's ``__version__``, setuptools' ``attr:``)
    is ``None``, and so are both for a project without ``[project]`` (setup.cfg
    or setup.py metadata): the release then learns them from what it built
    (:func:`built_version`). A static version is returned so that a wrong tag
    is refused before the tests run.
    """
    path = root / "pyproject.toml"
    where = str(path)
    if not path.is_file():
        if (root / "setup.py").is_file() or (root / "setup.cfg").is_file():
            return None, None
        raise ConfigError(where, ["file not found; a release needs a project to build"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, [f"not valid TOML ({exc})"]) from None
    project = data.get("project")
    if project is None and ((root / "setup.py").is_file() or (root / "setup.cfg").is_file()):
        return None, None
    if not isinstance(project, dict):
        raise ConfigError(where, ["table [project] is missing"])
    problems: list[str] = []
    name = project.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("field 'project.name' is missing")
    dynamic = project.get("dynamic", [])
    version = project.get("version")
    if isinstance(dynamic, list) and "version" in dynamic:
        if version is not None:
            # PEP 621: a field listed in dynamic must not also be given.
            problems.append("field 'project.version' is given and also listed in 'dynamic'")
        version = None
    elif not isinstance(version, str) or not version.strip():
        problems.append("field 'project.version' is missing (nor listed in 'dynamic')")
    else:
        try:
            Version(version)
        except InvalidVersion:
            problems.append(f"field 'project.version': {version!r} is not a PEP 440 version")
    if problems:
        raise ConfigError(where, problems)
    assert isinstance(name, str)
    return name, version if isinstance(version, str) else None


def check_tag_matches(
    tag: str, version: str, prefix: str = "v", source: str = "pyproject.toml"
) -> str:
    """Refuse a release whose tag disagrees with the package version.

    Versions are compared normalised (``v1.0`` matches ``1.0.0``, ``v1.0.0-rc1``
    matches ``1.0.0rc1``). ``source`` names where ``version`` was read, for the
    message. Returns the normalised version.
    """
    name = tag.removeprefix("refs/tags/")
    if not name.startswith(prefix):
        raise ReleaseRefused(f"tag {name} does not start with the tag prefix {prefix!r}")
    try:
        tagged = Version(name[len(prefix):])
    except InvalidVersion:
        raise ReleaseRefused(
            f"tag {name} does not name a version (expected {prefix}X.Y.Z)"
        ) from None
    try:
        declared = Version(version)
    except InvalidVersion:
        raise ReleaseRefused(
            f"version {version!r} in {source} is not a PEP 440 version"
        ) from None
    if tagged != declared:
        raise ReleaseRefused(f"tag {name} does not match version {version} in {source}")
    return str(declared)


# ---------------------------------------------------------------------------
# The version that was built


@dataclass(frozen=True)
class BuiltMetadata:
    """``Name`` and ``Version`` of one distribution, and the member they were read from."""

    path: Path
    member: str
    name: str
    version: str

    @property
    def source(self) -> str:
        return f"{self.path.name} ({self.member})"


def _headers(raw: bytes, where: str) -> tuple[str, str]:
    # Core metadata is RFC 822 headers (https://packaging.python.org/en/latest/specifications/core-metadata/).
    message = email.parser.BytesHeaderParser().parsebytes(raw)
    name, version = message.get("Name"), message.get("Version")
    if not name or not version:
        raise PackagingError(f"{where} has no Name or Version field")
    return str(name).strip(), str(version).strip()


def read_built_metadata(path: Path) -> BuiltMetadata:
    """What a wheel's ``*.dist-info/METADATA`` or an sdist's top ``PKG-INFO`` says.

    The wheel spec puts exactly one ``{name}-{version}.dist-info`` at the root
    (https://packaging.python.org/en/latest/specifications/binary-distribution-format/);
    the sdist spec puts ``PKG-INFO`` in the one top directory, beside others a
    backend may add deeper, such as ``src/x.egg-info/PKG-INFO``
    (https://packaging.python.org/en/latest/specifications/source-distribution-format/).
    """
    try:
        if path.name.endswith(".whl"):
            with zipfile.ZipFile(path) as wheel:
                members = [
                    n for n in wheel.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
                ]
                if len(members) != 1:
                    raise PackagingError(f"{path}: expected one *.dist-info/METADATA, "
                                         f"found {len(members)}")
                raw, member = wheel.read(members[0]), members[0]
        elif path.name.endswith(".tar.gz"):
            with tarfile.open(path, "r:gz") as sdist:
                found = [
                    m for m in sdist.getmembers()
                    if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")
                ]
                if len(found) != 1:
                    raise PackagingError(f"{path}: expected one top-level PKG-INFO, "
                                         f"found {len(found)}")
                handle = sdist.extractfile(found[0])
                assert handle is not None
                raw, member = handle.read(), found[0].name
        else:
            raise BadInput(f"{path}: not a wheel or an sdist (.whl, .tar.gz)")
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise PackagingError(f"{path}: cannot read the distribution ({exc})") from None
    name, version = _headers(raw, f"{path.name} ({member})")
    return BuiltMetadata(path, member, name, version)


def built_version(paths: Sequence[Path], tag: str, prefix: str = "v") -> tuple[str, str]:
    """``(name, version)`` of the built files, refused unless all of them and the tag agree.

    The build backend is the authority on a dynamic version: what it wrote into
    the metadata is what the index will show. The wheel and the sdist are
    built separately (``python -m build --sdist --wheel``), so they are
    compared with each other too, exactly: an index files them under their
    version, and two spellings would be two releases.
    """
    if not paths:
        raise BadInput("no distributions to read a version from")
    built = [read_built_metadata(path) for path in paths]
    first = built[0]
    for other in built[1:]:
        if canonicalize_name(other.name) != canonicalize_name(first.name):
            raise ReleaseRefused(
                f"the distributions name different projects: {first.name} in {first.source}, "
                f"{other.name} in {other.source}"
            )
        if other.version != first.version:
            raise ReleaseRefused(
                f"the distributions disagree on the version: {first.version} in "
                f"{first.source}, {other.version} in {other.source}"
            )
    return first.name, check_tag_matches(tag, first.version, prefix, source=first.source)


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
    with tmp.open("wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, mtime=0
    ) as zipped, tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as target:
        for info, data in members:
            target.addfile(info, None if data is None else io.BytesIO(data))
    tmp.replace(path)


# setuptools-scm (and hatch-vcs, which uses it) take the version from these
# instead of git (https://setuptools-scm.readthedocs.io/en/latest/overrides/):
# a release's version must come from its tag, never from the caller's environment.
_PRETEND_PREFIX = "SETUPTOOLS_SCM_PRETEND_"


def build_environment() -> dict[str, str]:
    """The build's environment: ours, without the variables that would fake a version."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_PRETEND_PREFIX)}


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
    env = build_environment()
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
                f"timed out after {timeout:.0f}s" if result.timed_out
                else f"exit {result.returncode}"
            )
            raise PackagingError(
                f"python -m build failed for {root} ({why}):\n{result.tail(40)}"
            )
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
