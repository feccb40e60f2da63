"""Release packaging against real parts: a git repository with tags, real
``python -m build`` and ``twine`` runs, a real pypiserver, a real ``pip install``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cicd.errors import BadInput, ConfigError, InfrastructureError
from cicd.sample import commit_all, git
from tasks import changelog, package_index, publishing
from tasks.packaging import (
    PackagingError,
    ReleaseRefused,
    build_distributions,
    built_version,
    check_distributions,
    check_tag_matches,
    read_built_metadata,
    read_project_version,
    sha256_file,
)
from tasks.publishing import PublishError, publish
from tests.conftest import BIN, free_port
from tests.pypiserver_fixture import PypiServer, pypiserver, running_pypiserver

__all__ = ["pypiserver"]  # the fixture is used by name

NAME = "cicd-release-probe"
MODULE = "cicd_release_probe"
GOOD_README = "Release probe\n=============\n\nA tiny package published by the tests.\n"
# An unknown directive is an error for readme_renderer: PyPI would not render it.
BROKEN_README = "Release probe\n=============\n\n.. no-such-directive::\n\n   body\n"


def write_project(
    root: Path, *, version: str = "1.0.0", value: int = 1, readme: str = GOOD_README
) -> Path:
    (root / "src" / MODULE).mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{NAME}"
version = "{version}"
description = "A package the cicd-flows release tests publish"
readme = {{ file = "README.rst", content-type = "text/x-rst" }}
requires-python = ">=3.8"
""",
        encoding="utf-8",
    )
    (root / "README.rst").write_text(readme, encoding="utf-8")
    (root / "src" / MODULE / "__init__.py").write_text(f"VALUE = {value}\n", encoding="utf-8")
    return root


def build(root: Path, out: Path, epoch: int | None = 1_700_000_000) -> list[Path]:
    # uv makes the isolated build environment in a second rather than five.
    return build_distributions(root, out, installer="uv", source_date_epoch=epoch)


def commit_time(repo: Path, ref: str) -> int:
    return int(git(repo, "log", "-1", "--format=%ct", ref))


