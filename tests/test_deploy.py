"""Deploys for real: the sample's HTTP service in virtualenvs of its wheel,
replicas as processes, a real nginx in front, a load generator through it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cicd.config_deploy import Analysis, Hooks
from tasks.deploy import artifacts
from tasks.deploy import environment as deploys
from tasks.deploy.analysis import StepAnalysis
from tasks.deploy.base import Release
from tasks.deploy.proxy import nginx_binary
from tasks.deploy.state import EnvironmentState, history
from tasks.services.host import process_start_time
from tests.deploy_support import Built, LoadGenerator, build_releases, get, settings

pytestmark = pytest.mark.slow
PROJECT = "agentkit-sample"


@pytest.fixture(scope="session")
def built(
    sample_repos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Built]:
    nginx_binary()  # fails early with the way to install it
    return build_releases(sample_repos["agentkit"], tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A CICD_HOME of the test's own; every environment deployed there stopped after."""
    monkeypatch.setenv("CICD_HOME", str(tmp_path / "home"))
    try:
        yield tmp_path / "home"
    finally:
        root = tmp_path / "home" / "deploy" / PROJECT
        for env_dir in root.iterdir() if root.is_dir() else []:
            if (env_dir / "state.json").is_file():
                deploys.stop_environment(PROJECT, env_dir.name)


def release_of(built: dict[str, Built], branch: str) -> Release:
    b = built[branch]
    return artifacts.keep(b.wheel, b.commit, b.ref)


def proxy_url(env: str) -> str:
    state = EnvironmentState.load(PROJECT, env)
    assert state is not None
    return f"http://127.0.0.1:{state.proxy_port}/"


def live_processes(state: EnvironmentState) -> list[int]:
    return [r.pid for s in (state.live, state.standby, state.pending) if s for r in s.replicas]


def test_good_release_goes_staging_then_production_by_canary_without_a_failed_request(
    built: dict[str, Built], home: Path
) -> None:
    first, good = release_of(built, "main"), release_of(built, "release-good")
    for env in ("staging", "production"):
        assert deploys.deploy_release(PROJECT, env, settings(), first).outcome == "success"
    for env in ("staging", "production"):
        with LoadGenerator(proxy_url(env)) as load:
            result = deploys.deploy_release(PROJECT, env, settings(), good)
        assert result.outcome == "success", result.reason
        assert load.failed == [], load.failed[:5]
        seen = load.releases()
        assert seen[first.id] > 0 and seen[good.id] > 0, seen
        analyses = [s["analysis"] for s in result.steps if "analysis" in s]
        assert [a["verdict"] for a in analyses] == ["passed", "passed"]
        assert analyses[0]["canary_requests"] > 0
        assert get(proxy_url(env)) == (200, good.id)
        state = EnvironmentState.load(PROJECT, env)
        assert state is not None and state.live is not None and state.live.release == good
        assert state.previous == first and state.standby is None
    outcomes = [(e["environment"], e["outcome"]) for e in history(PROJECT)]
    assert outcomes.count(("production", "success")) == 2


@pytest.mark.parametrize("kind", ["blue-green", "rolling"])
def test_blue_green_and_rolling_switch_without_a_failed_request(
    built: dict[str, Built], home: Path, kind: str
) -> None:
    first, good = release_of(built, "main"), release_of(built, "release-good")
    env_settings = settings(kind, replicas=3)  # type: ignore[arg-type]
    deploys.deploy_release(PROJECT, "staging", env_settings, first)
    with LoadGenerator(proxy_url("staging")) as load:
        result = deploys.deploy_release(PROJECT, "staging", env_settings, good)
    assert result.outcome == "success", result.reason
    assert load.failed == [], load.failed[:5]
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None
    assert state.live.release == good and len(state.live.replicas) == 3
    if kind == "blue-green":
        assert len(result.switch_seconds) == 1
        assert state.standby is not None and state.standby.release == first  # kept for rollback
        # ... so that a rollback by hand is an instant switch back
        back = deploys.rollback_environment(PROJECT, "staging", "test: back")
        assert back.live is not None and back.live.release == first
        assert get(proxy_url("staging")) == (200, first.id)
    else:
        assert len(result.switch_seconds) == 3  # one replica at a time


