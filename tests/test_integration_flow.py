"""The integration flow on the sample target: the LLM gateway in each mode,
cost accounting and budgets, and the performance-baseline stage.

The LLM upstream is a local fake (tasks/llm/fake_upstream.py), a real HTTP
server; the target's own tests call the gateway over HTTP from their pytest
process, exactly as in a real pipeline.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cicd.results import PipelineFailed
from cicd.sample import git
from tasks.llm.costs import CostStore
from tasks.llm.fake_upstream import FakeUpstream, fake_reply, fake_usage
from tasks.llm.prices import load_prices
from tests.sample_repos import commit_on_branch

pytestmark = pytest.mark.usefixtures("prefect_server")

SECRET_BLOCK = "test-llm-upstream-key"
SECRET_VALUE = "sk-test-DO-NOT-LEAK-4711"


@pytest.fixture(scope="module")
def upstream_key(prefect_server: str) -> str:
    from prefect.blocks.system import Secret

    Secret(value=SECRET_VALUE).save(SECRET_BLOCK, overwrite=True)
    return SECRET_BLOCK


def llm_branch(repo: Path, branch: str, upstream_url: str, **changes: Any) -> str:
    """A branch of main whose integration suite is only the LLM tests (no Neo4j)."""
    with commit_on_branch(repo, branch, f"ci: {branch}"):
        config = yaml.safe_load((repo / "cicd.yaml").read_text())
        config["llm"].update(upstream=upstream_url, api_key_secret=SECRET_BLOCK)
        config["tests"]["integration"] = {
            "paths": ["tests/integration/test_agent_llm.py"],
            "llm": True,
        }
        config.pop("benchmarks")
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        (repo / "cicd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return git(repo, "rev-parse", branch)


def run_integration(repo: Path, ref: str, mode: str | None) -> dict[str, Any]:
    from flows.integration import integration

    return integration(repo=str(repo), ref=ref, llm_mode=mode)  # type: ignore[arg-type]


def stored_calls(report: dict[str, Any]) -> list[Any]:
    store = CostStore()
    try:
        return store.calls_for(report["llm"]["run_id"])
    finally:
        store.close()


def test_mock_mode_answers_from_fixtures_and_prices_what_it_would_cost(
    sample_repos: dict[str, Path], upstream: FakeUpstream, upstream_key: str
) -> None:
    repo = sample_repos["agentkit"]
    llm_branch(repo, "llm-mock", upstream.url)

    report = run_integration(repo, "llm-mock", "mock")

    assert report["state"] == "passed"
    jobs = {job["name"]: job for job in report["jobs"]}
    assert jobs["integration"]["passed"] == 2
    assert upstream.requests == []  # mock never forwards
    calls = stored_calls(report)
    assert [call.mode for call in calls] == ["mock", "mock"]
    assert all(call.would_cost and call.tokens_estimated for call in calls)
    prices = load_prices()
    for call in calls:
        assert call.prompt_tokens > 0 and call.completion_tokens > 0
        assert call.cost_usd == pytest.approx(
            prices.cost(call.model, call.prompt_tokens, call.completion_tokens)
        )
    assert report["llm"]["spent_usd"] == 0
    assert report["llm"]["would_cost_usd"] == pytest.approx(
        sum(c.cost_usd for c in calls), abs=1e-6
    )


def test_record_then_replay_with_the_upstream_stopped(
    sample_repos: dict[str, Path], upstream: FakeUpstream, upstream_key: str
) -> None:
    repo = sample_repos["agentkit"]
    llm_branch(repo, "llm-record", upstream.url)

    recorded = run_integration(repo, "llm-record", "record")

    assert recorded["state"] == "passed"
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert len(posts) == 2
    # The key reached the upstream and nothing else.
    assert all(r.headers.get("Authorization") == f"Bearer {SECRET_VALUE}" for r in posts)
    calls = stored_calls(recorded)
    prices = load_prices()
    expected_tokens = sorted(fake_usage(r.body or {}, fake_reply(r.body or {})) for r in posts)
    assert sorted((c.prompt_tokens, c.completion_tokens) for c in calls) == expected_tokens
    for call in calls:
        assert not call.would_cost and call.mode == "record"
        assert call.cost_usd == pytest.approx(
            prices.cost(call.model, call.prompt_tokens, call.completion_tokens)
        )
    assert recorded["llm"]["spent_usd"] == pytest.approx(sum(c.cost_usd for c in calls), abs=1e-6)
    recordings = Path(recorded["llm"]["recordings"])
    saved = list(recordings.rglob("*.json"))
    assert len(saved) == 2
    assert not any(SECRET_VALUE in path.read_text() for path in saved)

    # Commit the recordings to the target, stop the upstream, replay.
    with commit_on_branch(repo, "llm-replay", "test: record LLM exchanges", base="llm-record"):
        shutil.copytree(recordings, repo / ".cicd" / "llm-recordings")
    upstream.stop()

    replayed = run_integration(repo, "llm-replay", "replay")

    assert replayed["state"] == "passed"
    replay_calls = stored_calls(replayed)
    assert [c.mode for c in replay_calls] == ["replay", "replay"]
    assert all(c.status == "ok" and c.would_cost for c in replay_calls)
    assert sorted((c.prompt_tokens, c.completion_tokens) for c in replay_calls) == expected_tokens
    assert replayed["llm"]["spent_usd"] == 0
    assert replayed["llm"]["would_cost_usd"] == pytest.approx(
        recorded["llm"]["spent_usd"], abs=1e-6
    )


def test_strict_replay_without_recordings_fails_the_tests(
    sample_repos: dict[str, Path], upstream: FakeUpstream, upstream_key: str
) -> None:
    repo = sample_repos["agentkit"]
    llm_branch(repo, "llm-replay-miss", upstream.url)

    with pytest.raises(PipelineFailed) as failed:
        run_integration(repo, "llm-replay-miss", "replay")

    jobs = {job.name: job for job in failed.value.report.jobs}
    assert jobs["integration"].state.value == "failed"
    assert jobs["integration"].tests is not None and jobs["integration"].tests.failed == 2
    assert upstream.requests == []


def test_live_mode_forwards_and_spends(
    sample_repos: dict[str, Path], upstream: FakeUpstream, upstream_key: str
) -> None:
    repo = sample_repos["agentkit"]
    llm_branch(repo, "llm-live", upstream.url)

    report = run_integration(repo, "llm-live", "live")

    assert report["state"] == "passed"
    assert len([r for r in upstream.requests if r.method == "POST"]) == 2
    calls = stored_calls(report)
    assert [c.mode for c in calls] == ["live", "live"]
    assert report["llm"]["spent_usd"] > 0
    assert report["llm"]["recordings"] is None


def test_budget_overrun_fails_the_flow_with_the_spend_shown(
    sample_repos: dict[str, Path], upstream: FakeUpstream, upstream_key: str
) -> None:
    repo = sample_repos["agentkit"]
    config = yaml.safe_load((repo / "cicd.yaml").read_text())
    pipelines = config["pipelines"]
    pipelines["integration"] = {"suites": ["integration"], "budget_usd": 0.000001}
    llm_branch(repo, "llm-budget", upstream.url, pipelines=pipelines)

    with pytest.raises(PipelineFailed) as failed:
        run_integration(repo, "llm-budget", "live")

    jobs = {job.name: job for job in failed.value.report.jobs}
    budget = jobs["llm-budget"]
    assert budget.state.value == "failed"
    assert "exceeds the budget of $0.000001 for integration" in budget.reason
    assert budget.reason.startswith("LLM spend $0.0000")
