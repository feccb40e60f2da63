"""The release flow when the index goes away mid-publish, and two releases of one
version at once (real pypiserver, real Prefect server, real ``cicd`` processes)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cicd.results import PipelineFailed
from tests.conftest import BIN
from tests.pypiserver_fixture import PypiServer, pypiserver  # noqa: F401 - fixture
from tests.test_publish_faults import index_front
from tests.test_release_flow import release_branch, tag

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def test_index_stopped_between_two_uploads_then_the_rerun_completes_the_release(
    sample_repos: dict[str, Path],
    pypiserver: PypiServer,  # noqa: F811
) -> None:
    from flows.release import release

    repo = release_branch(sample_repos["agentkit"], "release-partial", pypiserver, "0.5.0")
    tag(repo, "v0.5.0")
    with index_front(pypiserver.url, uploads=1) as front:
        port = front.server.server_address[1]
        with pytest.raises(PipelineFailed) as failed:
            release(repo=str(repo), ref="v0.5.0", repository_url=front.url)
    report = failed.value.report.to_json()  # what --json prints
    publish = {job["name"]: job for job in report["jobs"]}["publish"]
    assert publish["state"] == "failed"
    (on_index,) = publish["details"]["uploaded"]
    (missing,) = publish["details"]["missing"]
    assert sorted(pypiserver.stored()) == [on_index]
    assert f"on the index: {on_index}" in publish["reason"]
    assert f"not on the index: {missing}" in publish["reason"]

    with index_front(pypiserver.url, uploads=None, port=port) as front:
        rerun = release(repo=str(repo), ref="v0.5.0", repository_url=front.url)
    assert rerun["state"] == "passed"
    actions = {f["name"]: f["action"] for f in rerun["release"]["files"]}
    assert actions == {on_index: "skipped", missing: "uploaded"}
    assert sorted(pypiserver.stored()) == sorted([on_index, missing])


def test_two_releases_of_one_version_at_once(
    sample_repos: dict[str, Path],
    pypiserver: PypiServer,  # noqa: F811
) -> None:
    repo = release_branch(sample_repos["agentkit"], "release-twice", pypiserver, "0.6.0")
    tag(repo, "v0.6.0")
    argv = [str(BIN / "cicd"), "run", "release", "--repo", str(repo), "--ref", "v0.6.0", "--json"]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=1500) for proc in procs]
    codes = [proc.returncode for proc in procs]
    assert codes == [0, 0], outputs
    publishes = [
        {job["name"]: job for job in json.loads(out)["jobs"]}["publish"] for out, _ in outputs
    ]
    uploaded = sorted(len(p["details"]["uploaded"]) for p in publishes)
    assert uploaded == [0, 2]
    second = next(p for p in publishes if not p["details"]["uploaded"])
    assert "already published" in second["reason"]
    assert len(second["details"]["skipped"]) == 2
    assert len(pypiserver.stored()) == 2
