"""The PR validation flow end to end on real git repositories of the sample target.

Each scenario is a branch of the sample repo (see tests/sample_repos.py); the
flow runs against a real Prefect server, real virtualenvs and, for the
framework job, a real Neo4j.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cicd.results import PipelineFailed
from tests.conftest import BIN
from tests.sample_repos import commit_on_branch

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cicd"), *args], capture_output=True, text=True, timeout=900, check=False
    )


def jobs_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["name"]: job for job in report["jobs"]}


def test_green_commit_passes_every_job(sample_repos: dict[str, Path]) -> None:
    from flows.pr_validation import pr_validation

    # A commit of its own: a run of main elsewhere in the session would be cached.
    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "green", "feat: a green commit"):
        (repo / "src" / "agentkit" / "green.py").write_text('"""Green."""\n')

    report = pr_validation(repo=str(repo), ref="green")

    assert report["state"] == "passed"
    jobs = jobs_by_name(report)
    assert set(jobs) == {"quality", "unit", "framework"}
    assert all(job["state"] == "passed" for job in jobs.values())
    assert [step["name"] for step in jobs["quality"]["steps"]] == ["ruff", "mypy", "black"]
    assert (jobs["unit"]["passed"], jobs["unit"]["failed"], jobs["unit"]["skipped"]) == (12, 0, 0)
    assert 50 < jobs["unit"]["coverage_percent"] <= 100
    # The framework job ran the Neo4j tests against a real server, none skipped,
    # and the server is gone.
    assert (jobs["framework"]["passed"], jobs["framework"]["skipped"]) == (3, 0)
    # Its time counts the server's start and health check, shown as a step.
    services, pytest_step = jobs["framework"]["steps"]
    assert services["name"] == "services" and pytest_step["name"] == "pytest"
    assert services["duration"] > 1.0
    total = services["duration"] + pytest_step["duration"]
    assert jobs["framework"]["duration"] >= total - 0.01  # each rounded to ms
    from tests.test_pr_services import neo4j_servers

    assert neo4j_servers() == []


def test_lint_error_fails_only_the_quality_job(sample_repos: dict[str, Path]) -> None:
    result = run_cli(
        "run",
        "pr-validation",
        "--repo",
        str(sample_repos["agentkit"]),
        "--ref",
        "lint-error",
        "--json",
    )

    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["flow"] == "pr-validation" and report["state"] == "failed"
    assert report["duration"] > 0
    jobs = jobs_by_name(report)
    assert jobs["quality"]["state"] == "failed"
    assert {s["name"]: s["returncode"] for s in jobs["quality"]["steps"]}["ruff"] == 1
    assert jobs["unit"]["state"] == "passed" and jobs["unit"]["passed"] == 12
    assert jobs["framework"]["state"] == "passed"


def test_failing_test_fails_only_the_unit_job_and_is_named(sample_repos: dict[str, Path]) -> None:
    from prefect.client.orchestration import get_client

    from flows.pr_validation import pr_validation
    from tasks.reports import render_summary

    with pytest.raises(PipelineFailed) as failed:
        pr_validation(repo=str(sample_repos["agentkit"]), ref="failing-test")

    report = failed.value.report
    states = {job.name: job.state.value for job in report.jobs}
    assert states == {"quality": "passed", "unit": "failed", "framework": "passed"}
    unit = next(job for job in report.jobs if job.name == "unit")
    assert unit.tests is not None
    assert (unit.tests.passed, unit.tests.failed) == (12, 1)
    assert unit.tests.failures[0].name.endswith("test_capitals::test_agent_knows_capitals")
    assert "agent forgot Paris" in unit.tests.failures[0].message
    summary = render_summary(report)
    assert "test_agent_knows_capitals" in summary and "agent forgot Paris" in summary

    # The same summary was published as a Prefect artifact of the run (from a
    # thread of its own while the flow ended: tasks/deferred.py).
    import asyncio

    from tasks import deferred

    assert deferred.wait() == []

    async def latest_summary() -> str:
        async with get_client() as client:
            artifact = await client.read_latest_artifacts()  # type: ignore[call-arg]
            by_key = {a.key: a for a in artifact}
            return str(by_key["pr-validation-summary"].data)

    assert "test_agent_knows_capitals" in asyncio.run(latest_summary())


def test_bad_config_exits_2_naming_the_field(sample_repos: dict[str, Path]) -> None:
    result = run_cli(
        "run", "pr-validation", "--repo", str(sample_repos["agentkit"]), "--ref", "bad-config"
    )

    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("cicd: error:")]
    assert len(error_lines) == 1
    assert "cicd.yaml" in error_lines[0]
    assert "tests.unit.timeout" in error_lines[0]
    assert "'soon'" in error_lines[0]


@pytest.mark.parametrize(
    ("repo_arg", "ref", "expected"),
    [
        ("agentkit", "no-such-branch", "unknown ref 'no-such-branch'"),
        ("/nonexistent/repo", "main", "does not exist"),
    ],
)
def test_unknown_repo_or_ref_exits_2(
    sample_repos: dict[str, Path], repo_arg: str, ref: str, expected: str
) -> None:
    repo = str(sample_repos.get(repo_arg, repo_arg))
    result = run_cli("run", "pr-validation", "--repo", repo, "--ref", ref, "--json")

    assert result.returncode == 2
    assert expected in result.stderr
    # --json: one object on every exit, here the error without a report.
    assert json.loads(result.stdout)["exit_code"] == 2


def test_job_timeout_kills_the_whole_process_group(
    sample_repos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pr_validation import pr_validation

    pid_file = tmp_path / "pids"
    monkeypatch.setenv("HANG_PID_FILE", str(pid_file))
    # The target writes its host PIDs outside its workspace: only unboxed. The
    # boxed case is in tests/security/test_confinement.py.
    monkeypatch.setenv("CICD_SANDBOX", "off")

    with pytest.raises(PipelineFailed) as failed:
        pr_validation(repo=str(sample_repos["agentkit"]), ref="hang")

    unit = failed.value.report.jobs[0]
    assert unit.name == "unit" and unit.state.value == "timed_out"
    assert "timed out after 8s" in unit.reason
    pytest_pid, sleep_pid = (int(p) for p in pid_file.read_text().split())
    for pid in (pytest_pid, sleep_pid):
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"pid {pid} survived"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_checkout_never_touches_the_working_tree(sample_repos: dict[str, Path]) -> None:
    from cicd.git import checkout, remove_workspace

    repo = sample_repos["agentkit"]
    dirty = repo / "src" / "agentkit" / "agent.py"
    original = dirty.read_text()
    dirty.write_text(original + "\n# uncommitted work\n")
    try:
        result = checkout(str(repo), "main")
        assert "uncommitted work" not in (result.path / "src/agentkit/agent.py").read_text()
        assert "uncommitted work" in dirty.read_text()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert status.strip() == "M src/agentkit/agent.py"
        remove_workspace(result.path)
        assert not result.path.exists()
    finally:
        dirty.write_text(original)


def test_default_sample_repo_is_a_git_repo_of_the_example(tmp_path: Path) -> None:
    env = dict(os.environ, CICD_HOME=str(tmp_path / "home"))
    # The sample repo is created from examples/ without running a pipeline.
    code = "from cicd.sample import default_sample_repo; print(default_sample_repo())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    log = subprocess.run(
        ["git", "-C", out, "log", "--format=%s"], capture_output=True, text=True, check=True
    ).stdout
    assert log.strip() == "feat: initial agentkit sample"
    assert (Path(out) / "cicd.yaml").is_file()


def branch_installing_the_project(repo: Path, branch: str, files: dict[str, str]) -> None:
    """A branch off main whose cicd.yaml installs the project for its unit tests."""
    with commit_on_branch(repo, branch, f"ci: {branch}"):
        config = repo / "cicd.yaml"
        config.write_text(
            config.read_text()
            .replace(
                "extras: [dev, integration]", "extras: [dev, integration]\n  install_project: true"
            )
            .replace("suites: [unit, framework]", "suites: [unit]")
        )
        for name, text in files.items():
            (repo / name).write_text(text)


def test_install_project_makes_the_targets_metadata_visible_to_its_tests(
    sample_repos: dict[str, Path],
) -> None:
    repo = sample_repos["agentkit"]
    branch_installing_the_project(
        repo,
        "installed-project",
        {
            "tests/unit/test_installed.py": (
                '"""Needs the distribution installed, as `pip install .` would."""\n\n'
                "import importlib.metadata\n\n\n"
                "def test_distribution_metadata_is_installed() -> None:\n"
                '    assert importlib.metadata.version("agentkit-sample") == "0.3.0"\n'
            )
        },
    )

    result = run_cli(
        "run", "pr-validation", "--repo", str(repo), "--ref", "installed-project", "--json"
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    jobs = jobs_by_name(json.loads(result.stdout))
    assert jobs["unit"]["state"] == "passed" and jobs["unit"]["passed"] == 13
    # Imports still came from the checkout's files, the ones coverage measures.
    assert jobs["unit"]["coverage_percent"] > 50


def test_a_target_that_does_not_build_fails_the_run_with_the_build_output(
    sample_repos: dict[str, Path],
) -> None:
    repo = sample_repos["agentkit"]
    branch_installing_the_project(
        repo, "unbuildable", {"setup.py": 'raise SystemExit("setup.py refuses on purpose")\n'}
    )

    result = run_cli("run", "pr-validation", "--repo", str(repo), "--ref", "unbuildable", "--json")

    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert json.loads(result.stdout)["state"] == "failed"
    # Prefect's log of the failed task comes first; the CLI's verdict, with the
    # build's own words, closes the output.
    verdict = result.stderr.rfind("cicd: error: building and installing the project failed")
    assert verdict >= 0, result.stderr[-2000:]
    assert "setup.py refuses on purpose" in result.stderr[verdict:]
