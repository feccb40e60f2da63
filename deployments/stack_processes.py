"""Starting and stopping the long-lived processes of the local stack (the
Prefect server, workers) and waiting for them to answer.

Workers stop before the server: a worker whose server is already gone hangs on
SIGTERM until a second signal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cicd import command
from cicd.errors import InfrastructureError
from deployments.stack_state import ProcessRecord, StopResult, is_running, process_start_time

# What the worker's flow runs send to the Prefect UI: job steps, verdicts, states.
WORKER_LOGGING_LEVEL = "INFO"
# The worker's poll interval: the default 10 s adds up to 10 s to every run start.
WORKER_QUERY_SECONDS = "2"
PREFECT_FILE = "prefect.yaml"
STOP_GRACE_SECONDS = 20.0
LOG_TAIL_LINES = 40


def prefect_executable() -> str:
    """The ``prefect`` script of the interpreter running cicd, so the server,
    the deploy and the workers all use the same installation."""
    beside = Path(sys.executable).parent / "prefect"
    if beside.is_file():
        return str(beside)
    found = shutil.which("prefect")
    if found is None:
        raise InfrastructureError("the prefect command is not installed next to cicd")
    return found


def server_argv(host: str, port: int) -> list[str]:
    return [prefect_executable(), "server", "start", "--host", host, "--port", str(port)]


def worker_argv(pool: str, name: str, limit: int | None = None) -> list[str]:
    """``limit``: the most flow runs it runs at once (``stack_workers``); None: no cap."""
    return [
        prefect_executable(),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        name,
        *([] if limit is None else ["--limit", str(limit)]),
    ]


def deploy_argv(prefect_file: str = PREFECT_FILE) -> list[str]:
    return [prefect_executable(), "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file]


def base_env(api_url: str, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every process of the stack gets: the caller's, pointed at our API."""
    env = dict(os.environ if source is None else source)
    env["PREFECT_API_URL"] = api_url
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # A profile selecting another server must not win over the variable above.
    env.pop("PREFECT_PROFILE", None)
    return env


def server_env(api_url: str, home: Path, source: Mapping[str, str] | None = None) -> dict[str, str]:
    env = base_env(api_url, source)
    # The server's own PREFECT_HOME holds its SQLite database: it lives and
    # dies with the stack and never touches the user's ~/.prefect.
    env["PREFECT_HOME"] = str(home)
    return env


def worker_env(
    api_url: str, cicd_home: Path, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Flow runs inherit the worker's environment: pin the state directory and
    the Neo4j jar cache so deployment runs find what ``cicd run`` finds."""
    env = base_env(api_url, source)
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", WORKER_QUERY_SECONDS)
    env["CICD_HOME"] = str(cicd_home)
    # `cicd` sets WARNING for its own terminal (cicd/cli/prefect_settings.py) and
    # `cicd up` would pass it on: flow runs of the worker would then send only
    # errors to the UI. Nobody reads a worker's terminal; its runs log at INFO.
    env["PREFECT_LOGGING_LEVEL"] = WORKER_LOGGING_LEVEL
    return env


def deploy_env(
    api_url: str, project_dir: Path, repo: str, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``prefect deploy`` resolves ``{{ $VAR }}`` placeholders of prefect.yaml from here."""
    env = base_env(api_url, source)
    env["CICD_PROJECT_DIR"] = str(project_dir)
    env["CICD_REPO"] = repo
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_for_health(api_url: str, timeout: float, alive: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_healthy(api_url):
            return
        if not alive():
            raise InfrastructureError(
                f"the Prefect server exited before answering {api_url}/health; "
                f"its log ({log}) ends:\n{log_tail(log)}"
            )
        time.sleep(0.25)
    raise InfrastructureError(
        f"the Prefect server did not answer {api_url}/health within {timeout:.0f}s; "
        f"its log ({log}) ends:\n{log_tail(log)}"
    )


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn binds (SO_REUSEADDR): connections of a killed server left
        # in TIME_WAIT do not make its port "in use" for the next one.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True



def spawn(
    role: str, argv: Sequence[str], env: Mapping[str, str], directory: Path, cwd: Path | None = None
) -> ProcessRecord:
    """Start a long-lived process in its own session with its output in ``<role>.log``."""
    log_path = directory / f"{role}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ProcessRecord(
        role=role,
        pid=proc.pid,
        start_time=process_start_time(proc.pid),
        argv=list(argv),
        log=str(log_path),
    )



def stop_process(record: ProcessRecord, grace: float = STOP_GRACE_SECONDS) -> StopResult:
    """SIGTERM the record's process group, SIGKILL it after ``grace`` seconds.

    Each process was started as the leader of its own session, so its group id
    is its pid and the group holds what it started itself (Prefect's server
    runs its services in child processes). The kill itself is
    ``command.terminate_group``, the one kill path of the project.
    """
    if not is_running(record):
        return StopResult(record.role, record.pid, "gone")
    try:
        leads_group = os.getpgid(record.pid) == record.pid
    except ProcessLookupError:
        return StopResult(record.role, record.pid, "gone")
    if not leads_group:
        # Everything we record was started in a session of its own; a pid that
        # no longer leads its group is not the process we started.
        return StopResult(record.role, record.pid, "left alone (not a group leader)")
    _reap_when_done(record.pid)
    started = time.monotonic()
    command.terminate_group(record.pid, grace=grace)
    # terminate_group sends SIGKILL only once the grace period is over.
    needed_kill = time.monotonic() - started >= grace
    return StopResult(record.role, record.pid, "killed" if needed_kill else "stopped")


def _reap_when_done(pid: int) -> None:
    """When ``pid`` is our own child (in-process callers, tests), wait for it in
    the background: an unreaped zombie leader keeps its group alive for
    ``killpg(pgid, 0)``, so the group would look alive for the whole grace period."""

    def reap() -> None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)

    threading.Thread(target=reap, name=f"reap-{pid}", daemon=True).start()


