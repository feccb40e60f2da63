"""The local Prefect server of ``cicd run``: started once, reused by every run,
stopped by ``cicd down`` or after it has been idle for a while.

Without ``PREFECT_API_URL`` and without a stack of ``cicd up``, a run used to
start Prefect's temporary server in its own process: +14 s and ~100 MiB per
run, and on a fresh ``PREFECT_HOME`` it often did not start within Prefect's
20 s. Instead the first run starts ``prefect server start`` (SQLite under
``$CICD_HOME/run-server/prefect-home``), detached in a session of its own, and
records it in ``$CICD_HOME/run-server/server.json`` with its kernel start time
(``stack_state.ProcessRecord``), so a recorded pid is ours only while it is
still that process. Starting happens under ``start.lock``: two concurrent runs
start exactly one server, the second one waits and reuses it.

Idle stop: every run holds a *shared* flock on ``in-use.lock`` while it runs
and touches ``last-use`` when it starts and ends. A small watchdog process
(``python -m deployments.run_server watch DIR``, also recorded) stops the
server once no run holds the lock and ``last-use`` is older than
``CICD_SERVER_IDLE_MINUTES`` (default 30), then exits. A flock dies with its
process, so a killed run never keeps the server up for ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from cicd import paths
from cicd.env_numbers import positive_number
from cicd.errors import BadInput
from cicd.locking import file_lock
from deployments.stack_processes import (
    api_healthy,
    server_argv,
    server_env,
    spawn,
    stop_process,
    wait_for_health,
)
from deployments.stack_state import ProcessRecord, StopResult, api_url_for, is_running

HOST = "127.0.0.1"
RECORD_FILE = "server.json"
STARTED_LOG = "started.log"
IDLE_VARIABLE = "CICD_SERVER_IDLE_MINUTES"
# A fixed port for the server (default: a free one, chosen at start).
PORT_VARIABLE = "CICD_SERVER_PORT"
DEFAULT_IDLE_MINUTES = 30.0
START_TIMEOUT = 180.0
# A recorded server that is alive but does not answer /health within this is
# not reused: it is stopped and a new one started.
REUSE_HEALTH_TIMEOUT = 5.0
# A server that answered once but is hung: stopping it must not take long.
STOP_GRACE = 5.0


def state_dir() -> Path:
    path = paths.home() / "run-server"
    path.mkdir(parents=True, exist_ok=True)
    return path


def idle_seconds(environ: dict[str, str] | None = None) -> float:
    minutes = positive_number(
        IDLE_VARIABLE, DEFAULT_IDLE_MINUTES, maximum=10**6, unit="minutes", environ=environ
    )
    return minutes * 60


# --- the record on disk ----------------------------------------------------------


def read_records(directory: Path | None = None) -> dict[str, ProcessRecord]:
    """The recorded ``server`` and ``watchdog``; empty when none or unreadable."""
    path = (directory or state_dir()) / RECORD_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {role: ProcessRecord(**data) for role, data in raw["processes"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_records(directory: Path, records: dict[str, ProcessRecord], api_url: str) -> None:
    data = {"api_url": api_url, "processes": {role: asdict(r) for role, r in records.items()}}
    tmp = directory / (RECORD_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / RECORD_FILE)


def recorded_api_url(directory: Path | None = None) -> str | None:
    """The API of the recorded server while its process runs, else None."""
    directory = directory or state_dir()
    server = read_records(directory).get("server")
    if server is None or not is_running(server):
        return None
    try:
        raw = json.loads((directory / RECORD_FILE).read_text(encoding="utf-8"))
        return str(raw["api_url"])
    except (OSError, ValueError, KeyError):
        return None


def touch_last_use(directory: Path | None = None) -> None:
    (directory or state_dir()).joinpath("last-use").touch()


@contextlib.contextmanager
def in_use(directory: Path | None = None) -> Iterator[None]:
    """Hold a shared lock for the whole run: the watchdog never stops a server in use."""
    directory = directory or state_dir()
    touch_last_use(directory)
    with (directory / "in-use.lock").open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            yield
        finally:
            touch_last_use(directory)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- start, reuse, stop ------------------------------------------------------------


def _port() -> int:
    raw = os.environ.get(PORT_VARIABLE, "")
    if raw:
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise BadInput(f"{PORT_VARIABLE}={raw!r}: expected a port 1-65535")
        return int(raw)
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ensure_server(progress: Callable[[str], None] = lambda _line: None) -> str:
    """The API of the running local server, started first when there is none."""
    directory = state_dir()
    idle_seconds()  # a bad CICD_SERVER_IDLE_MINUTES is bad input before anything starts
    with file_lock(directory / "start.lock"):
        url = recorded_api_url(directory)
        if url is not None and api_healthy(url, timeout=REUSE_HEALTH_TIMEOUT):
            touch_last_use(directory)
            return url
        # Gone, or alive but not answering (hung): stop what is recorded, start anew.
        _stop_recorded(directory)
        port = _port()
        url = api_url_for(HOST, port)
        progress(f"starting the local Prefect server on {url} (stays up for the next runs) ...")
        server = spawn(
            "server",
            server_argv(HOST, port),
            server_env(url, directory / "prefect-home"),
            directory,
        )
        records = {"server": server}
        _write_records(directory, records, url)
        with (directory / STARTED_LOG).open("a", encoding="utf-8") as log:
            # One line per server ever started here: how many runs started one.
            log.write(f"{server.pid} {server.start_time} {url}\n")
        try:
            wait_for_health(url, START_TIMEOUT, lambda: is_running(server), Path(server.log))
        except BaseException:
            stop_process(server, grace=STOP_GRACE)
            (directory / RECORD_FILE).unlink(missing_ok=True)
            raise
        touch_last_use(directory)
        records["watchdog"] = spawn(
            "watchdog", watchdog_argv(directory), dict(os.environ), directory
        )
        _write_records(directory, records, url)
        return url


def watchdog_argv(directory: Path) -> list[str]:
    return [sys.executable, "-m", "deployments.run_server", "watch", str(directory)]


def _stop_recorded(directory: Path) -> list[StopResult]:
    records = read_records(directory)
    results = [
        stop_process(record, grace=STOP_GRACE)
        # The watchdog first: it must not act on a server being stopped.
        for record in sorted(records.values(), key=lambda r: r.role == "server")
        if record.pid != os.getpid()
    ]
    (directory / RECORD_FILE).unlink(missing_ok=True)
    return [r for r in results if r.outcome != "gone" or r.role == "server"]


def stop() -> list[StopResult]:
    """Stop the recorded server and its watchdog (``cicd down``); nothing if none."""
    directory = paths.home() / "run-server"
    if not (directory / RECORD_FILE).is_file():
        return []
    with file_lock(directory / "start.lock"):
        return [StopResult(f"run-{r.role}", r.pid, r.outcome) for r in _stop_recorded(directory)]


# --- the watchdog ------------------------------------------------------------------


def idle_for(directory: Path) -> float:
    try:
        return time.time() - (directory / "last-use").stat().st_mtime
    except OSError:
        return float("inf")


def nobody_uses(directory: Path) -> bool:
    with (directory / "in-use.lock").open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


def watch(directory: Path) -> int:
    """Stop the server once idle; exit when it is gone (stopped by anyone)."""
    idle = idle_seconds()
    tick = max(0.5, min(30.0, idle / 4))
    while True:
        time.sleep(tick)
        server = read_records(directory).get("server")
        if server is None or not is_running(server):
            return 0
        if idle_for(directory) < idle or not nobody_uses(directory):
            continue
        with file_lock(directory / "start.lock"):
            # Checked again under the lock: a run may have just started to use it.
            if idle_for(directory) >= idle and nobody_uses(directory):
                _stop_recorded(directory)
                return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "watch":
        sys.exit(watch(Path(sys.argv[2])))
    sys.exit(f"usage: {sys.argv[0]} watch DIRECTORY")