def test_release_with_errors_is_rolled_back_at_the_first_canary_step(
    built: dict[str, Built], home: Path
) -> None:
    first, bad = release_of(built, "main"), release_of(built, "release-errors")
    deploys.deploy_release(PROJECT, "staging", settings(), first)
    with LoadGenerator(proxy_url("staging")) as load:
        result = deploys.deploy_release(PROJECT, "staging", settings(), bad)
        after = time.monotonic()
        time.sleep(1.0)
    seen = (result.reason, load.failed[:5], load.releases())
    assert result.outcome == "rolled-back", seen
    assert result.reason.startswith("analyse at 10%: canary error rate"), seen
    routed = [s for s in result.steps if s.get("action") == "route"]
    assert len(routed) == 1  # never went past 10 %
    bad_answers = [r for r in load.results if r[2] == bad.id]
    assert load.failed and all(r[2] == bad.id for r in load.failed), seen
    window = [r for r in load.results if r[0] >= min(r[0] for r in bad_answers)]
    assert len(load.failed) <= 0.10 * len(window) + 1, (len(window), seen)
    assert set(load.releases(since=after)) == {first.id}, seen
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None and state.live.release == first
    assert state.pending is None and state.phase == "idle"
    assert get(proxy_url("staging")) == (200, first.id)
    entry = history(PROJECT, "staging")[-1]
    assert entry["outcome"] == "rolled-back" and "error rate" in entry["reason"]


def test_never_healthy_release_never_receives_traffic(built: dict[str, Built], home: Path) -> None:
    first, sick = release_of(built, "main"), release_of(built, "release-unhealthy")
    deploys.deploy_release(PROJECT, "staging", settings(), first)
    with LoadGenerator(proxy_url("staging")) as load:
        result = deploys.deploy_release(PROJECT, "staging", settings(health_timeout=3.0), sick)
    assert result.outcome == "rolled-back" and "healthy" in result.reason, result.reason
    assert load.failed == [] and set(load.releases()) == {first.id}
    access = (home / "deploy" / PROJECT / "staging" / "nginx" / "logs" / "access.log").read_text()
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None
    ports = {f"127.0.0.1:{p}" for p, _ in state.routing}
    assert {line.split()[2] for line in access.splitlines() if "/__cicd" not in line} <= ports


