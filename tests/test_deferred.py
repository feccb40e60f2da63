"""Artifacts published off the path to the verdict (tasks/deferred.py, flows/gate.py):
the verdict first and alone, the publications awaited, at the latest at exit."""

from __future__ import annotations

import contextvars
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from cicd.results import JobResult, JobState, PipelineFailed, PipelineReport
from tasks import deferred, progress

ROOT = Path(__file__).resolve().parent.parent
_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="none")


def report(*states: JobState) -> PipelineReport:
    jobs = tuple(JobResult(f"job{i}", state, 1.0, reason="why") for i, state in enumerate(states))
    return PipelineReport("pr-validation", "repo", "main", "a" * 40, jobs)


def test_a_deferred_publication_runs_in_the_callers_context_and_is_awaited() -> None:
    got: list[str] = []
    _seen.set("the flow run")
    deferred.defer("artifact", lambda: got.append(_seen.get()))
    assert deferred.wait(10) == []
    assert got == ["the flow run"]


def test_wait_names_what_is_still_running_after_its_timeout() -> None:
    release = threading.Event()
    deferred.defer("slow artifact", release.wait)
    try:
        assert deferred.wait(0.05) == ["slow artifact"]
    finally:
        release.set()
    assert deferred.wait(10) == []


def test_a_failed_publication_is_logged_and_raises_nowhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refused() -> None:
        raise ConnectionError("the API is gone")

    deferred.defer("unit: artifact publication", refused)
    assert deferred.wait(10) == []
    assert "unit: artifact publication failed: the API is gone" in caplog.text


@pytest.mark.parametrize("failing", [False, True])
def test_the_gate_gives_the_verdict_before_and_without_the_artifacts(
    monkeypatch: pytest.MonkeyPatch, failing: bool
) -> None:
    from flows import gate

    release = threading.Event()
    heard: list[progress.ProgressEvent] = []

    def publish_fails_later(_report: PipelineReport) -> None:
        release.wait(10)
        raise ConnectionError("the API is gone")

    monkeypatch.setattr(gate, "publish_report", publish_fails_later)
    states = (JobState.PASSED, JobState.FAILED if failing else JobState.CACHED)
    with progress.listening(heard.append):
        # Returns while the publication is still blocked: nothing waits for it.
        outcome: Any = gate.finish(report(*states))
    assert deferred.pending() == ["pr-validation: summary publication"]
    release.set()
    assert deferred.wait(10) == []
    finished = [e for e in heard if isinstance(e, progress.RunFinished)]
    assert len(finished) == 1 and finished[0].passed is not failing
    if failing:
        assert outcome.is_failed() and isinstance(outcome.data, PipelineFailed)
    else:
        assert outcome["state"] == "passed"


def test_the_process_publishes_before_it_exits(tmp_path: Path) -> None:
    """A worker's flow-run process ends when its flow returns: what is still
    being published is awaited at exit, and the exit code is the process's."""
    done = tmp_path / "published"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from tasks import deferred

        def publish():
            time.sleep(0.5)
            open({str(done)!r}, "w").write("yes")

        deferred.defer("summary", publish)
        sys.exit(1)
        """
    )
    finished = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert finished.returncode == 1
    assert done.read_text() == "yes"


@pytest.mark.usefixtures("prefect_server")
def test_the_summary_is_published_after_the_flow_run_ended() -> None:
    """The run's own client is closed when its engine ends: the publication, which
    may outlive it, has a client of its own, and the artifact is the run's."""
    import asyncio
    import uuid

    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows import gate

    commit = uuid.uuid4().hex

    @flow(name="deferred-probe")
    def probe() -> Any:
        from prefect.runtime import flow_run

        done = PipelineReport(
            "deferred-probe", "repo", "main", commit, report(JobState.PASSED).jobs
        )
        return {"outcome": gate.finish(done), "run": str(flow_run.id)}

    returned = probe()
    assert deferred.wait() == []

    async def summary() -> tuple[str, str]:
        async with get_client() as client:
            artifacts = await client.read_latest_artifacts()  # type: ignore[call-arg]
            found = next(a for a in artifacts if a.key == "deferred-probe-summary")
            return str(found.data), str(found.flow_run_id)

    data, run_id = asyncio.run(summary())
    assert commit[:12] in data and run_id == returned["run"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_runs_workspace_is_removed_once_its_verdict_is_known(tmp_path: Path) -> None:
    """A normal end (also a failing verdict) hands the workspace to a thread; it is
    gone, and its claim released, once the deferred work ended."""
    from cicd import paths
    from flows.pr_validation import pr_validation
    from tests.test_cache_healing import probe_repo

    repo = probe_repo(tmp_path)
    passed = pr_validation(repo=str(repo), ref="main")
    with pytest.raises(PipelineFailed) as failed:
        pr_validation(repo=str(repo), ref="failing")
    assert deferred.wait() == []
    claims = [p.read_text() for p in (paths.home() / "owned").glob("*.json")]
    for commit in (passed["commit"], failed.value.report.commit):
        assert not list(paths.workspaces().glob(f"{commit[:12]}-*")), commit
        assert not [claim for claim in claims if commit[:12] in claim], claims
