"""A run's commit statuses on the git host: the job results they say, then the
PR pipeline end to end against local APIs that check every request against
GitHub's published OpenAPI description (GitLab: its documented fields), on a
green commit, a red one, a docs-only one, with an expired token, from a fork.
The plugins and the configuration alone: tests/test_git_host_plugins.py.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cicd.config import StatusesConfig
from cicd.results import JobResult, JobState, PipelineReport, TestCounts
from tasks.commit_statuses import CommitStatuses
from tasks.git_hosts.base import CommitStatus
from tasks.git_hosts.github import GitHubHost
from tests.conftest import BIN
from tests.git_host_receiver import ApiReceiver, github_api, gitlab_api
from tests.sample_repos import FAILING_TEST, commit_on_branch

TOKEN = "ghp_statusTOKEN_DO_NOT_LEAK_0042"
SHA = "0123456789abcdef0123456789abcdef01234567"
CREATE_STATUS = "repos/create-commit-status"


def statuses(receiver: ApiReceiver) -> list[tuple[str, str, str]]:
    return [(b["context"], b["state"], b["description"]) for b in receiver.bodies(CREATE_STATUS)]


# --- the run's statuses ----------------------------------------------------------


def report(*jobs: JobResult) -> PipelineReport:
    return PipelineReport("pr-validation", "repo", "HEAD", SHA, jobs, duration=3.0)


def test_every_job_ends_final_and_a_skipped_one_is_a_success_with_its_reason() -> None:
    skipped = "skipped: only paths no job depends on changed (docs/usage.md; ignore_paths)"
    with github_api(TOKEN) as api:
        host = GitHubHost(api.url, "acme/agentkit", TOKEN)
        run = CommitStatuses(host, SHA, "pr-validation", "ci", "http://ui/run")
        run.pending(["quality", "unit", "framework", "lost"])
        run.final(
            report(
                JobResult("quality", JobState.SKIPPED, 0.0, reason=skipped),
                JobResult("unit", JobState.PASSED, 2.5, tests=TestCounts(passed=12)),
                JobResult("framework", JobState.ERRORED, 1.0, reason="internal error: boom"),
            )
        )

    assert api.problems == []
    assert statuses(api) == [
        ("ci/pr-validation", "pending", "pr-validation running"),
        ("ci/pr-validation/quality", "pending", "quality running"),
        ("ci/pr-validation/unit", "pending", "unit running"),
        ("ci/pr-validation/framework", "pending", "framework running"),
        ("ci/pr-validation/lost", "pending", "lost running"),
        ("ci/pr-validation/quality", "success", skipped),
        ("ci/pr-validation/unit", "success", "12 tests passed, passed in 2.5 s"),
        ("ci/pr-validation/framework", "error", "errored: internal error: boom"),
        # Pending without a result: never left pending.
        ("ci/pr-validation/lost", "error", "no result: the run ended before this job"),
        ("ci/pr-validation", "error", "framework errored"),
    ]
    assert {b["target_url"] for b in api.bodies(CREATE_STATUS)} == {"http://ui/run"}
    assert run.open_contexts == []

    # A job's end that was posted as it ended is not posted again.
    with github_api(TOKEN) as api:
        run = CommitStatuses(GitHubHost(api.url, "acme/agentkit", TOKEN), SHA, "pr-validation")
        unit = JobResult("unit", JobState.FAILED, 1.0, reason="1 failed")
        run.job_ended(unit)
        run.final(report(unit))
    assert [(c, s) for c, s, _ in statuses(api)] == [
        ("cicd/pr-validation/unit", "failure"),
        ("cicd/pr-validation", "failure"),
    ]


def test_a_refused_token_is_logged_once_per_run_and_stops_the_posts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with github_api(TOKEN) as api:
        host = GitHubHost(api.url, "acme/agentkit", "expired-token")
        logger = logging.getLogger("test.statuses")
        run = CommitStatuses(host, SHA, "pr-validation", logger=lambda: logger)
        with caplog.at_level(logging.ERROR, logger="test.statuses"):
            run.pending(["unit"])
            run.final(report(JobResult("unit", JobState.FAILED, 1.0, reason="1 failed")))

    assert len(api.requests) == 1  # nothing more after the 401
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 2, errors
    assert "answered HTTP 401" in errors[0] and "Bad credentials" in errors[0]
    assert "refused the token (HTTP 401)" in errors[1]
    assert "statuses.token_block" in errors[1]


# --- the PR pipeline end to end ------------------------------------------------


@pytest.fixture(scope="module")
def github(prefect_server: str) -> Iterator[ApiReceiver]:
    """One API for the module, so cicd.yaml (which names its port) and with it
    the jobs' cache keys stay the same across the runs."""
    from prefect.blocks.system import Secret

    Secret(value=TOKEN).save("status-token", overwrite=True)
    with github_api(TOKEN) as api:
        yield api


