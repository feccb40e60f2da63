"""The framework-tests job's Neo4j never outlives its run: not after a pass
(see test_pr_validation), a job timeout, or a cancelled (SIGTERM'd) run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cicd.results import PipelineFailed
from tests.conftest import BIN
from tests.sample_repos import commit_on_branch

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.neo4j]

NEO4J_MAIN = "org.neo4j.server.CommunityEntryPoint"

HANGING_NEO4J_TEST = """import time
from typing import Any

import pytest

pytestmark = pytest.mark.neo4j


def test_hangs_with_the_database(neo4j_driver: Any) -> None:
    neo4j_driver.execute_query("CREATE (:Hang)", database_="neo4j")
    time.sleep(300)
"""


def neo4j_servers() -> list[int]:
    """PIDs of Neo4j servers started under this session's CICD_HOME."""
    home = os.environ["CICD_HOME"]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if NEO4J_MAIN in cmdline and home in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.25)
    return False


def test_job_timeout_stops_the_service(sample_repos: dict[str, Path]) -> None:
    from flows.pr_validation import pr_validation

    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "neo4j-hang", "test: a Neo4j test that hangs"):
        (repo / "tests" / "integration" / "test_hang.py").write_text(HANGING_NEO4J_TEST)
        config = repo / "cicd.yaml"
        config.write_text(config.read_text().replace("timeout: 900", "timeout: 20", 1))
    assert neo4j_servers() == []

    with pytest.raises(PipelineFailed) as failed:
        pr_validation(repo=str(repo), ref="neo4j-hang")

    jobs = {job.name: job for job in failed.value.report.jobs}
    assert jobs["framework"].state.value == "timed_out"
    assert jobs["unit"].state.value == "passed"
    assert neo4j_servers() == []


def test_cancelled_run_leaves_no_server(sample_repos: dict[str, Path], tmp_path: Path) -> None:
    repo = sample_repos["agentkit"]
    # A commit of its own: an earlier run of main would be served from the cache.
    with commit_on_branch(repo, "cancel-me", "feat: a run to cancel"):
        (repo / "src" / "agentkit" / "cancelled.py").write_text('"""Cancelled."""\n')
    log = tmp_path / "cicd.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", "cancel-me"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = wait_until(lambda: neo4j_servers() != [] or proc.poll() is not None, 240)
        assert started and proc.poll() is None, f"Neo4j never started:\n{log.read_text()[-3000:]}"
        servers = neo4j_servers()
        os.kill(proc.pid, signal.SIGTERM)  # what a cancellation delivers
        proc.wait(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert wait_until(lambda: neo4j_servers() == [], 30), f"left running: {servers}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


FIXED_PORT_TEST = """import neo4j
import pytest

pytestmark = pytest.mark.neo4j


def test_the_hard_coded_address_with_apoc() -> None:
    # As a suite written for a GitHub Actions `ports: ["7687:7687"]` service does.
    with neo4j.GraphDatabase.driver("bolt://localhost:7687", auth=("neo4j", "test-password")) as d:
        records, _, _ = d.execute_query("RETURN apoc.version() AS v", database_="neo4j")
    assert records[0]["v"].startswith("5.26.")
"""


def test_a_suite_that_hard_codes_localhost_7687_passes_with_port_7687(
    sample_repos: dict[str, Path],
) -> None:
    from flows.pr_validation import pr_validation

    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "neo4j-7687", "test: a suite that hard-codes localhost:7687"):
        (repo / "tests" / "integration" / "test_fixed_port.py").write_text(FIXED_PORT_TEST)
        config = repo / "cicd.yaml"
        config.write_text(
            config.read_text().replace(
                "    password: test-password\n",
                "    password: test-password\n    port: 7687\n    plugins: [apoc]\n", 1,
            )
        )
    with commit_on_branch(repo, "neo4j-7687-free", "test: the same suite on a free port",
                          base="neo4j-7687"):
        config = repo / "cicd.yaml"
        config.write_text(config.read_text().replace("    port: 7687\n", "", 1))

    report = pr_validation(repo=str(repo), ref="neo4j-7687")

    framework = next(job for job in report["jobs"] if job["name"] == "framework")
    assert framework["state"] == "passed"
    assert (framework["passed"], framework["failed"], framework["skipped"]) == (4, 0, 0)
    assert neo4j_servers() == []
    # The same suite without the fixed port fails: the address is really the one in use.
    with pytest.raises(PipelineFailed) as failed:
        pr_validation(repo=str(repo), ref="neo4j-7687-free")
    jobs = {job.name: job for job in failed.value.report.jobs}
    assert jobs["framework"].state.value == "failed"
    assert jobs["framework"].tests is not None and jobs["framework"].tests.failed == 1
