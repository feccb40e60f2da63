"""What the warm runner of ``cicd run`` and its CLI share: settings, the key
of an environment, the record on disk and the messages on its socket.

The design is in ``cicd/cli/warm_runner.py``. Nothing here imports Prefect:
the light CLI imports this module before deciding anything.

On disk, ``$CICD_HOME/warm-runner/`` (mode 0700: whoever can connect to the
socket gets a process running as us) holds ``runner.sock``, ``runner.json``
(the recorded runner: key, pid, kernel start time, PID namespace),
``runner.log`` (what runners and their children write outside a run),
``start.lock`` (held while one is checked, started or stopped) and
``started.log`` (one line per runner ever started here, for tests and people).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cicd import paths
from cicd.env_numbers import positive_number
from cicd.errors import BadInput

MODE_VARIABLE = "CICD_WARM"
MODES = ("on", "off")
IDLE_VARIABLE = "CICD_WARM_IDLE_SECONDS"
# Like the local server's 30 minutes (deployments/run_server.py): a runner is
# ~150 MiB of imported modules, kept while someone is likely to run again.
DEFAULT_IDLE_SECONDS = 1800.0
# A bench/test hook: one JSON line per job start and end (with the event's
# time.time()), appended to this file by the process that runs the flow.
TIMINGS_VARIABLE = "CICD_TIMINGS_FILE"
# Read per run, never at import: a change must not cost a new runner.
NOT_IN_KEY = (MODE_VARIABLE, TIMINGS_VARIABLE)
SOCKET_FILE = "runner.sock"
RECORD_FILE = "runner.json"
LOG_FILE = "runner.log"
STARTED_LOG = "started.log"
# One message of SOCK_SEQPACKET is read whole; a request carries the whole
# environment, far below this.
MAX_MESSAGE = 1 << 20
# The project's own packages: an edit in any of them gives a new key.
SOURCE_PACKAGES = ("cicd", "flows", "tasks", "deployments")


def mode(environ: Mapping[str, str] | None = None) -> str:
    """``on`` (default) or ``off``; anything else is bad input."""
    env = os.environ if environ is None else environ
    raw = env.get(MODE_VARIABLE, "")
    value = raw.strip().lower() or "on"
    if value not in MODES:
        raise BadInput(f"{MODE_VARIABLE}={raw!r}: expected one of {', '.join(MODES)}")
    return value


def idle_seconds(environ: Mapping[str, str] | None = None) -> float:
    return positive_number(IDLE_VARIABLE, DEFAULT_IDLE_SECONDS, environ=environ)


def state_dir() -> Path:
    path = paths.home() / "warm-runner"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


# --- the key of an environment -----------------------------------------------------


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def source_fingerprint(root: Path | None = None) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every ``.py`` file of the project's packages."""
    base = root or project_root()
    found: list[tuple[str, int, int]] = []
    pending = [base / name for name in SOURCE_PACKAGES]
    while pending:
        directory = pending.pop()
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    pending.append(Path(entry.path))
                elif entry.name.endswith(".py"):
                    info = entry.stat()
                    found.append((entry.path, info.st_size, info.st_mtime_ns))
    return sorted(found)


def _profiles_mtime(env: Mapping[str, str]) -> int | None:
    home = env.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    profiles = env.get("PREFECT_PROFILES_PATH") or str(Path(home) / "profiles.toml")
    try:
        return os.stat(profiles).st_mtime_ns
    except OSError:
        return None


def environment_key(environ: Mapping[str, str], api_url: str) -> str:
    """What a runner imported under must equal what this run would import under.

    Prefect reads its settings (PREFECT_*, the profiles file) once, at import
    (https://docs.prefect.io/v3/develop/settings-and-profiles); our modules
    read CICD_* there too at most; an edited checkout must never run stale
    code; another interpreter is another set of packages.
    """
    settings = sorted(
        (name, value)
        for name, value in environ.items()
        if name.startswith(("PREFECT_", "CICD_")) and name not in NOT_IN_KEY
    )
    material = {
        "python": sys.executable,
        "settings": settings,
        "api_url": api_url,
        "profiles_mtime": _profiles_mtime(environ),
        "sources": source_fingerprint(),
    }
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]


# --- the record ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerRecord:
    key: str
    pid: int
    start_time: int | None
    pid_ns: int | None
    log: str


def read_record(directory: Path) -> RunnerRecord | None:
    try:
        return RunnerRecord(**json.loads((directory / RECORD_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_record(directory: Path, record: RunnerRecord) -> None:
    tmp = directory / f".{RECORD_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(record)) + "\n", encoding="utf-8")
    tmp.replace(directory / RECORD_FILE)


# --- the socket ------------------------------------------------------------------------


@contextlib.contextmanager
def socket_address(directory: Path) -> Iterator[str]:
    """A short name for ``directory/runner.sock``: a path of a Unix socket is
    at most 107 bytes (unix(7)) and ``$CICD_HOME`` may be longer; the
    directory is reached through a descriptor of it instead."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_FILE}"
    finally:
        os.close(fd)


def new_socket() -> socket.socket:
    # SEQPACKET: messages keep their boundaries, and the end of the peer is EOF.
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def connect(directory: Path, timeout: float | None = None) -> socket.socket:
    sock = new_socket()
    sock.settimeout(timeout)
    try:
        with socket_address(directory) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def receive(sock: socket.socket) -> dict[str, Any] | None:
    """The next message, or None at the peer's end."""
    data = sock.recv(MAX_MESSAGE)
    if not data:
        return None
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError(f"not a message: {data[:200]!r}")
    return message


def receive_with_fds(sock: socket.socket, max_fds: int) -> tuple[dict[str, Any] | None, list[int]]:
    data, fds, _flags, _address = socket.recv_fds(sock, MAX_MESSAGE, max_fds)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    message = json.loads(data)
    return (message if isinstance(message, dict) else None), fds
