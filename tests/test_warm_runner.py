"""The warm runner of ``cicd run`` (cicd/cli/warm_runner.py): real CLI
processes, a real runner forking real children, the session's Prefect server.

Every runner a test starts is stopped at its end by the pid (and kernel start
time) ``started.log`` recorded; a job's processes are checked by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cicd.cli import warm_state
from cicd.errors import BadInput
from cicd.sample import create_sample_repo
from deployments.stack_state import process_start_time
from tests.conftest import BIN, REPO_ROOT
from tests.sample_repos import FAILING_TEST, HANGING_TEST, commit_on_branch

# Unit tests only, no coverage: the runs here are about the process around the jobs.
CONFIG = """version: 1
environment: {extras: [dev]}
tests:
  unit: {paths: [tests/unit], timeout: %d}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = create_sample_repo(tmp_path_factory.mktemp("warm") / "agentkit")
    with commit_on_branch(repo, "warm-pass", "ci: unit tests only"):
        (repo / "cicd.yaml").write_text(CONFIG % 300)
    with commit_on_branch(repo, "warm-fail", "test: capitals", base="warm-pass"):
        (repo / "tests" / "unit" / "test_capitals.py").write_text(FAILING_TEST)
    with commit_on_branch(repo, "warm-hang", "test: a test that hangs", base="warm-pass"):
        (repo / "tests" / "unit" / "test_hang.py").write_text(HANGING_TEST)
    return repo


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One CICD_HOME for the module: the target's environment is built once.
    return tmp_path_factory.mktemp("warm-home")


def started(home: Path) -> list[tuple[int, int]]:
    """(pid, start time) of every runner ever started in ``home``."""
    log = home / "warm-runner" / warm_state.STARTED_LOG
    if not log.exists():
        return []
    return [(int(pid), int(st)) for pid, st, _key in map(str.split, log.read_text().splitlines())]


def alive(pid: int, start: int | None = None) -> bool:
    now = process_start_time(pid)
    if now is None:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z" and (start is None or now == start)


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture(autouse=True)
def stop_runners(home: Path) -> Iterator[None]:
    yield
    for pid, start in started(home):
        if alive(pid, start):
            os.kill(pid, signal.SIGTERM)
            if wait_gone([pid], 10):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def env(home: Path, prefect_server: str) -> dict[str, str]:
    del prefect_server
    return {**os.environ, "CICD_HOME": str(home), "CICD_WARM": "on"}


