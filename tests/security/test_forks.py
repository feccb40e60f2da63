"""A pull request from a fork gets no secret: the LLM suites of an untrusted
change talk to the mock, whatever cicd.yaml asks, and the upstream key is never
loaded; the same change from a trusted branch goes live with the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasks.llm.fake_upstream import FakeUpstream
from tests.test_integration_flow import SECRET_VALUE, llm_branch, upstream_key  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_server")


def pr_branch_going_live(repo: Path, upstream: FakeUpstream) -> str:
    return llm_branch(
        repo,
        "fork-live",
        upstream.url,
        pipelines={"pr-validation": {"suites": ["integration"], "llm_mode": "live"}},
    )


def jobs(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["name"]: job for job in report["jobs"]}


def test_an_untrusted_change_gets_the_mock_and_no_key(
    sample_repos: dict[str, Path], upstream: FakeUpstream, upstream_key: str  # noqa: F811
) -> None:
    from flows.pr_validation import pr_validation

    ref = pr_branch_going_live(sample_repos["agentkit"], upstream)

    report = pr_validation(repo=str(sample_repos["agentkit"]), ref=ref, untrusted=True)

    assert report["state"] == "passed"
    assert jobs(report)["integration"]["passed"] == 2
    assert jobs(report)["llm-budget"]["details"]["mode"] == "mock"
    assert upstream.requests == []


def test_the_same_change_when_trusted_goes_live_with_the_key(
    sample_repos: dict[str, Path], upstream: FakeUpstream, upstream_key: str  # noqa: F811
) -> None:
    from flows.pr_validation import pr_validation

    ref = pr_branch_going_live(sample_repos["agentkit"], upstream)

    report = pr_validation(repo=str(sample_repos["agentkit"]), ref=ref)

    assert report["state"] == "passed"
    assert jobs(report)["llm-budget"]["details"]["mode"] == "live"
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert posts and all(r.headers.get("Authorization") == f"Bearer {SECRET_VALUE}" for r in posts)
    # The key reached the upstream, and no output of the run.
    assert SECRET_VALUE not in str(report)
