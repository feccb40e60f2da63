"""What ``cicd up`` started, on disk: ``$CICD_HOME/local-server/`` holds one pid
file per process (``server.pid``, ``worker-1.pid``, ...) and ``state.json`` with
the API address and, per process, its kernel start time, so a recorded pid is
only ever treated as ours while it is still the process we started (a pid can
be reused after a reboot or a crash). Nothing is ever looked up by name.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cicd import paths
from cicd.errors import BadInput

STATE_FILE = "state.json"
# Where `cicd up` serves by default (here, not in local_stack: `cicd --help` reads them).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


@dataclass(frozen=True)
class ProcessRecord:
    """One process started by ``up``: enough to find it again, and only it."""

    role: str
    pid: int
    start_time: int | None
    argv: list[str]
    log: str

    @property
    def pid_file(self) -> str:
        return f"{self.role}.pid"


@dataclass
class StackState:
    api_url: str
    host: str
    port: int
    processes: list[ProcessRecord] = field(default_factory=list)

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api") + "/"

    def role(self, role: str) -> ProcessRecord | None:
        return next((p for p in self.processes if p.role == role), None)

    def workers(self) -> list[ProcessRecord]:
        return [p for p in self.processes if p.role.startswith("worker-")]



@dataclass(frozen=True)
class StopResult:
    role: str
    pid: int
    # "stopped", "killed" (needed SIGKILL) or "gone" (not running any more).
    outcome: str


# --- state on disk -------------------------------------------------------------


def state_dir() -> Path:
    path = paths.home() / "local-server"
    path.mkdir(parents=True, exist_ok=True)
    return path


def api_url_for(host: str, port: int) -> str:
    # A server bound to all interfaces is still reached through loopback here.
    reach = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in reach and not reach.startswith("["):
        reach = f"[{reach}]"
    return f"http://{reach}:{port}/api"


def read_state(directory: Path | None = None) -> StackState | None:
    path = (directory or state_dir()) / STATE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return StackState(
            api_url=raw["api_url"],
            host=raw["host"],
            port=int(raw["port"]),
            processes=[ProcessRecord(**p) for p in raw["processes"]],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{path}: unreadable state of the local stack ({exc}); delete it") from None


def write_state(state: StackState, directory: Path | None = None) -> None:
    directory = directory or state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for pid_file in directory.glob("*.pid"):
        if pid_file.name not in {p.pid_file for p in state.processes}:
            pid_file.unlink()
    for record in state.processes:
        # Plain pid files, so `kill "$(cat server.pid)"` works for a human too.
        (directory / record.pid_file).write_text(f"{record.pid}\n", encoding="utf-8")
    data = {**asdict(state), "ui_url": state.ui_url}
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / STATE_FILE)


def clear_state(directory: Path | None = None) -> None:
    directory = directory or state_dir()
    for path in [*directory.glob("*.pid"), directory / STATE_FILE]:
        path.unlink(missing_ok=True)



def configured_api_url() -> str | None:
    """The API to talk to: ``PREFECT_API_URL`` if set, else the stack ``cicd up`` started.

    A recorded server that is no longer running is not offered: pointing a run
    at it would fail on connect instead of using a temporary server. A stack
    registered on someone else's server (``--server-url``) has no server record
    and is trusted as recorded.
    """
    explicit = os.environ.get("PREFECT_API_URL")
    if explicit:
        return explicit
    try:
        state = read_state()
    except BadInput:
        return None
    if state is None:
        return None
    server = state.role("server")
    if server is not None and not is_running(server):
        return None
    return state.api_url


# --- process identity ----------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rfind(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot); None without /proc."""
    fields = _proc_stat(pid)
    # Field 22 of stat; index 19 once pid and comm are removed.
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def is_running(record: ProcessRecord) -> bool:
    """True while the recorded process is alive and is still the one we started."""
    with contextlib.suppress(ChildProcessError, OSError):
        # Reap it if it is our own child (in-process callers, tests): a zombie
        # still answers signal 0.
        os.waitpid(record.pid, os.WNOHANG)
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: the pid was reused
    fields = _proc_stat(record.pid)
    if fields is None:
        return True  # no /proc (not Linux): the signal check is all there is
    if fields[0] == "Z":
        return False
    return record.start_time is None or process_start_time(record.pid) == record.start_time



def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; empty where there is none)."""
    children: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(int(entry.name))
        if fields is not None and len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry.name))
    return children


