"""The Prefect server going away (issue "Survive every fault", item 2).

- SIGKILL of the local server mid-run, then a restart: the run's verdicts are
  right and a passing run is not Failed;
- SIGKILL without a restart: the run ends within its bound with
  ``control plane unreachable: <address>`` and the local report, exit code
  from the jobs' verdicts (a failing commit: 1);
- ``cicd up`` after its server crashed while its worker lives: no second
  worker, the first still tracked and stopped by ``cicd down``;
- ``cicd down`` against a SIGSTOPped server: bounded, the server gone.

Every process is found by the pid the stack recorded, and stopped by it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments.stack_state import ProcessRecord, StackState, is_running, read_state
from tests.conftest import BIN, free_port, stop_process_group, wait_for_http
from tests.sample_repos import commit_on_branch
from tests.test_run_server import cicd, fresh_env, kill_recorded, recorded

SLOW_GREEN = """import time


def test_takes_a_while() -> None:
    time.sleep(20)
"""

SLOW_RED = """import time


def test_takes_a_while_then_fails() -> None:
    time.sleep(5)
    assert False, "red on purpose"
"""


def slow_branch(repo: Path, branch: str, test: str) -> None:
    with commit_on_branch(repo, branch, f"ci: {branch}", base="main"):
        config = repo / "cicd.yaml"
        config.write_text(
            config.read_text().replace("suites: [unit, framework]", "suites: [unit]", 1)
        )
        (repo / "tests" / "unit" / "test_slow.py").write_text(test)


def start_run(env: dict[str, str], repo: Path, ref: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", ref, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_running_jobs(env: dict[str, str], timeout: float = 600) -> Path:
    """The run directory, once its unit job's command has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for journal in Path(env["CICD_HOME"], "runs").glob("pr-validation-*/jobs.jsonl"):
            if (journal.parent / "logs" / "unit.log").exists():
                return journal.parent
        time.sleep(0.5)
    raise TimeoutError("the run's unit job did not start")


