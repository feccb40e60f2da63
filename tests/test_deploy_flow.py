"""The deploy pipeline as Prefect runs it: gates, approval in the UI, and a
deploy SIGKILLed in the middle of its canary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cicd.results import PipelineFailed
from tasks.deploy import environment as deploys
from tasks.deploy.state import EnvironmentState, history, passed
from tasks.services.host import process_start_time
from tests.deploy_support import LoadGenerator, get
from tests.receiver import running_receiver
from tests.sample_repos import commit_on_branch

pytestmark = pytest.mark.slow
PROJECT = "agentkit-sample"
CICD = Path(sys.executable).parent / "cicd"


def fast(environment: dict[str, object], **changes: object) -> dict[str, object]:
    health = {"path": "/healthz", "interval": 0.1, "count": 5, "timeout": 10}
    return {**environment, "replicas": 1, "health": health, **changes}


@pytest.fixture(scope="session")
def deploy_repo(sample_repos: dict[str, Path]) -> Path:
    """Branches whose cicd.yaml asks for an approval, or a long canary step."""
    repo = sample_repos["agentkit"]
    config = yaml.safe_load((repo / "cicd.yaml").read_text())
    staging, production = (config["deploy"]["environments"][e] for e in ("staging", "production"))
    with commit_on_branch(repo, "approvals", "ci: production needs an approval"):
        config["deploy"]["environments"] = {
            "staging": fast(staging),
            "production": fast(production, approval=True, branches=["main", "approvals"]),
        }
        (repo / "cicd.yaml").write_text(yaml.safe_dump(config))
    slow_canary = {"kind": "canary", "steps": [10, 100], "step_seconds": 60}
    with commit_on_branch(repo, "kill-a", "ci: a long canary step"):
        config["deploy"]["environments"] = {"staging": fast(staging, strategy=slow_canary)}
        (repo / "cicd.yaml").write_text(yaml.safe_dump(config))
    with commit_on_branch(repo, "kill-b", "feat: the release that is killed", base="kill-a"):
        flags = repo / "src" / "agentkit_service" / "__init__.py"
        flags.write_text(flags.read_text() + "\nRELEASE_NOTE = 'killed mid-canary'\n")
    immediate = {"kind": "immediate"}
    monitor = {"count": 5, "interval": 1.0}
    with commit_on_branch(repo, "degrade-a", "ci: monitored immediate deploys"):
        config["deploy"]["environments"] = {
            "staging": fast(staging, strategy=immediate, monitor=monitor)
        }
        (repo / "cicd.yaml").write_text(yaml.safe_dump(config))
    with commit_on_branch(repo, "degrade-b", "feat: unhealthy after 2 s", base="degrade-a"):
        flags = repo / "src" / "agentkit_service" / "__init__.py"
        flags.write_text(
            flags.read_text().replace("HEALTHY_SECONDS = 0.0", "HEALTHY_SECONDS = 2.0")
        )
    return repo


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: str) -> Iterator[Path]:
    monkeypatch.setenv("CICD_HOME", str(tmp_path / "home"))
    try:
        yield tmp_path / "home"
    finally:
        for env in ("staging", "production"):
            deploys.stop_environment(PROJECT, env)


def run_flow(repo: Path, ref: str, env: str | None = None) -> dict[str, object]:
    from flows.deploy import deploy

    try:
        return deploy(repo=str(repo), ref=ref, env=env)  # type: ignore[no-any-return]
    except PipelineFailed as failed:
        return failed.report.to_json()


def test_production_refused_from_a_branch_that_is_not_allowed(
    sample_repos: dict[str, Path], home: Path
) -> None:
    repo = sample_repos["agentkit"]
    with running_receiver() as receiver:
        with commit_on_branch(repo, "notify-partial", "ci: notify", base="release-good"):
            config = yaml.safe_load((repo / "cicd.yaml").read_text())
            config["notify"] = {"webhook_url": receiver.url}
            (repo / "cicd.yaml").write_text(yaml.safe_dump(config))
        report = run_flow(repo, "notify-partial")
    # seed 000: the notification carries the outcome (success / partial / failed)
    (message,) = receiver.received
    assert "partial" in message["json"]["text"] and "refused" in message["json"]["text"]
    jobs = {j["name"]: j for j in report["jobs"]}  # type: ignore[attr-defined]
    assert report["state"] == "failed" and report["deploy"]["outcome"] == "partial"  # type: ignore[index]
    assert jobs["deploy-staging"]["state"] == "passed"
    assert jobs["deploy-production"]["reason"].startswith(
        "refused: environment 'production' deploys only from main; got ref 'notify-partial'"
    )
    assert EnvironmentState.load(PROJECT, "production") is None  # nothing started there
    assert history(PROJECT, "production")[-1]["outcome"] == "refused"


def test_production_only_for_the_artifact_that_passed_staging(
    sample_repos: dict[str, Path], home: Path
) -> None:
    repo = sample_repos["agentkit"]
    refused = run_flow(repo, "main", env="production")
    assert refused["deploy"]["outcome"] == "failed"  # type: ignore[index]
    assert "has not been deployed there successfully" in refused["jobs"][0]["reason"]  # type: ignore[index]
    staged = run_flow(repo, "main", env="staging")
    assert staged["state"] == "passed"
    promoted = run_flow(repo, "main", env="production")
    assert promoted["state"] == "passed" and promoted["deploy"]["outcome"] == "success"  # type: ignore[index]
    # one artifact, promoted: the very file staging ran
    assert staged["deploy"]["release"] == promoted["deploy"]["release"]  # type: ignore[index]
    live = EnvironmentState.load(PROJECT, "production")
    assert live is not None and live.live is not None
    assert get(f"http://127.0.0.1:{live.proxy_port}/") == (200, live.live.release.id)


def _paused_run(deadline: float, ref: str) -> str:
    """The paused deploy run of ``ref``: other tests of the session may have left
    paused runs of their own on the same server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    # Asked of the server: in a full test session it holds hundreds of runs, and
    # an unfiltered first page need not include this one.
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    )
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(flow_run_filter=paused, limit=200):
                if (run.parameters or {}).get("ref") == ref:
                    return str(run.id)
        time.sleep(0.5)
    raise AssertionError(f"no paused flow run of {ref}")