def cicd(
    repo: Path, ref: str, env: dict[str, str], *extra: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", ref]
    return subprocess.run(
        [*argv, "--json", *extra], env=env, capture_output=True, text=True, timeout=timeout
    )


def report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout.count("\n") == 1, result.stdout + result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def shape(report: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on where the run ran."""
    return {
        "keys": sorted(report),
        "state": report["state"],
        "commit": report["commit"],
        "jobs": [
            (job["name"], job["state"], job.get("passed"), job.get("failed"), sorted(job))
            for job in report["jobs"]
        ],
    }


# ------------------------------------------------------------ verdicts


@pytest.mark.slow
def test_pass_and_fail_through_the_runner_match_the_in_process_run(
    repo: Path, env: dict[str, str], home: Path
) -> None:
    before = len(started(home))
    passed = cicd(repo, "warm-pass", env)
    assert passed.returncode == 0, passed.stderr[-3000:]
    assert report(passed)["state"] == "passed"
    assert len(started(home)) == before + 1, "the run did not go through a runner"

    failed = cicd(repo, "warm-fail", env)
    in_process = cicd(repo, "warm-fail", {**env, "CICD_WARM": "off"})

    assert failed.returncode == in_process.returncode == 1, failed.stderr[-3000:]
    assert shape(report(failed)) == shape(report(in_process))
    assert report(failed)["state"] == "failed"
    unit = next(job for job in report(failed)["jobs"] if job["name"] == "unit")
    assert [f["name"] for f in unit["failures"]] == [
        f["name"]
        for f in next(j for j in report(in_process)["jobs"] if j["name"] == "unit")["failures"]
    ]
    assert len(started(home)) == before + 1, "the failing run started a runner of its own"


@pytest.mark.slow
def test_a_second_run_reuses_the_runner_and_the_cli_never_imports_prefect(
    repo: Path, env: dict[str, str], home: Path
) -> None:
    before = started(home)
    first = cicd(repo, "warm-pass", env)
    assert first.returncode == 0, first.stderr[-3000:]
    record = warm_state.read_record(home / "warm-runner")
    assert record is not None and alive(record.pid, record.start_time)

    # The CLI itself, its imports shown: the child's run imports nothing new
    # on this stderr's lines, since the runner imported it all before forking.
    argv = [sys.executable, "-X", "importtime", "-m", "cicd.cli.main", "run", "pr-validation"]
    again = subprocess.run(
        [*argv, "--repo", str(repo), "--ref", "warm-fail", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )

    assert again.returncode == 1, again.stderr[-3000:]
    assert report(again)["state"] == "failed"
    imported = [line for line in again.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [line for line in imported if re.search(r"\|\s+prefect(\.|$)", line)]
    assert started(home) == [*before, (record.pid, record.start_time)]
    assert warm_state.read_record(home / "warm-runner") == record


# ------------------------------------------------------------ keys


def test_the_key_follows_prefect_settings_and_the_sources(tmp_path: Path) -> None:
    env = {"PREFECT_HOME": str(tmp_path), "CICD_HOME": str(tmp_path), "HOME": "/x"}
    key = warm_state.environment_key(env, "http://127.0.0.1:1/api")

    assert warm_state.environment_key({**env, "HOME": "/y"}, "http://127.0.0.1:1/api") == key
    assert warm_state.environment_key({**env, "CICD_WARM": "on"}, "http://127.0.0.1:1/api") == key
    assert warm_state.environment_key({**env, "PREFECT_LOGGING_LEVEL": "ERROR"}, "u") != key
    assert warm_state.environment_key(env, "http://127.0.0.1:2/api") != key
    (tmp_path / "profiles.toml").write_text("active = 'x'\n")
    assert warm_state.environment_key(env, "http://127.0.0.1:1/api") != key

    for name in warm_state.SOURCE_PACKAGES:
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "m.py").write_text("X = 1\n")
    before = warm_state.source_fingerprint(tmp_path)
    path = tmp_path / "flows" / "sub" / "m.py"
    path.write_text("X = 2\n")
    os.utime(path, ns=(0, 0))
    assert len(before) == 4 and warm_state.source_fingerprint(tmp_path) != before


@pytest.mark.slow
def test_another_prefect_setting_or_an_edited_source_gets_a_new_runner(
    repo: Path, env: dict[str, str], home: Path
) -> None:
    assert cicd(repo, "warm-pass", env).returncode == 0
    (first, first_start), *_ = started(home)[-1:]

    other = cicd(repo, "warm-fail", {**env, "PREFECT_LOGGING_LEVEL": "ERROR"})
    assert other.returncode == 1, other.stderr[-3000:]
    (second, second_start), *_ = started(home)[-1:]
    assert second != first and not wait_gone([first], 10), "the stale runner was not stopped"

    # A source of the project touched (same text, new mtime), then put back.
    source = REPO_ROOT / "cicd" / "cli" / "warm_state.py"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        edited = cicd(repo, "warm-fail", {**env, "PREFECT_LOGGING_LEVEL": "ERROR"})
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert edited.returncode == 1, edited.stderr[-3000:]
    third, _ = started(home)[-1]
    assert third not in (first, second) and not wait_gone([second], 10)
    assert alive(third)
    del first_start, second_start


# ------------------------------------------------------------ concurrency, lifecycle


@pytest.mark.slow
def test_two_concurrent_runs_start_exactly_one_runner(
    repo: Path, env: dict[str, str], home: Path
) -> None:
    before = len(started(home))
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda ref=ref: results.append(cicd(repo, ref, env)))
        for ref in ("warm-pass", "warm-fail")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.returncode for r in results) == [0, 1], [r.stderr[-2000:] for r in results]
    assert len(started(home)) == before + 1
    assert not [r for r in results if "warm runner unavailable" in r.stderr]


@pytest.mark.slow
def test_cicd_down_stops_the_runner(repo: Path, env: dict[str, str], home: Path) -> None:
    assert cicd(repo, "warm-pass", env).returncode == 0
    record = warm_state.read_record(home / "warm-runner")
    assert record is not None

    down = subprocess.run(
        [str(BIN / "cicd"), "down"], env=env, capture_output=True, text=True, timeout=120
    )

    assert down.returncode == 0, down.stderr
    assert f"warm-runner      pid {record.pid}" in down.stdout
    assert not wait_gone([record.pid], 10)
    assert not (home / "warm-runner" / warm_state.RECORD_FILE).exists()


@pytest.mark.slow
def test_an_idle_runner_stops_itself(repo: Path, env: dict[str, str], home: Path) -> None:
    result = cicd(repo, "warm-fail", {**env, warm_state.IDLE_VARIABLE: "2"})
    assert result.returncode == 1, result.stderr[-3000:]
    pid, start = started(home)[-1]
    assert alive(pid, start)

    assert not wait_gone([pid], 30), "the idle runner is still running"
    assert not (home / "warm-runner" / warm_state.SOCKET_FILE).exists()


# ------------------------------------------------------------ signals


def _hanging_run(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> tuple[subprocess.Popen[str], list[int]]:
    """A run whose test hangs with a child: the CLI and the job's (pytest, sleep) pids."""
    pid_file = tmp_path / "hang.pid"
    argv = [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", "warm-hang"]
    proc = subprocess.Popen(
        [*argv, "--json", "--quiet"],
        # The target writes its host pids outside its workspace: only unboxed
        # (as in tests/test_pr_validation.py).
        env={**env, "HANG_PID_FILE": str(pid_file), "CICD_SANDBOX": "off"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not pid_file.exists() or len(pid_file.read_text().split()) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the hanging test never started"
        time.sleep(0.1)
    return proc, [int(p) for p in pid_file.read_text().split()]


@pytest.mark.slow
def test_sigint_to_the_cli_mid_job_ends_the_run_and_kills_the_jobs_processes(
    repo: Path, env: dict[str, str], tmp_path: Path
) -> None:
    proc, job_pids = _hanging_run(repo, env, tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 130, err[-3000:]
    assert json.loads(out)["state"] == "interrupted"
    assert "cicd: interrupted" in err
    assert not wait_gone(job_pids, 10), "the job's processes survived the interrupt"


@pytest.mark.slow
def test_a_killed_cli_stops_its_run(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    proc, job_pids = _hanging_run(repo, env, tmp_path)
    proc.kill()  # SIGKILL: nothing forwarded, the socket just ends
    proc.communicate(timeout=60)

    assert not wait_gone(job_pids, 20), "the job's processes outlived the CLI"


# ------------------------------------------------------------ settings


def test_cicd_warm_values(tmp_path: Path) -> None:
    assert warm_state.mode({}) == "on"
    assert warm_state.mode({"CICD_WARM": "OFF"}) == "off"
    with pytest.raises(BadInput, match="CICD_WARM='sometimes'"):
        warm_state.mode({"CICD_WARM": "sometimes"})
    with pytest.raises(BadInput, match="CICD_WARM_IDLE_SECONDS='-1'"):
        warm_state.idle_seconds({"CICD_WARM_IDLE_SECONDS": "-1"})


@pytest.mark.slow
def test_cicd_warm_off_runs_in_process_and_a_bad_value_exits_2(
    repo: Path, env: dict[str, str], home: Path
) -> None:
    before = started(home)
    off = cicd(repo, "warm-fail", {**env, "CICD_WARM": "off"})
    assert off.returncode == 1, off.stderr[-3000:]
    assert report(off)["state"] == "failed"
    assert started(home) == before

    bad = cicd(repo, "warm-pass", {**env, "CICD_WARM": "sometimes"})
    assert bad.returncode == 2
    assert "CICD_WARM='sometimes'" in report(bad)["error"]
    assert "cicd: error: CICD_WARM='sometimes'" in bad.stderr
    bad_idle = cicd(repo, "warm-pass", {**env, warm_state.IDLE_VARIABLE: "soon"})
    assert bad_idle.returncode == 2
    assert "CICD_WARM_IDLE_SECONDS='soon'" in report(bad_idle)["error"]
    assert started(home) == before


# ------------------------------------------------------------ requests


@pytest.mark.slow
def test_a_runner_refuses_another_key_and_outlives_a_silent_client(
    home: Path, env: dict[str, str]
) -> None:
    from cicd.cli import warm_client

    directory = home / "warm-runner"
    directory.mkdir(mode=0o700, exist_ok=True)
    process = subprocess.Popen(
        warm_client.runner_argv(directory, "key-1"),
        env=env,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (answer := warm_client.ping(directory)) is None:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert answer == {"key": "key-1", "pid": process.pid}

        with pytest.raises(warm_client.Unavailable, match="another key"):
            warm_client._hand_over(directory, {"key": "key-2", "argv": []})

        silent = warm_state.connect(directory)  # connects, never says anything
        try:
            assert warm_client.ping(directory, timeout=30) == answer
        finally:
            silent.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    assert not (directory / warm_state.SOCKET_FILE).exists()


@pytest.mark.slow
def test_the_live_view_draws_on_the_clis_terminal(repo: Path, env: dict[str, str]) -> None:
    """The child writes to the CLI's terminal (isatty: the live view), and lets
    go of it with its verdict: the terminal's last holder is gone when the CLI is."""
    controller, terminal = os.openpty()
    argv = [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", "warm-fail"]
    proc = subprocess.Popen(argv, env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = bytearray()
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not chunk:
                break
            seen.extend(chunk)
        code = proc.wait(60)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = seen.decode(errors="replace")

    assert code == 1, text[-3000:]
    assert "\x1b[" in text and "✗" in text, text[-3000:]  # rich's live view, the failed job
    assert "pr-validation: failed" in text