def sigkill_and_wait(record: ProcessRecord) -> None:
    os.killpg(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while is_running(record) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(record)


@contextlib.contextmanager
def stopping(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        stop_process_group(proc)  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_server_killed_mid_run_and_restarted_keeps_the_verdicts(
    sample_repos: dict[str, Path], tmp_path: Path
) -> None:
    repo = sample_repos["agentkit"]
    slow_branch(repo, "fault-slow-green", SLOW_GREEN)
    # A fixed port: the restarted server answers where the run looks for it.
    env = fresh_env(tmp_path, CICD_SERVER_PORT=str(free_port()), CICD_SERVER_WAIT_SECONDS="300")
    restarted: subprocess.Popen[bytes] | None = None
    try:
        with stopping(start_run(env, repo, "fault-slow-green")) as run:
            wait_for_running_jobs(env)
            server = recorded(env)["server"]
            sigkill_and_wait(server)
            home = Path(env["CICD_HOME"], "run-server", "prefect-home")
            url = f"http://127.0.0.1:{env['CICD_SERVER_PORT']}/api"
            server_env = {**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": url}
            restarted = subprocess.Popen(
                server.argv,
                env=server_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            wait_for_http(f"{url}/health", 180, restarted)
            out, err = run.communicate(timeout=600)

        assert out, err[-3000:]
        report: dict[str, Any] = json.loads(out)
        assert run.returncode == 0, (report, err[-3000:])
        assert report["state"] == "passed"
        states = {job["name"]: job["state"] for job in report["jobs"]}
        assert states.get("unit") == "passed", states
        assert all(state == "passed" for state in states.values()), states
    finally:
        if restarted is not None:
            stop_process_group(restarted)
        kill_recorded(env)


@pytest.mark.slow
def test_a_server_that_never_comes_back_ends_the_run_with_a_local_report(
    sample_repos: dict[str, Path], tmp_path: Path
) -> None:
    repo = sample_repos["agentkit"]
    slow_branch(repo, "fault-slow-red", SLOW_RED)
    env = fresh_env(tmp_path, CICD_SERVER_WAIT_SECONDS="20")
    try:
        with stopping(start_run(env, repo, "fault-slow-red")) as run:
            directory = wait_for_running_jobs(env)
            sigkill_and_wait(recorded(env)["server"])
            killed_at = time.monotonic()
            out, err = run.communicate(timeout=300)
            took = time.monotonic() - killed_at

        assert took < 20 + 60, took  # the bound, plus the tick and the exit
        url = json.loads(Path(env["CICD_HOME"], "run-server", "server.json").read_text())["api_url"]
        assert f"cicd: control plane unreachable: {url}" in err, err[-3000:]
        report: dict[str, Any] = json.loads(out)
        # Every job has its verdict: the failing commit exits 1, not 3 and not 0.
        assert run.returncode == 1, (report, err[-3000:])
        assert report["state"] == "failed"
        states = {job["name"]: job["state"] for job in report["jobs"]}
        assert states.get("unit") == "failed", states
        assert "unknown" not in states.values()
        assert report["control_plane"] == {"reachable": False, "address": url}
        assert json.loads((directory / "report.json").read_text())["jobs"] == report["jobs"]
    finally:
        kill_recorded(env)


def stack(env: dict[str, str]) -> StackState:
    state = read_state(Path(env["CICD_HOME"]) / "local-server")
    assert state is not None
    return state


def our_workers(env: dict[str, str]) -> list[int]:
    """Every live `prefect worker` whose environment has this test's CICD_HOME."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and f"CICD_HOME={env['CICD_HOME']}".encode() in environ:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def stack_stopped_in_the_end(env: dict[str, str]) -> Iterator[None]:
    try:
        yield
    finally:
        state = read_state(Path(env["CICD_HOME"]) / "local-server")
        for record in state.processes if state else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if is_running(record):
                    os.killpg(record.pid, signal.SIGCONT)
                    os.killpg(record.pid, signal.SIGKILL)


@pytest.mark.slow
def test_up_after_a_server_crash_keeps_the_live_worker_and_down_stops_it(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    port = str(free_port())
    with stack_stopped_in_the_end(env):
        first = cicd("up", "--port", port, "--workers", "1", "--no-deploy", env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        before = stack(env)
        worker = before.role("worker-1")
        server = before.role("server")
        assert worker is not None and server is not None
        sigkill_and_wait(server)
        assert is_running(worker)

        again = cicd("up", "--port", port, "--workers", "1", "--no-deploy", env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "already running: worker-1" in again.stdout, again.stdout
        after = stack(env)
        assert [w.pid for w in after.workers()] == [worker.pid]
        assert our_workers(env) == [worker.pid]  # no second worker anywhere

        down = cicd("down", env=env, timeout=120)
        assert down.returncode == 0, down.stderr
        assert not is_running(worker)
        new_server = after.role("server")
        assert new_server is not None and not is_running(new_server)
        assert our_workers(env) == []


@pytest.mark.slow
def test_down_against_a_stopped_server_is_bounded(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    with stack_stopped_in_the_end(env):
        up = cicd("up", "--port", str(free_port()), "--workers", "1", "--no-deploy", env=env)
        assert up.returncode == 0, up.stderr[-3000:]
        state = stack(env)
        server = state.role("server")
        assert server is not None
        os.killpg(server.pid, signal.SIGSTOP)  # the server and its children hang

        started = time.monotonic()
        down = cicd("down", env=env, timeout=120)
        took = time.monotonic() - started

        assert down.returncode == 0, down.stderr
        assert took < 30, (took, down.stdout)
        assert not is_running(server)
        assert not any(is_running(record) for record in state.processes)


# ------------------------------------------------------------ the local report, without a server


def journal_run(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    from cicd import runs

    directory = tmp_path / "runs" / f"pr-validation-{len(runs.opened_directories())}-{time.time()}"
    directory.mkdir(parents=True)
    (directory / runs.JOURNAL).write_text("".join(json.dumps(e) + "\n" for e in entries))
    runs._opened.append(directory)
    return directory


@pytest.mark.parametrize(
    ("entries", "state", "code"),
    [
        ([{"name": "unit", "state": "planned"}, {"name": "unit", "state": "passed"}], "passed", 0),
        (
            [{"name": "unit", "state": "failed"}, {"name": "quality", "state": "passed"}],
            "failed",
            1,
        ),
        (
            [{"name": "unit", "state": "passed"}, {"name": "quality", "state": "planned"}],
            "unknown",
            3,
        ),
    ],
)
def test_the_local_report_takes_the_journals_verdicts(
    tmp_path: Path, entries: list[dict[str, Any]], state: str, code: int
) -> None:
    from cicd.cli import run_watch

    directory = journal_run(tmp_path, *entries)
    report = run_watch.local_report("pr-validation", "repo", "HEAD", "http://127.0.0.1:1/api")

    assert report["state"] == state
    assert run_watch.exit_code(report) == code
    assert json.loads((directory / "report.json").read_text())["state"] == state


def test_a_job_prefect_lost_to_the_outage_keeps_its_verdict(tmp_path: Path) -> None:
    from cicd.cli import run_watch

    journal_run(tmp_path, {"name": "unit", "state": "passed", "duration": 1.0})
    lost = {"name": "unit", "state": "errored", "duration": 0.0, "reason": "ConnectError"}
    report = run_watch.reconcile({"flow": "pr-validation", "state": "failed", "jobs": [lost]})

    assert report["state"] == "passed"
    assert report["jobs"] == [{"name": "unit", "state": "passed", "duration": 1.0}]
