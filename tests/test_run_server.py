"""One local server for ``cicd run`` (deployments/run_server.py), reused.

With no ``PREFECT_API_URL`` and no ``cicd up`` stack, the first run starts one
Prefect server under ``$CICD_HOME``, every later run reuses it, ``cicd down``
stops it and it stops itself once idle. Real CLI processes, real servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from deployments import run_server
from deployments.stack_state import ProcessRecord, is_running
from tests.conftest import BIN, stop_process_group
from tests.sample_repos import FAILING_TEST
from tests.test_cli import cli_env, unit_only_branch


def fresh_env(tmp_path: Path, **changes: str) -> dict[str, str]:
    return cli_env(
        PREFECT_API_URL=None,
        PREFECT_PROFILE=None,
        PREFECT_LOCAL_STORAGE_PATH=None,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        CICD_HOME=str(tmp_path / "cicd-home"),
        **changes,
    )


def started_servers(env: dict[str, str]) -> list[str]:
    log = Path(env["CICD_HOME"]) / "run-server" / run_server.STARTED_LOG
    return log.read_text().splitlines() if log.is_file() else []


def recorded(env: dict[str, str]) -> dict[str, ProcessRecord]:
    return run_server.read_records(Path(env["CICD_HOME"]) / "run-server")


def kill_recorded(env: dict[str, str]) -> None:
    """Whatever is still recorded, by pid and process group (each leads its own)."""
    for record in recorded(env).values():
        if is_running(record):
            os.killpg(record.pid, signal.SIGKILL)


def cicd(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cicd"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_two_concurrent_runs_start_one_server_that_later_runs_reuse_and_down_stops(
    sample_repos: dict[str, Path], tmp_path: Path
) -> None:
    repo = sample_repos["agentkit"]
    unit_only_branch(repo, "one-server-green", "main")
    unit_only_branch(repo, "one-server-red", "main", FAILING_TEST)
    env = fresh_env(tmp_path)
    argv = [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--json", "--ref"]
    procs = [
        subprocess.Popen(
            [*argv, ref],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for ref in ("one-server-green", "one-server-red")
    ]
    try:
        results = [(p.communicate(timeout=900), p.returncode) for p in procs]
        reports: list[dict[str, Any]] = []
        for (out, err), _code in results:
            assert out, err[-3000:]
            reports.append(json.loads(out))
        assert [code for _, code in results] == [0, 1], [r.get("error") for r in reports]
        assert [r["state"] for r in reports] == ["passed", "failed"]
        assert {j["name"]: j["state"] for j in reports[1]["jobs"]}["unit"] == "failed"
        # Exactly one server was started for both runs.
        assert len(started_servers(env)) == 1, started_servers(env)
        server = recorded(env)["server"]
        assert is_running(server)

        again = cicd("run", "cost-report", "--json", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert len(started_servers(env)) == 1
        assert recorded(env)["server"].pid == server.pid

        down = cicd("down", env=env, timeout=120)
        assert down.returncode == 0, down.stderr
        assert "run-server" in down.stdout
        assert not is_running(server)
        assert not recorded(env)
    finally:
        for proc in procs:
            stop_process_group(proc)  # type: ignore[arg-type]
        kill_recorded(env)


@pytest.mark.slow
def test_an_idle_local_server_stops_itself(tmp_path: Path) -> None:
    # 0.1 minutes: idle 6 s after the run ended; the watchdog looks every 1.5 s.
    env = fresh_env(tmp_path, CICD_SERVER_IDLE_MINUTES="0.1")
    try:
        result = cicd("run", "cost-report", "--json", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        records = recorded(env)
        assert set(records) == {"server", "watchdog"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(is_running(r) for r in records.values()):
            time.sleep(0.5)
        assert not any(is_running(r) for r in records.values()), records
        assert not recorded(env)
        # The next run starts a new one.
        result = cicd("run", "cost-report", "--json", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(started_servers(env)) == 2
    finally:
        kill_recorded(env)


def test_a_bad_idle_time_is_bad_input(tmp_path: Path) -> None:
    env = fresh_env(tmp_path, CICD_SERVER_IDLE_MINUTES="soon")
    with pytest.raises(Exception, match="CICD_SERVER_IDLE_MINUTES='soon'"):
        run_server.idle_seconds(env)