@pytest.fixture(scope="module")
def repo(github: ApiReceiver, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample with quality (ruff) and unit tests only, and statuses: a green
    branch, a red one, and a docs-only change on top of the green one."""
    from cicd.sample import create_sample_repo

    repo = create_sample_repo(tmp_path_factory.mktemp("statuses") / "agentkit")
    with commit_on_branch(repo, "status-green", "ci: statuses"):
        config = yaml.safe_load((repo / "cicd.yaml").read_text())
        config = {
            "version": 1,
            "environment": config["environment"],
            "quality": {"ruff": {"paths": ["src", "tests"]}},
            "tests": {"unit": {"paths": ["tests/unit"]}},
            "ignore_paths": ["docs/**", "*.md"],
            "statuses": {
                "provider": "github",
                "repository": "acme/agentkit",
                "api_url": github.url,
                "token_block": "status-token",
            },
        }
        (repo / "cicd.yaml").write_text(yaml.safe_dump(config))
    with commit_on_branch(repo, "status-red", "test: capitals", base="status-green"):
        (repo / "tests" / "unit" / "test_capitals.py").write_text(FAILING_TEST)
    with commit_on_branch(repo, "status-docs", "docs: more", base="status-green"):
        (repo / "docs" / "usage.md").write_text("More examples soon.\n")
    return repo


def flow_run(repo: Path, ref: str, **params: Any) -> Any:
    from cicd.results import PipelineFailed
    from flows.pr_validation import pr_validation

    try:
        return pr_validation(repo=str(repo), ref=ref, **params)
    except PipelineFailed as failed:
        return failed.report.to_json()


def run_statuses(api: ApiReceiver, since: int) -> list[tuple[str, str, str]]:
    return [
        (r["json"]["context"], r["json"]["state"], r["json"]["description"])
        for r in api.requests[since:]
    ]


@pytest.mark.slow
def test_green_commit_is_pending_then_success_per_job(repo: Path, github: ApiReceiver) -> None:
    since = len(github.requests)
    outcome = flow_run(repo, "status-green")

    assert outcome["state"] == "passed"
    seen = run_statuses(github, since)
    assert github.problems == []
    pairs = [(c, s) for c, s, _ in seen]
    assert pairs[:3] == [
        ("cicd/pr-validation", "pending"),
        ("cicd/pr-validation/quality", "pending"),
        ("cicd/pr-validation/unit", "pending"),
    ]
    # Each job's end once, as it ends (either may end first), then the run's.
    assert sorted(pairs[3:5]) == [
        ("cicd/pr-validation/quality", "success"),
        ("cicd/pr-validation/unit", "success"),
    ]
    assert pairs[5:] == [("cicd/pr-validation", "success")]
    assert all(r["path"].endswith(f"/statuses/{outcome['commit']}") for r in github.requests)
    # Each links to the flow run's page in the Prefect UI.
    urls = {r["json"]["target_url"] for r in github.requests[since:]}
    assert len(urls) == 1 and "/flow-runs/flow-run/" in urls.pop()


@pytest.mark.slow
def test_red_commit_fails_only_the_failing_job(repo: Path, github: ApiReceiver) -> None:
    since = len(github.requests)
    outcome = flow_run(repo, "status-red")

    assert outcome["state"] == "failed"
    final = {c: (s, d) for c, s, d in run_statuses(github, since) if s != "pending"}
    assert github.problems == []
    assert final["cicd/pr-validation/quality"][0] == "success"
    assert final["cicd/pr-validation/unit"][0] == "failure"
    assert final["cicd/pr-validation"] == ("failure", "unit failed")


@pytest.mark.slow
def test_docs_only_change_reports_its_skipped_jobs_as_success(
    repo: Path, github: ApiReceiver
) -> None:
    flow_run(repo, "status-green")  # its passes are what the skip relies on
    since = len(github.requests)
    outcome = flow_run(repo, "status-docs", base="status-green")

    assert {job["state"] for job in outcome["jobs"]} == {"skipped"}
    final = {c: (s, d) for c, s, d in run_statuses(github, since) if s != "pending"}
    assert github.problems == []
    for job in ("quality", "unit"):
        state, description = final[f"cicd/pr-validation/{job}"]
        assert state == "success"
        assert description.startswith("skipped: only paths no job depends on changed (docs/")
    assert final["cicd/pr-validation"][0] == "success"
    assert "pending" not in {s for c, s, _ in run_statuses(github, since) if c.endswith("/unit")}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ref", "exit_code", "state"), [("status-green", 0, "passed"), ("status-red", 1, "failed")]
)
def test_an_expired_token_is_a_clear_error_and_changes_no_verdict(
    repo: Path, github: ApiReceiver, ref: str, exit_code: int, state: str
) -> None:
    import subprocess

    github.token = "ghp_the_new_one_nobody_configured"  # the stored token has expired
    try:
        result = subprocess.run(
            [
                str(BIN / "cicd"),
                "run",
                "pr-validation",
                "--repo",
                str(repo),
                "--ref",
                ref,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        github.token = TOKEN

    assert result.returncode == exit_code, result.stderr[-3000:]
    assert json.loads(result.stdout)["state"] == state
    host = github.url.removeprefix("http://").removesuffix("/api/v3")
    assert f"GitHub at {host} answered HTTP 401" in result.stderr
    assert "Bad credentials" in result.stderr
    # Neither the old token nor anything of it in the output, the run's files
    # or the logs the Prefect server keeps.
    assert TOKEN not in result.stdout + result.stderr
    runs = Path(os.environ["CICD_HOME"]) / "runs"
    leaked = [p for p in runs.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert not [line for line in server_logs() if TOKEN in line]


def server_logs() -> list[str]:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read() -> list[str]:
        async with get_client() as client:
            return [log.message for log in await client.read_logs(limit=200)]

    return asyncio.run(read())


@pytest.mark.slow
def test_a_fork_posts_no_status(repo: Path, github: ApiReceiver) -> None:
    since = len(github.requests)
    outcome = flow_run(repo, "status-green", untrusted=True)

    assert outcome["state"] == "passed"
    assert github.requests[since:] == []


class BuggyHost:
    """A plugin with a bug: whatever it raises, the run's verdict stays the jobs'."""

    name = "buggy"
    host = "buggy.example"

    def post(self, commit: str, status: CommitStatus) -> None:
        raise RuntimeError("a bug in a plugin")

    def close(self) -> None:
        pass


def test_a_plugin_bug_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.statuses")
    run = CommitStatuses(BuggyHost(), SHA, "pr-validation", logger=lambda: logger)
    with caplog.at_level(logging.ERROR, logger="test.statuses"):
        run.pending(["unit"])
        run.final(report(JobResult("unit", JobState.PASSED, 1.0)))
    assert len(caplog.records) == 4  # run and unit pending, unit and run final
    assert "buggy at buggy.example" in caplog.records[0].getMessage()
    assert "RuntimeError: a bug in a plugin" in caplog.records[0].getMessage()


def test_a_missing_token_block_posts_nothing_and_says_which(
    prefect_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    from cicd.git import Checkout
    from tasks.commit_statuses import open_statuses

    config = StatusesConfig(provider="github", token_block="no-such-block", api_url="http://x")
    checkout = Checkout("https://github.com/acme/agentkit", "main", SHA, Path("."), Path("."))
    with caplog.at_level(logging.ERROR, logger="cicd.statuses"):
        run = open_statuses("pr-validation", checkout, config)
    assert run.host is None
    assert "Prefect Secret block 'no-such-block' not found" in caplog.text


@pytest.mark.slow
def test_a_self_managed_gitlab_gets_running_then_failed(repo: Path) -> None:
    with gitlab_api(TOKEN) as gitlab:
        with commit_on_branch(repo, "status-gitlab", "ci: gitlab", base="status-red"):
            config = yaml.safe_load((repo / "cicd.yaml").read_text())
            config["statuses"] = {
                "provider": "gitlab",
                "repository": "group/agentkit",
                "api_url": gitlab.url,
                "token_block": "status-token",
                "context_prefix": "ci",
            }
            (repo / "cicd.yaml").write_text(yaml.safe_dump(config))
        outcome = flow_run(repo, "status-gitlab")

    assert outcome["state"] == "failed"
    assert gitlab.problems == []
    seen = [(r["json"]["name"], r["json"]["state"]) for r in gitlab.requests]
    assert seen[:3] == [
        ("ci/pr-validation", "running"),
        ("ci/pr-validation/quality", "running"),
        ("ci/pr-validation/unit", "running"),
    ]
    assert sorted(seen[3:5]) == [
        ("ci/pr-validation/quality", "success"),
        ("ci/pr-validation/unit", "failed"),
    ]
    assert seen[5:] == [("ci/pr-validation", "failed")]
    assert {r["path"] for r in gitlab.requests} == {
        f"/api/v4/projects/group%2Fagentkit/statuses/{outcome['commit']}"
    }
