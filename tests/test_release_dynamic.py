"""Releases of projects whose version the build backend computes (flit's
``__version__``, setuptools-scm, setuptools' ``attr:``), through the whole
release flow against a real pypiserver: the version is read from the built
wheel and sdist and must be the tag's."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest
from packaging.utils import parse_sdist_filename, parse_wheel_filename

from cicd import paths
from cicd.git import checkout
from cicd.sample import commit_all, git
from tasks.packaging import ReleaseRefused
from tasks.release_jobs import check_release_checkout
from tests.conftest import BIN
from tests.pypiserver_fixture import PypiServer, pypiserver  # noqa: F401 - fixture
from tests.release_repos import ATTR, FLIT, SCM, dynamic_version_repo, project_name

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]
SECRET_BLOCK = "test-dynamic-index-password"
WRITING_TEST = """from pathlib import Path

import cicd_flit_probe


def test_writes_into_the_package() -> None:
    injected = Path(cicd_flit_probe.__file__).parent / "injected.py"
    injected.write_text("INJECTED = True\\n")
    assert injected.is_file()
"""


def release_section(server: PypiServer) -> dict[str, str]:
    from prefect.blocks.system import Secret

    Secret(value=server.password).save(SECRET_BLOCK, overwrite=True)
    return {
        "repository_url": server.url,
        "index_url": server.simple_url,
        "credentials_secret": SECRET_BLOCK,
        "username": server.username,
    }


def stored_versions(server: PypiServer) -> dict[str, str]:
    """File name -> the version its name states, for what the index holds."""
    versions: dict[str, str] = {}
    for name in server.stored():
        if name.endswith(".whl"):
            versions[name] = str(parse_wheel_filename(name)[1])
        else:
            versions[name] = str(parse_sdist_filename(name)[1])
    return versions


def installed_version(server: PypiServer, requirement: str, dist: str, tmp_path: Path) -> str:
    """Install ``requirement`` from the index into a new venv; the version it reports."""
    venv = tmp_path / "consumer"
    subprocess.run([str(BIN / "uv"), "venv", "-q", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [str(BIN / "uv"), "pip", "install", "-q", "--python", python,
         "--index-url", server.simple_url, requirement],
        check=True,
    )  # fmt: skip
    return subprocess.run(
        [python, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_flit_version_mismatch_refused_then_matching_tag_published(
    tmp_path: Path, pypiserver: PypiServer  # noqa: F811
) -> None:
    from flows.release import release

    repo = dynamic_version_repo(tmp_path, FLIT, release_section(pypiserver), version="1.0.0")
    git(repo, "tag", "v2.0.0")
    runs_before = set(paths.runs().iterdir())

    with pytest.raises(ReleaseRefused) as refused:
        release(repo=str(repo), ref="v2.0.0")
    message = str(refused.value)
    assert "tag v2.0.0 does not match version 1.0.0 in " in message
    assert "cicd_flit_probe-1.0.0" in message and "METADATA" in message
    assert pypiserver.stored() == {}
    # Refused after the build and before the tests: no test log in the run.
    (refused_run,) = set(paths.runs().iterdir()) - runs_before
    assert sorted(p.name for p in (refused_run / "logs").iterdir()) == ["build.log"]

    # A test that writes into the package: the build is from a workspace of its own.
    (repo / "tests" / "test_writes.py").write_text(WRITING_TEST)
    commit_all(repo, "test: a test that writes into the package")
    git(repo, "tag", "v1.0.0")
    outcome = release(repo=str(repo), ref="v1.0.0")

    assert outcome["state"] == "passed"
    assert {job["name"]: job["state"] for job in outcome["jobs"]} == {
        "unit": "passed", "build": "passed", "publish": "passed"
    }  # fmt: skip
    assert outcome["release"]["version"] == "1.0.0"
    assert sorted(stored_versions(pypiserver).values()) == ["1.0.0", "1.0.0"]
    assert sorted(pypiserver.stored()) == sorted(f["name"] for f in outcome["release"]["files"])
    (wheel,) = pypiserver.packages.glob("*.whl")
    with zipfile.ZipFile(wheel) as built:
        assert "cicd_flit_probe/__init__.py" in built.namelist()
        assert "cicd_flit_probe/injected.py" not in built.namelist()


def test_setuptools_scm_publishes_the_tag_not_a_dev_version(
    tmp_path: Path, pypiserver: PypiServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from flows.release import release

    repo = dynamic_version_repo(tmp_path, SCM, release_section(pypiserver))
    git(repo, "tag", "-a", "v1.2.0", "-m", "1.2.0")
    (repo / "CHANGES.md").write_text("more\n")
    commit_all(repo, "fix: a change after 1.2.0")
    git(repo, "tag", "-a", "v1.3.0", "-m", "1.3.0")
    # A version pretended by the environment must not reach the build.
    monkeypatch.setenv("SETUPTOOLS_SCM_PRETEND_VERSION", "9.9.9")

    outcome = release(repo=str(repo), ref="v1.3.0")

    assert outcome["state"] == "passed"
    assert outcome["release"]["version"] == "1.3.0"
    assert outcome["release"]["previous_tag"] == "v1.2.0"
    assert sorted(stored_versions(pypiserver).values()) == ["1.3.0", "1.3.0"]
    name = project_name(SCM)
    assert installed_version(pypiserver, f"{name}==1.3.0", name, tmp_path) == "1.3.0"


def test_setup_cfg_attr_version_published(
    tmp_path: Path, pypiserver: PypiServer  # noqa: F811
) -> None:
    from flows.release import release

    repo = dynamic_version_repo(tmp_path, ATTR, release_section(pypiserver), version="0.4.0")
    git(repo, "tag", "v0.4")  # PEP 440: 0.4 and 0.4.0 are one version

    outcome = release(repo=str(repo), ref="v0.4")

    assert outcome["state"] == "passed"
    assert outcome["release"]["version"] == "0.4.0"
    assert sorted(stored_versions(pypiserver).values()) == ["0.4.0", "0.4.0"]


def test_release_checkout_needs_the_tag_and_the_history(tmp_path: Path) -> None:
    repo = dynamic_version_repo(tmp_path, SCM, {})
    git(repo, "tag", "v1.0.0")
    commit_all(repo, "feat: after 1.0.0")
    git(repo, "tag", "v1.1.0")
    git(repo, "branch", "v9.0.0")  # looks like a release tag, is a branch

    full = checkout(str(repo), "v1.1.0")
    check_release_checkout(full, "v1.1.0", static_version=False)
    check_release_checkout(full, "refs/tags/v1.1.0", static_version=False)
    with pytest.raises(ReleaseRefused, match=r"v9\.0\.0 is not a tag in "):
        check_release_checkout(checkout(str(repo), "v9.0.0"), "v9.0.0", static_version=True)
    with pytest.raises(ReleaseRefused, match=r"tag v1\.0\.0 points at [0-9a-f]{40} in the"):
        check_release_checkout(full, "v1.0.0", static_version=False)

    # A shallow clone as the repository: its mirror cannot give the history back.
    shallow = tmp_path / "shallow"
    source = f"file://{repo}"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", "--branch", "v1.1.0", source, str(shallow)],
        check=True,
    )
    cut = checkout(str(shallow), "v1.1.0")
    with pytest.raises(ReleaseRefused, match="is shallow and its origin has no more history"):
        check_release_checkout(cut, "v1.1.0", static_version=False)
    # A static version needs no history: released as before.
    check_release_checkout(cut, "v1.1.0", static_version=True)
