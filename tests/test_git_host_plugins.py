"""The git host plugins against local APIs that check every request against
GitHub's published OpenAPI description (GitLab: its documented fields), and
the ``statuses:`` configuration. The pipelines' statuses end to end:
tests/test_git_host_statuses.py.
"""

from __future__ import annotations

import pytest

from cicd.config import StatusesConfig, parse_config
from cicd.errors import BadInput, ConfigError
from tasks.git_hosts.addresses import parse_remote
from tasks.git_hosts.all_git_hosts import target
from tasks.git_hosts.base import CommitStatus, GitHostError, StatusState
from tasks.git_hosts.github import GitHubHost
from tasks.git_hosts.gitlab import GitLabHost
from tests.conftest import free_port
from tests.git_host_receiver import github_api, gitlab_api

TOKEN = "ghp_pluginTOKEN_DO_NOT_LEAK_0042"
SHA = "0123456789abcdef0123456789abcdef01234567"
CREATE_STATUS = "repos/create-commit-status"

# --- the plugins -------------------------------------------------------------


def test_github_statuses_follow_the_openapi_description() -> None:
    with github_api(TOKEN) as api:
        host = GitHubHost(api.url, "acme/agentkit", TOKEN)
        for state in StatusState:
            host.post(SHA, CommitStatus("cicd/pr-validation/unit", state, "x" * 300, "http://ui/r"))

    assert api.problems == []
    assert [r["path"] for r in api.requests] == [f"/api/v3/repos/acme/agentkit/statuses/{SHA}"] * 4
    assert [body["state"] for body in api.bodies(CREATE_STATUS)] == [
        "pending",
        "success",
        "failure",
        "error",
    ]
    # GitHub refuses descriptions over 140 characters.
    assert all(len(body["description"]) == 140 for body in api.bodies(CREATE_STATUS))
    assert api.requests[0]["json"]["target_url"] == "http://ui/r"


def test_github_check_runs_are_created_then_completed() -> None:
    with github_api(TOKEN) as api:
        host = GitHubHost(api.url, "acme/agentkit", TOKEN, check_runs=True)
        host.post(SHA, CommitStatus("cicd/pr-validation/unit", StatusState.PENDING, "running"))
        host.post(SHA, CommitStatus("cicd/pr-validation/unit", StatusState.ERROR, "errored: x"))

    assert api.problems == []
    created, completed = api.requests
    assert created["operation"] == "checks/create" and created["json"]["status"] == "in_progress"
    assert created["json"]["head_sha"] == SHA
    assert completed["operation"] == "checks/update"
    assert completed["path"].endswith("/check-runs/1000")  # the id GitHub answered
    assert (completed["json"]["status"], completed["json"]["conclusion"]) == (
        "completed",
        "failure",
    )


def test_gitlab_statuses_follow_the_documented_fields() -> None:
    with gitlab_api(TOKEN) as api:
        host = GitLabHost(api.url, "group/sub/agentkit", TOKEN)
        for state in StatusState:
            host.post(SHA, CommitStatus("cicd/pr-validation", state, "d", "http://ui/r"))
        host.close()

    assert api.problems == []
    assert {r["path"] for r in api.requests} == {
        f"/api/v4/projects/group%2Fsub%2Fagentkit/statuses/{SHA}"
    }
    states = [r["json"]["state"] for r in api.requests]
    assert states == ["running", "success", "failed", "failed"]
    assert all(r["headers"]["private-token"] == TOKEN for r in api.requests)


def test_a_failed_post_names_the_host_and_the_status_code() -> None:
    status = CommitStatus("cicd/pr-validation", StatusState.SUCCESS, "ok")
    with github_api(TOKEN) as api:
        host = api.url.removeprefix("http://").removesuffix("/api/v3")
        with pytest.raises(GitHostError, match=rf"GitHub at {host} answered HTTP 401.*Bad cred"):
            GitHubHost(api.url, "acme/agentkit", "expired-token").post(SHA, status)
        api.fail_with = 503
        with pytest.raises(GitHostError, match="HTTP 503") as unavailable:
            GitHubHost(api.url, "acme/agentkit", TOKEN).post(SHA, status)
    assert unavailable.value.status_code == 503
    closed = f"http://127.0.0.1:{free_port()}/api/v4"
    with pytest.raises(GitHostError, match=r"GitLab at 127\.0\.0\.1:\d+ could not be reached"):
        GitLabHost(closed, "group/agentkit", TOKEN).post(SHA, status)


# --- configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses_yaml", "message"),
    [
        ("{provider: bitbucket, token_block: t}", "field 'statuses.provider'"),
        ("{provider: github}", "field 'statuses.token_block': Field required"),
        ("{provider: github, token_block: My_Token}", "field 'statuses.token_block'"),
        ("{provider: gitlab, token_block: t, check_runs: true}", "field 'statuses.check_runs'"),
        ("{provider: github, token_block: t, repository: 'a/../b c'}", "'statuses.repository'"),
        ("{provider: github, token_block: t, api_url: 'ftp://x'}", "field 'statuses.api_url'"),
        ("{provider: github, token_block: t, context_prefix: 'a b'}", "'statuses.context_prefix'"),
        ("{provider: github, token_block: t, colour: red}", "'statuses.colour': unknown field"),
    ],
)
def test_bad_statuses_config_names_the_field(statuses_yaml: str, message: str) -> None:
    text = f"version: 1\ntests: {{unit: {{}}}}\nstatuses: {statuses_yaml}\n"
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_owner_and_api_are_derived_from_the_address() -> None:
    github = StatusesConfig(provider="github", token_block="t")
    assert target(github, "https://github.com/acme/agentkit.git") == (
        "https://api.github.com",
        "acme/agentkit",
    )
    assert target(github, "git@ghe.example.com:acme/agentkit.git") == (
        "https://ghe.example.com/api/v3",
        "acme/agentkit",
    )
    gitlab = StatusesConfig(provider="gitlab", token_block="t")
    assert target(gitlab, "ssh://git@gitlab.example.com:2222/group/sub/agentkit.git") == (
        "https://gitlab.example.com/api/v4",
        "group/sub/agentkit",
    )
    assert parse_remote("/srv/repos/agentkit") is None
    with pytest.raises(BadInput, match=r"statuses\.repository"):
        target(github, "/srv/repos/agentkit")
    with pytest.raises(BadInput, match="GitHub expects 'owner/name'"):
        target(github, "https://github.com/group/sub/agentkit")