def test_rollback_by_hand_restarts_the_previous_release(
    built: dict[str, Built], home: Path
) -> None:
    first, good = release_of(built, "main"), release_of(built, "release-good")
    # Without traffic a canary has no data, which is a failure: an immediate switch here.
    deploys.deploy_release(PROJECT, "staging", settings("immediate"), first)
    assert deploys.deploy_release(PROJECT, "staging", settings("immediate"), good).outcome == (
        "success"
    )
    cicd = [str(Path(sys.executable).parent / "cicd"), "deploy"]
    with LoadGenerator(proxy_url("staging")) as load:
        done = subprocess.run(
            [*cicd, "rollback", "staging", "--reason", "test: by hand", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["live"] == first.id
    assert load.failed == []
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None
    assert state.live.release == first and state.previous == good
    assert get(proxy_url("staging")) == (200, first.id)
    assert all(process_start_time(pid) is not None for pid in live_processes(state))
    assert history(PROJECT, "staging")[-1]["reason"] == "test: by hand"
    nowhere = subprocess.run([*cicd, "rollback", "nowhere"], capture_output=True, text=True)
    assert nowhere.returncode == 2
    assert "environment 'nowhere': nothing was ever deployed there" in nowhere.stderr


def test_hooks_run_before_and_after_and_a_failing_post_hook_is_partial(
    built: dict[str, Built], home: Path, tmp_path: Path
) -> None:
    first, good = release_of(built, "main"), release_of(built, "release-good")
    marker = tmp_path / "pre-ran"
    refused = settings("immediate", hooks=Hooks(pre=[["/bin/false"]]))
    result = deploys.deploy_release(PROJECT, "staging", refused, first)
    assert result.outcome == "rolled-back" and "pre-deploy hooks" in result.reason
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is None and state.routing == []
    hooked = settings(
        "immediate",
        hooks=Hooks(pre=[["/usr/bin/touch", str(marker)]], post=[["/bin/false"]]),
    )
    result = deploys.deploy_release(PROJECT, "staging", hooked, good)
    assert marker.is_file()
    assert result.outcome == "partial" and "/bin/false" in result.reason
    assert get(proxy_url("staging")) == (200, good.id)  # deployed: a post hook cannot undo it


@pytest.mark.parametrize("proceed", [True, False])
def test_inconclusive_canary_waits_for_a_person(
    built: dict[str, Built], home: Path, proceed: bool
) -> None:
    first, good = release_of(built, "main"), release_of(built, "release-good")
    # two intervals per step: too few to compare latency, hence inconclusive
    conf = settings(steps=(50, 100), step_seconds=1.0).model_copy(
        update={"analysis": Analysis(interval=0.5, pause_when_inconclusive=True)}
    )
    deploys.deploy_release(PROJECT, "staging", conf, first)
    asked: list[str] = []

    def person(step: StepAnalysis) -> bool:
        asked.append(step.reason)
        return proceed

    with LoadGenerator(proxy_url("staging")) as load:
        result = deploys.deploy_release(PROJECT, "staging", conf, good, decide=person)
    assert asked and "too few intervals" in asked[0]
    assert load.failed == []
    if proceed:
        assert result.outcome == "success"
        assert get(proxy_url("staging")) == (200, good.id)
    else:
        assert result.outcome == "rolled-back" and "not approved" in result.reason
        assert get(proxy_url("staging")) == (200, first.id)


def test_an_artifact_from_the_index_is_the_one_deployed(
    built: dict[str, Built], home: Path, tmp_path: Path
) -> None:
    from tests.pypiserver_fixture import running_pypiserver

    wheel = built["release-good"].wheel
    with running_pypiserver(tmp_path / "index") as index:
        shutil.copyfile(wheel, index.packages / wheel.name)
        fetched = artifacts.fetch_release(
            "agentkit-sample==0.3.0", index.simple_url, built["release-good"].commit, "v0.3.0"
        )
    assert fetched.sha256 == release_of(built, "release-good").sha256
    assert deploys.deploy_release(PROJECT, "staging", settings("immediate"), fetched).outcome == (
        "success"
    )
    assert get(proxy_url("staging")) == (200, fetched.id)


def test_a_crashed_replica_is_restarted_by_the_next_run(
    built: dict[str, Built], home: Path
) -> None:
    first = release_of(built, "main")
    deploys.deploy_release(PROJECT, "staging", settings("immediate"), first)
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None
    crashed = state.live.replicas[0]
    os.killpg(crashed.pid, signal.SIGKILL)
    while process_start_time(crashed.pid) is not None:
        time.sleep(0.01)
    assert deploys.deploy_release(PROJECT, "staging", settings("immediate"), first).outcome == (
        "success"
    )
    state = EnvironmentState.load(PROJECT, "staging")
    assert state is not None and state.live is not None and len(state.live.replicas) == 2
    assert crashed not in state.live.replicas
    assert all(process_start_time(r.pid) is not None for r in state.live.replicas)
    assert sorted(p for p, _ in state.routing) == sorted(state.live.ports)
    assert history(PROJECT, "staging")[-2]["action"] == "reconcile"


def test_a_replica_that_exits_at_start_is_retried_on_a_new_port(
    built: dict[str, Built], home: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "tried-once"
    # the first start exits at once, as a replica whose port was taken would
    script = f'test -e {marker} || {{ touch {marker}; exit 1; }}; exec agentkit-serve --port "$1"'
    conf = settings("immediate", replicas=1).model_copy(
        update={"start": ["/bin/sh", "-c", script, "serve", "{port}"]}
    )
    result = deploys.deploy_release(PROJECT, "staging", conf, release_of(built, "main"))
    assert result.outcome == "success", result.reason
    start = next(s for s in result.steps if s.get("action") == "start")
    assert start["attempts"] == 2 and "exited at start" in start["retried"][0]
    assert get(proxy_url("staging"))[0] == 200
