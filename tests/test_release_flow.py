"""The release flow against a real local pypiserver: publish, install back,
idempotent re-run, a changed file refused, and the stops before upload."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from cicd.results import PipelineFailed
from cicd.sample import commit_all, git
from tasks.packaging import ReleaseRefused
from tests.conftest import BIN
from tests.pypiserver_fixture import PypiServer, pypiserver  # noqa: F401 - fixture
from tests.sample_repos import FAILING_TEST

pytestmark = pytest.mark.usefixtures("prefect_server")
SECRET_BLOCK = "test-index-password"


def release_branch(repo: Path, branch: str, server: PypiServer, version: str = "0.3.0") -> Path:
    """A branch of main configured to release to ``server`` (unit tests only, for speed)."""
    from prefect.blocks.system import Secret

    Secret(value=server.password).save(SECRET_BLOCK, overwrite=True)
    git(repo, "checkout", "--quiet", "-B", branch, "main")
    config = yaml.safe_load((repo / "cicd.yaml").read_text())
    config["release"] = {
        "repository_url": server.url,
        "index_url": server.simple_url,
        "credentials_secret": SECRET_BLOCK,
        "username": server.username,
    }
    config["pipelines"]["release"] = {"suites": ["unit"]}
    (repo / "cicd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('version = "0.3.0"', f'version = "{version}"')
    )
    commit_all(repo, f"chore: bump version to {version}")
    return repo


def tag(repo: Path, name: str, force: bool = False) -> None:
    git(repo, "tag", *(["-f"] if force else []), name)
    git(repo, "checkout", "--quiet", "main")


def test_publish_install_rerun_and_refuse_a_changed_file(
    sample_repos: dict[str, Path], pypiserver: PypiServer, tmp_path: Path  # noqa: F811
) -> None:
    from flows.release import release

    repo = release_branch(sample_repos["agentkit"], "release-0.3", pypiserver)
    (repo / "CHANGES.txt").write_text("fix things\n")
    commit_all(repo, "fix(agent): answer arithmetic with spaces")
    tag(repo, "v0.3.0")

    dry = release(repo=str(repo), ref="v0.3.0", dry_run=True)
    assert sorted(f["action"] for f in dry["release"]["files"]) == ["would-upload"] * 2
    assert dry["release"]["dry_run"] is True
    assert pypiserver.stored() == {}

    first = release(repo=str(repo), ref="v0.3.0")

    assert first["state"] == "passed"
    files = first["release"]["files"]
    assert sorted(f["action"] for f in files) == ["uploaded", "uploaded"]
    assert sorted(pypiserver.stored()) == sorted(f["name"] for f in files)
    assert {f["name"]: f["sha256"] for f in files} == pypiserver.stored()
    assert "answer arithmetic with spaces" in first["release"]["changelog"]

    # Install it back from the index and use it.
    venv = tmp_path / "venv"
    subprocess.run([str(BIN / "uv"), "venv", "-q", str(venv)], check=True)
    subprocess.run(
        [
            str(BIN / "uv"),
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            "--index-url",
            pypiserver.simple_url,
            "agentkit-sample==0.3.0",
        ],
        check=True,
    )
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from agentkit import Agent; print(Agent().process('What is 6*7?').text)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "42"

    # The same release again: every file is already there, nothing uploaded, success.
    again = release(repo=str(repo), ref="v0.3.0")
    assert again["state"] == "passed"
    assert sorted(f["action"] for f in again["release"]["files"]) == ["skipped", "skipped"]

    # The tag moved to a commit that changes the package: same names, other bytes.
    before = pypiserver.stored()
    git(repo, "checkout", "--quiet", "release-0.3")
    agent = repo / "src" / "agentkit" / "agent.py"
    agent.write_text(agent.read_text() + "\n# changed after the release\n")
    commit_all(repo, "fix: change after release")
    tag(repo, "v0.3.0", force=True)
    with pytest.raises(ReleaseRefused) as refused:
        release(repo=str(repo), ref="v0.3.0")
    assert "sha256" in str(refused.value) or "hash" in str(refused.value)
    assert pypiserver.stored() == before


def test_tag_version_mismatch_stops_before_anything(
    sample_repos: dict[str, Path], pypiserver: PypiServer  # noqa: F811
) -> None:
    from flows.release import release

    repo = release_branch(sample_repos["agentkit"], "release-mismatch", pypiserver)
    tag(repo, "v9.9.9")

    with pytest.raises(ReleaseRefused, match=r"tag v9\.9\.9 does not match version 0\.3\.0"):
        release(repo=str(repo), ref="v9.9.9")
    assert pypiserver.stored() == {}


def test_failing_test_stops_the_release_before_upload(
    sample_repos: dict[str, Path], pypiserver: PypiServer  # noqa: F811
) -> None:
    from flows.release import release

    repo = release_branch(sample_repos["agentkit"], "release-failing", pypiserver, "0.3.1")
    (repo / "tests" / "unit" / "test_capitals.py").write_text(FAILING_TEST)
    commit_all(repo, "test: capitals")
    tag(repo, "v0.3.1")

    with pytest.raises(PipelineFailed) as failed:
        release(repo=str(repo), ref="v0.3.1")
    jobs = {job.name: job for job in failed.value.report.jobs}
    assert jobs["unit"].state.value == "failed"
    assert jobs["publish"].state.value == "skipped"
    assert pypiserver.stored() == {}