def test_approval_pause_resumes_with_the_approver_recorded(deploy_repo: Path, home: Path) -> None:
    from prefect.flow_runs import resume_flow_run

    proc = subprocess.Popen(
        [str(CICD), "run", "deploy", "--repo", str(deploy_repo), "--ref", "approvals", "--json"],
        # The report is stdout's last line; Prefect's own log lines (its events
        # worker's "Still processing items" at exit) go to stderr, kept apart.
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        run_id = _paused_run(time.monotonic() + 180, "approvals")
        assert EnvironmentState.load(PROJECT, "production") is None  # waiting, not deploying
        resume_flow_run(run_id, run_input={"approver": "alice", "comment": "ship it"})
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert out.strip(), err.decode()[-2000:]
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, report
    production = {j["name"]: j for j in report["jobs"]}["deploy-production"]
    assert production["details"]["approver"] == "alice"
    entry = history(PROJECT, "production")[-1]
    assert (entry["approver"], entry["comment"], entry["outcome"]) == (
        "alice",
        "ship it",
        "success",
    )


def test_deploy_killed_mid_canary_is_rolled_back_by_the_next_run(
    deploy_repo: Path, home: Path
) -> None:
    assert run_flow(deploy_repo, "kill-a", env="staging")["state"] == "passed"
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None
    stable = state.live.release.id
    with LoadGenerator(f"http://127.0.0.1:{state.proxy_port}/") as load:
        proc = subprocess.Popen(
            [
                str(CICD),
                "run",
                "deploy",
                "--repo",
                str(deploy_repo),
                "--ref",
                "kill-b",
                "--env",
                "staging",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while True:
            state = EnvironmentState.load(PROJECT, "staging")
            assert state is not None
            if state.phase.startswith("routed: route 10%"):
                break
            assert time.monotonic() < deadline and proc.poll() is None, state.phase
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the canary: 10 % on kill-b
        proc.wait()
        killed = EnvironmentState.load(PROJECT, "staging")
        assert killed is not None and killed.pending is not None
        candidate = [r.pid for r in killed.pending.replicas]
        assert all(process_start_time(pid) is not None for pid in candidate)
        # the next run finds the interrupted deploy and rolls it back first
        again = run_flow(deploy_repo, "kill-a", env="staging")
        after = time.monotonic()
        time.sleep(1.0)
    assert again["state"] == "passed"
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None and state.live.release.id == stable
    assert state.pending is None and state.phase == "idle"
    assert all(process_start_time(pid) is None for pid in candidate)  # gone (or a zombie)
    conf = (home / "deploy" / PROJECT / "staging" / "nginx" / "nginx.conf").read_text()
    assert [f"127.0.0.1:{p}" for p in state.live.ports] == [
        line.split()[1] for line in conf.splitlines() if line.strip().startswith("server 127")
    ]
    assert set(load.releases(since=after)) == {stable}
    assert load.failed == []
    reasons = [e["reason"] for e in history(PROJECT, "staging") if e["action"] == "rollback"]
    assert reasons and "interrupted deploy" in reasons[-1]


def test_monitoring_failure_after_the_switch_rolls_back_through_the_transaction(
    deploy_repo: Path, home: Path
) -> None:
    assert run_flow(deploy_repo, "degrade-a", env="staging")["state"] == "passed"
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None
    stable = state.live.release
    report = run_flow(deploy_repo, "degrade-b", env="staging")
    (job,) = report["jobs"]  # type: ignore[misc]
    assert job["state"] == "failed"
    assert job["reason"].startswith("monitoring through the proxy after the switch: check")
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None and state.live.release == stable
    assert get(f"http://127.0.0.1:{state.proxy_port}/") == (200, stable.id)
    rollback = history(PROJECT, "staging")[-1]
    assert rollback["action"] == "rollback" and rollback["reason"] == (
        "monitoring after the switch failed"
    )
    degraded = rollback["from_sha256"]
    assert not passed(PROJECT, "staging", degraded)  # production would refuse it
