"""Nightly: a Python matrix with a missing interpreter and a failing test,
reported to a local webhook receiver. Weekly cost report from seeded records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from cicd.results import PipelineFailed
from tasks.llm.calls import CallRecord
from tasks.llm.costs import CostStore
from tests.receiver import running_receiver
from tests.sample_repos import commit_on_branch

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_nightly_reports_missing_interpreter_and_notifies_failure(
    sample_repos: dict[str, Path],
) -> None:
    from flows.nightly import nightly

    repo = sample_repos["agentkit"]
    with running_receiver() as receiver:
        with commit_on_branch(repo, "nightly-red", "ci: nightly matrix", base="failing-test"):
            config = yaml.safe_load((repo / "cicd.yaml").read_text())
            config["pipelines"]["nightly"] = {
                "suites": ["unit"],
                "llm_mode": "mock",
                # 3.14 is not installed on this worker: reported as skipped, never dropped.
                "python": ["3.11", "3.14"],
            }
            config["notify"] = {"webhook_url": receiver.url}
            (repo / "cicd.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        with pytest.raises(PipelineFailed) as failed:
            nightly(repo=str(repo), ref="nightly-red")

    jobs = {job.name: job for job in failed.value.report.jobs}
    assert jobs["unit"].state.value == "failed"
    assert jobs["matrix-py3.14"].state.value == "skipped"
    assert jobs["matrix-py3.14"].reason == "Python 3.14 is not installed on this worker"
    assert "matrix-py3.11" not in jobs  # the default version ran as the full suite
    assert "coverage_html" in jobs["unit"].details
    assert Path(jobs["unit"].details["coverage_html"]).is_file()
    assert len(receiver.received) == 1
    text = receiver.received[0]["json"]["text"]
    assert "Nightly tests failed" in text
    assert "test_agent_knows_capitals" in text and "agent forgot Paris" in text
    assert failed.value.report.extra["notified"] == ["Nightly tests failed: webhook"]


def _call(when: datetime, model: str, cost: float, would: bool = False) -> CallRecord:
    return CallRecord(
        timestamp=when,
        mode="mock" if would else "live",
        model=model,
        prompt_tokens=100,
        completion_tokens=50,
        latency_ms=12.0,
        cost_usd=cost,
        would_cost=would,
        status="ok",
        http_status=200,
    )


def test_weekly_cost_report_from_seeded_records(tmp_path: Path) -> None:
    from flows.cost_report import cost_report

    url = f"sqlite:///{tmp_path / 'costs.db'}"
    end = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    store = CostStore(url)
    seeds = [
        # (run, flow, start offset days before end, calls)
        ("n1", "nightly", 6, [("gpt-4o-mini", 1.25), ("gpt-4o", 2.50)]),
        ("n2", "nightly", 1, [("gpt-4o", 3.00)]),
        ("i1", "integration", 2, [("gpt-4o-mini", 0.25), ("gpt-4o-mini", 0.40, True)]),
        ("old", "nightly", 9, [("gpt-4o", 1.00)]),  # the week before
    ]
    for run_id, flow, days, calls in seeds:
        when = end - timedelta(days=days)
        store.record_run(run_id, flow=flow, repo="r", ref="main", started_at=when)
        store.record_calls(run_id, [_call(when, *c) for c in calls])  # type: ignore[arg-type]
    store.close()

    with running_receiver() as receiver:
        result = cost_report(end=end, store_url=url, week_alert_usd=5.0, webhook_url=receiver.url)

    assert result["spent_usd"] == pytest.approx(1.25 + 2.50 + 3.00 + 0.25)
    assert result["calls"] == 5 and result["runs"] == 3
    assert any("5.00" in alert for alert in result["alerts"])
    markdown = result["markdown"]
    assert "$7.00" in markdown  # the week's spend
    assert "nightly" in markdown and "integration" in markdown
    assert "$1.00" in markdown  # the week before, for the trend
    assert result["notified"] == ["webhook"]
    assert "LLM spend" in receiver.received[0]["json"]["text"]
