"""One Prefect address for every command (cicd/cli/prefect_address.py): the
one given, else the ``cicd up`` stack's, else the local run server's, decided
before Prefect is imported.

The stack and the local server are recorded with a live process of ours (a
``sleep``) standing in for the server: resolution trusts a record while its
process runs, and only ``cicd run`` needs the server to answer.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cicd.cli import prefect_address
from cicd.cli.main import COMMANDS
from deployments.stack_state import ProcessRecord, StackState, process_start_time, write_state
from tests.conftest import BIN, REPO_ROOT, free_port, stop_process_group
from tests.test_cli import cli_env


@pytest.fixture
def stand_in() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc)


def record(proc: subprocess.Popen[bytes], role: str = "server") -> ProcessRecord:
    return ProcessRecord(role, proc.pid, process_start_time(proc.pid), ["sleep"], "")


def write_stack(home: Path, url: str, proc: subprocess.Popen[bytes]) -> None:
    state = StackState(api_url=url, host="127.0.0.1", port=int(url.split(":")[2].split("/")[0]))
    state.processes = [record(proc)]
    write_state(state, home / "local-server")


def write_run_server(home: Path, url: str, proc: subprocess.Popen[bytes]) -> None:
    from dataclasses import asdict

    directory = home / "run-server"
    directory.mkdir(parents=True, exist_ok=True)
    data = {"api_url": url, "processes": {"server": asdict(record(proc))}}
    (directory / "server.json").write_text(json.dumps(data))


def resolve_in(home: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    monkeypatch.setenv("CICD_HOME", str(home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return prefect_address.resolve()


def test_the_address_given_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in: subprocess.Popen[bytes]
) -> None:
    write_stack(tmp_path, "http://127.0.0.1:27001/api", stand_in)
    given = "http://127.0.0.1:27999/api"
    assert resolve_in(tmp_path, monkeypatch, PREFECT_API_URL=given) == prefect_address.ApiAddress(
        given, prefect_address.GIVEN
    )


def test_the_stack_wins_over_the_local_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in: subprocess.Popen[bytes]
) -> None:
    write_stack(tmp_path, "http://127.0.0.1:27001/api", stand_in)
    write_run_server(tmp_path, "http://127.0.0.1:27002/api", stand_in)
    assert resolve_in(tmp_path, monkeypatch) == prefect_address.ApiAddress(
        "http://127.0.0.1:27001/api", prefect_address.STACK
    )


def test_the_local_server_when_no_stack_and_nothing_when_it_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        write_run_server(tmp_path, "http://127.0.0.1:27002/api", proc)
        assert resolve_in(tmp_path, monkeypatch) == prefect_address.ApiAddress(
            "http://127.0.0.1:27002/api", prefect_address.RUN_SERVER
        )
    finally:
        stop_process_group(proc)
    assert resolve_in(tmp_path, monkeypatch) is None


# Every command's handler replaced by a probe printing what Prefect itself uses.
PROBE = """
import sys
from cicd.cli import main

def probe(args, outcome):
    from prefect.settings import get_current_settings
    print("URL", get_current_settings().api.url)
    return 0

main.COMMANDS = {name: (h, add, probe) for name, (h, add, _) in main.COMMANDS.items()}
sys.exit(main.main(sys.argv[1:]))
"""

ARGV = {
    "run": ["run", "cost-report"],
    "baseline": ["baseline", "--repo", "."],
    "up": ["up"],
    "down": ["down"],
    "gc": ["gc", "--dry-run"],
    "deploy": ["deploy", "status", "staging"],
    "webhook": ["webhook", "--secret-env", "S"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_gets_the_stacks_address_before_prefect_is_imported(
    name: str, tmp_path: Path, stand_in: subprocess.Popen[bytes]
) -> None:
    url = "http://127.0.0.1:27003/api"
    write_stack(tmp_path, url, stand_in)
    env = cli_env(CICD_HOME=str(tmp_path), PREFECT_API_URL=None, PREFECT_PROFILE=None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), *ARGV[name]],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"URL {url}" in result.stdout


@pytest.mark.usefixtures("prefect_server")
def test_the_webhook_without_prefect_api_url_sends_to_the_stack(
    tmp_path: Path, stand_in: subprocess.Popen[bytes]
) -> None:
    import os

    # The session's real server plays the stack's: its record names a live process of ours.
    url = os.environ["PREFECT_API_URL"]
    write_stack(tmp_path, url, stand_in)
    env = cli_env(CICD_HOME=str(tmp_path), PREFECT_API_URL=None, PREFECT_PROFILE=None, S="x")
    proc = subprocess.Popen(
        [str(BIN / "cicd"), "webhook", "--secret-env", "S", "--port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"(Prefect API {url})" in line, line + (proc.stderr.read() if proc.poll() else "")
    finally:
        proc.send_signal(signal.SIGINT)
        stop_process_group(proc)  # type: ignore[arg-type]