@pytest.fixture(scope="module")
def release_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with history: v0.9.0, then a feature and a fix, then v1.0.0."""
    repo = write_project(tmp_path_factory.mktemp("release") / "probe", version="0.9.0")
    (repo / ".gitignore").write_text("build/\n*.egg-info/\n", encoding="utf-8")
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit_all(repo, "chore: initial import")
    git(repo, "tag", "-a", "v0.9.0", "-m", "0.9.0")
    (repo / "src" / MODULE / "extra.py").write_text("EXTRA = True\n", encoding="utf-8")
    commit_all(repo, "feat(core): add the extra module")
    commit_all(repo, "fix: correct the description")
    write_project(repo, version="1.0.0")
    commit_all(repo, "chore: bump version to 1.0.0")
    git(repo, "tag", "-a", "v1.0.0", "-m", "1.0.0")
    return repo


@pytest.fixture(scope="module")
def v1_dists(release_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("dist-v1")
    return build(release_repo, out, commit_time(release_repo, "v1.0.0"))


def pip_install_and_import(server: PypiServer, version: str, tmp_path: Path) -> str:
    """Install the probe from the server into a fresh venv; returns what its module says."""
    venv = tmp_path / "consumer-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    result = subprocess.run(
        [
            str(BIN / "python"), "-m", "pip", "--python", str(venv / "bin" / "python"),
            "install", "--no-cache-dir", "--disable-pip-version-check",
            "--index-url", server.simple_url, "--no-deps", f"{NAME}=={version}",
        ],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import {MODULE}; print({MODULE}.VALUE)"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return probe.stdout.strip()


def publish_to(
    server: PypiServer,
    paths: list[Path],
    *,
    dry_run: bool = False,
    password: str | None = None,
    log_path: Path | None = None,
) -> publishing.PublishReport:
    return publish(
        paths,
        repository_url=server.url,
        index_url=server.url,
        username=server.username,
        password=server.password if password is None else password,
        dry_run=dry_run,
        log_path=log_path,
    )


# ---------------------------------------------------------------------------
# version and tag


def test_read_project_version(tmp_path: Path) -> None:
    write_project(tmp_path, version="2.3.4")
    assert read_project_version(tmp_path) == (NAME, "2.3.4")
    # Computed by the backend (flit, setuptools-scm, attr:): known after the build.
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\ndynamic = ["version"]\n')
    assert read_project_version(tmp_path) == ("p", None)
    # setup.cfg metadata and no [project]: both from the build.
    (tmp_path / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\n')
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = p\nversion = attr: p.__version__\n")
    assert read_project_version(tmp_path) == (None, None)
    (tmp_path / "pyproject.toml").unlink()
    assert read_project_version(tmp_path) == (None, None)


def fake_wheel(out: Path, file_version: str, metadata_version: str) -> Path:
    """A wheel whose file name and METADATA may disagree (as a wrong build could)."""
    path = out / f"{MODULE}-{file_version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{MODULE}/__init__.py", "")
        wheel.writestr(
            f"{MODULE}-{file_version}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {metadata_version}\n",
        )
    return path


def fake_sdist(out: Path, version: str, nested_version: str | None = None) -> Path:
    """An sdist with its top PKG-INFO, and optionally a deeper one (egg-info) that differs."""
    path = out / f"{MODULE}-{version}.tar.gz"
    top = f"{MODULE}-{version}"
    members = {f"{top}/PKG-INFO": version}
    if nested_version is not None:
        members[f"{top}/src/{MODULE}.egg-info/PKG-INFO"] = nested_version
    with tarfile.open(path, "w:gz") as sdist:
        for name, stated in members.items():
            data = f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {stated}\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return path


def test_built_version_reads_the_metadata_and_checks_the_tag(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path, "1.2.0", "1.2.0")
    sdist = fake_sdist(tmp_path, "1.2.0", nested_version="0.0.0")
    assert read_built_metadata(sdist).member == f"{MODULE}-1.2.0/PKG-INFO"
    assert built_version([wheel, sdist], "v1.2") == (NAME, "1.2.0")
    assert built_version([wheel, sdist], "refs/tags/release-1.2.0", "release-")[1] == "1.2.0"

    with pytest.raises(ReleaseRefused) as caught:
        built_version([wheel, sdist], "v1.3.0")
    assert str(caught.value) == (
        f"tag v1.3.0 does not match version 1.2.0 in {wheel.name} "
        f"({MODULE}-1.2.0.dist-info/METADATA)"
    )


def test_built_version_refuses_distributions_that_disagree(tmp_path: Path) -> None:
    sdist = fake_sdist(tmp_path, "1.2.0")
    # The file name says 1.2.0, the metadata (what an index and pip believe) 1.2.0.post1.
    odd = tmp_path / "odd"
    odd.mkdir()
    wheel = fake_wheel(odd, "1.2.0", "1.2.0.post1")
    with pytest.raises(ReleaseRefused) as caught:
        built_version([wheel, sdist], "v1.2.0")
    assert str(caught.value) == (
        f"the distributions disagree on the version: 1.2.0.post1 in {wheel.name} "
        f"({MODULE}-1.2.0.dist-info/METADATA), 1.2.0 in {sdist.name} ({MODULE}-1.2.0/PKG-INFO)"
    )
    with pytest.raises(ReleaseRefused, match=r"does not match version 1\.2\.0\.post1 in"):
        built_version([wheel], "v1.2.0")
    broken = tmp_path / f"{MODULE}-1.2.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(PackagingError, match="cannot read the distribution"):
        read_built_metadata(broken)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        ("[tool.x]\na = 1\n", "table [project] is missing"),
        (
            '[project]\nname = "p"\nversion = "1.0"\ndynamic = ["version"]\n',
            "field 'project.version' is given and also listed in 'dynamic'",
        ),
        ('[project]\nname = "p"\n', "field 'project.version' is missing"),
        ('[project]\nversion = "1.0"\n', "field 'project.name' is missing"),
        ('[project]\nname = "p"\nversion = "one"\n', "'one' is not a PEP 440 version"),
        ("[project\n", "not valid TOML"),
    ],
)
def test_read_project_version_refuses_bad_pyproject(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    if content is not None:
        (tmp_path / "pyproject.toml").write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_project_version(tmp_path)
    assert expected in str(caught.value)
    assert str(tmp_path / "pyproject.toml") in str(caught.value)


def test_tag_must_match_the_version() -> None:
    with pytest.raises(ReleaseRefused) as caught:
        check_tag_matches("v1.2.0", "1.1.0")
    assert str(caught.value) == "tag v1.2.0 does not match version 1.1.0 in pyproject.toml"
    assert isinstance(caught.value, BadInput)
    # Normalised comparison: these name the same versions.
    assert check_tag_matches("v1.0", "1.0.0") == "1.0.0"
    assert check_tag_matches("refs/tags/v2.0.0-rc1", "2.0.0rc1") == "2.0.0rc1"
    assert check_tag_matches("release-3.1", "3.1", prefix="release-") == "3.1"
    with pytest.raises(ReleaseRefused, match="does not start with the tag prefix 'v'"):
        check_tag_matches("1.0.0", "1.0.0")
    with pytest.raises(ReleaseRefused, match="does not name a version"):
        check_tag_matches("vnext", "1.0.0")


# ---------------------------------------------------------------------------
# the whole release


def test_release_publishes_installs_and_reruns_idempotently(
    release_repo: Path, v1_dists: list[Path], pypiserver: PypiServer, tmp_path: Path
) -> None:
    name, version = read_project_version(release_repo)
    assert version is not None
    assert check_tag_matches("v1.0.0", version) == "1.0.0"
    assert built_version(v1_dists, "v1.0.0") == (name, "1.0.0")
    assert sorted(p.name for p in v1_dists) == [
        "cicd_release_probe-1.0.0-py3-none-any.whl",
        "cicd_release_probe-1.0.0.tar.gz",
    ]
    assert "PASSED" in check_distributions(v1_dists)

    log = tmp_path / "publish.log"
    report = publish_to(pypiserver, v1_dists, log_path=log)
    assert report.project == NAME and report.version == "1.0.0"
    assert [f.action for f in report.files] == ["uploaded", "uploaded"]
    assert {f.name: f.sha256 for f in report.files} == pypiserver.stored()
    assert [f.size for f in report.files] == [p.stat().st_size for p in v1_dists]
    # Credentials went through the environment: the server accepted them, and
    # neither the logged command line nor twine's output holds the password.
    assert "twine" in log.read_text() and pypiserver.password not in log.read_text()

    assert pip_install_and_import(pypiserver, "1.0.0", tmp_path) == "1"

    again = publish_to(pypiserver, v1_dists)
    assert [f.action for f in again.files] == ["skipped", "skipped"]

    # A re-run of the release rebuilds from the tag: the same bytes, all skipped.
    rebuilt = build(release_repo, tmp_path / "rebuilt", commit_time(release_repo, "v1.0.0"))
    assert [sha256_file(p) for p in rebuilt] == [sha256_file(p) for p in v1_dists]
    rerun = publish_to(pypiserver, rebuilt)
    assert rerun.names("skipped") == [p.name for p in rebuilt]

    notes = changelog.render_changelog(
        version,
        changelog.group_conventional(
            changelog.commits_between(
                release_repo, changelog.previous_tag(release_repo, "v1.0.0"), "v1.0.0"
            )
        ),
    )
    record = changelog.release_record(name, version, "v1.0.0", report.files, notes)
    assert json.loads(json.dumps(record))["files"][0]["action"] == "uploaded"
    assert "add the extra module" in changelog.render_release_markdown(record)


def sdist_members(path: Path) -> dict[str, tuple[bytes | None, int]]:
    members: dict[str, tuple[bytes | None, int]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.isfile() else None
            members[member.name] = (handle.read() if handle else None, int(member.mtime))
    return members


def test_build_returns_only_its_own_files_and_normalises_the_sdist(
    release_repo: Path, v1_dists: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "dist"
    out.mkdir()
    stale = out / "cicd_release_probe-0.1.0.tar.gz"
    stale.write_bytes(b"left over from an older release")
    built = build(release_repo, out, epoch=None)
    assert stale not in built and stale.exists()
    assert sorted(p.name for p in built) == sorted(
        p.name for p in out.iterdir() if p != stale and p.is_file()
    )
    # The same commit built without an epoch: the same members and bytes; only
    # the normalised build has every time set to the epoch and a zero gzip timestamp.
    epoch = commit_time(release_repo, "v1.0.0")
    plain = sdist_members(next(p for p in built if p.name.endswith(".tar.gz")))
    normalised_path = next(p for p in v1_dists if p.name.endswith(".tar.gz"))
    normalised = sdist_members(normalised_path)
    assert list(plain) == list(normalised)
    assert {n: c for n, (c, _) in plain.items()} == {n: c for n, (c, _) in normalised.items()}
    assert {t for _, t in normalised.values()} == {epoch}
    assert normalised_path.read_bytes()[4:8] == b"\0\0\0\0"


def test_build_failure_raises_with_the_output(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project\nname = 'x'\n", encoding="utf-8")
    with pytest.raises(PackagingError) as caught:
        build(tmp_path, tmp_path / "dist")
    assert "python -m build failed" in str(caught.value)
    assert "pyproject.toml" in str(caught.value)
    assert not [p for p in (tmp_path / "dist").iterdir()]


def test_twine_check_strict_rejects_a_broken_readme(tmp_path: Path) -> None:
    project = write_project(tmp_path / "broken", readme=BROKEN_README)
    dists = build(project, tmp_path / "dist")
    with pytest.raises(PackagingError) as caught:
        check_distributions(dists)
    message = str(caught.value)
    assert "twine check --strict failed" in message
    assert "long_description" in message and "FAILED" in message
    assert "cicd_release_probe-1.0.0" in message
    assert "\x1b[" not in message  # no colour codes in reports


# ---------------------------------------------------------------------------
# refusals and dry runs


def test_changed_content_under_the_same_version_is_refused_before_any_upload(
    v1_dists: list[Path], pypiserver: PypiServer, tmp_path: Path
) -> None:
    sdist = next(p for p in v1_dists if p.name.endswith(".tar.gz"))
    publish_to(pypiserver, [sdist])
    before = pypiserver.stored()
    page_before = httpx.get(f"{pypiserver.simple_url}{NAME}/").text
    assert list(before) == [sdist.name]

    changed = write_project(tmp_path / "changed", value=2)
    rebuilt = build(changed, tmp_path / "dist")
    new_sdist = next(p for p in rebuilt if p.name == sdist.name)
    with pytest.raises(ReleaseRefused) as caught:
        publish_to(pypiserver, rebuilt)
    message = str(caught.value)
    assert f"refusing to publish {NAME} 1.0.0" in message
    assert sdist.name in message
    assert before[sdist.name] in message and sha256_file(new_sdist) in message
    assert "Nothing was uploaded" in message
    # The wheel did not conflict, and was not uploaded either.
    assert pypiserver.stored() == before
    assert httpx.get(f"{pypiserver.simple_url}{NAME}/").text == page_before


def test_dry_run_uploads_nothing(v1_dists: list[Path], pypiserver: PypiServer) -> None:
    report = publish_to(pypiserver, v1_dists, dry_run=True)
    assert report.dry_run
    assert [f.action for f in report.files] == ["would-upload", "would-upload"]
    assert pypiserver.stored() == {}

    wheel = next(p for p in v1_dists if p.name.endswith(".whl"))
    publish_to(pypiserver, [wheel])
    report = publish_to(pypiserver, v1_dists, dry_run=True)
    assert {f.name: f.action for f in report.files} == {
        wheel.name: "skipped",
        "cicd_release_probe-1.0.0.tar.gz": "would-upload",
    }
    assert list(pypiserver.stored()) == [wheel.name]


def test_wrong_password_fails_without_leaking_it(
    v1_dists: list[Path], pypiserver: PypiServer, tmp_path: Path
) -> None:
    wrong = "definitely-wrong-password"
    log = tmp_path / "upload.log"
    with pytest.raises(PublishError) as caught:
        publish_to(pypiserver, v1_dists, password=wrong, log_path=log)
    assert "403" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in log.read_text()
    assert pypiserver.stored() == {}


def test_unreachable_repository_is_an_infrastructure_error(
    v1_dists: list[Path], pypiserver: PypiServer
) -> None:
    with pytest.raises(package_index.IndexUnavailable) as caught:
        publish(v1_dists, repository_url=f"http://127.0.0.1:{free_port()}/",
                index_url=pypiserver.url, username="u", password="p", dry_run=False)
    assert isinstance(caught.value, InfrastructureError)  # retried by the flow's tasks
    assert "Connection refused" in str(caught.value)
    assert pypiserver.stored() == {}


def test_files_of_different_projects_are_refused(v1_dists: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other_project-1.0.0.tar.gz"
    shutil.copy(next(p for p in v1_dists if p.name.endswith(".tar.gz")), other)
    with pytest.raises(BadInput, match="one project version"):
        publish([*v1_dists, other], repository_url="http://127.0.0.1:9/",
                index_url="http://127.0.0.1:9/", username=None, password=None, dry_run=True)


# ---------------------------------------------------------------------------
# indexes that show no hash, or speak PEP 691 JSON


def test_index_without_hashes_is_compared_by_downloading(
    v1_dists: list[Path], tmp_path: Path
) -> None:
    with running_pypiserver(tmp_path / "nohash", hash_algo="off") as server:
        publish_to(server, v1_dists)
        page = httpx.get(f"{server.simple_url}{NAME}/").text
        assert "#sha256=" not in page and v1_dists[0].name in page
        assert [f.action for f in publish_to(server, v1_dists).files] == ["skipped", "skipped"]

        changed = write_project(tmp_path / "changed", value=3)
        wheel = next(p for p in build(changed, tmp_path / "dist") if p.name.endswith(".whl"))
        with pytest.raises(ReleaseRefused, match=sha256_file(wheel)):
            publish_to(server, [wheel], dry_run=True)


class _Pep691Handler(BaseHTTPRequestHandler):
    """A minimal JSON-only simple index serving ``files`` (name -> sha256 shown)."""

    files: dict[str, str] = {}
    seen_accept: list[str] = []

    def do_GET(self) -> None:
        self.seen_accept.append(self.headers.get("Accept", ""))
        if self.path != f"/simple/{NAME}/":
            self.send_error(404)
            return
        body = json.dumps(
            {
                "meta": {"api-version": "1.0"},
                "name": NAME,
                "files": [
                    {"filename": n, "url": f"../../files/{n}", "hashes": {"sha256": h}}
                    for n, h in self.files.items()
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def json_index() -> Iterator[tuple[str, type[_Pep691Handler]]]:
    handler = type("Handler", (_Pep691Handler,), {"files": {}, "seen_accept": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_pep691_json_index(
    v1_dists: list[Path], json_index: tuple[str, type[_Pep691Handler]]
) -> None:
    url, handler = json_index
    wheel, sdist = sorted(v1_dists, key=lambda p: not p.name.endswith(".whl"))
    handler.files = {wheel.name: sha256_file(wheel)}

    def dry_run() -> publishing.PublishReport:
        # Port 9 (discard) is never contacted: a dry run does not upload.
        return publish(v1_dists, repository_url="http://127.0.0.1:9/", index_url=url,
                       username=None, password=None, dry_run=True)

    report = dry_run()
    assert {f.name: f.action for f in report.files} == {
        wheel.name: "skipped", sdist.name: "would-upload"
    }
    assert handler.seen_accept[0].startswith("application/vnd.pypi.simple.v1+json")

    handler.files = {sdist.name: "0" * 64}
    with pytest.raises(ReleaseRefused, match=f"{sdist.name} is already on .* with sha256 0{{64}}"):
        dry_run()


@pytest.mark.parametrize(
    ("index_url", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/simple/my-pkg/"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/simple/my-pkg/"),
        ("https://pypi.org/simple/", "https://pypi.org/simple/my-pkg/"),
        ("https://host/repo/simple", "https://host/repo/simple/my-pkg/"),
    ],
)
def test_simple_project_url(index_url: str, expected: str) -> None:
    assert package_index.simple_project_url(index_url, "My_Pkg") == expected


def test_index_url_for_repository() -> None:
    index_for = package_index.index_url_for
    assert index_for("https://upload.pypi.org/legacy/") == "https://pypi.org/simple/"
    assert index_for("https://test.pypi.org/legacy/") == "https://test.pypi.org/simple/"
    assert index_for("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/"
