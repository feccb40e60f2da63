"""Leftover servers of crashed flows: the pid files and the reaper.

A pid file under ``cicd.paths.services()/run`` records the server, the
process that owns it and the marker on the server's command line. A server
is reaped only when its owner is dead and the PID is still the very server
recorded (same start time, our marker, leader of its own group), so an
unrelated program that reused the PID is never killed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cicd import command, paths
from tasks.services.base import logger
from tasks.services.host import is_alive, leads_own_group, process_cmdline
from tasks.services.neo4j_launch import MARKER_PROPERTY, remove_home

REAP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class PidRecord:
    """The pid file of one server: who it is and who started it."""

    token: str
    name: str
    pid: int
    start_time: int | None
    home: str
    owner_pid: int
    owner_start_time: int | None

    def owner_alive(self) -> bool:
        return is_alive(self.owner_pid, self.owner_start_time)

    def server_is_ours(self) -> bool:
        """The PID is still the server we started (same start time and marker).

        Our servers are started with a new session, so they lead their own
        process group; reaping then kills exactly that group.
        """
        if not is_alive(self.pid, self.start_time):
            return False
        if f"{MARKER_PROPERTY}{self.token}" not in process_cmdline(self.pid):
            return False
        return leads_own_group(self.pid)


def pid_dir() -> Path:
    path = paths.services() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pid_file(token: str) -> Path:
    return pid_dir() / f"{token}.json"


def write_record(record: PidRecord) -> Path:
    target = pid_file(record.token)
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(asdict(record)))
    partial.replace(target)  # atomic: a reaper never reads half a record
    return target


def read_record(path: Path) -> PidRecord:
    data = json.loads(path.read_text())
    return PidRecord(**data)


def reap_orphans(grace: float = REAP_GRACE_SECONDS) -> list[int]:
    """Kill servers whose owning process is gone; return the PIDs killed.

    A pid file is only acted on when its owner (a flow process) is dead; its
    server is only killed when :meth:`PidRecord.server_is_ours`. Stale files
    are removed either way.
    """
    killed: list[int] = []
    for path in sorted(pid_dir().glob("*.json")):
        try:
            record = read_record(path)
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("removing unreadable service pid file %s: %s", path, exc)
            path.unlink(missing_ok=True)
            continue
        if record.owner_alive():
            continue  # a live flow (maybe this one) is using it
        if record.server_is_ours():
            logger.warning("killing orphaned Neo4j server %s (pid %d)", record.token, record.pid)
            # SIGTERM first: Neo4j shuts down cleanly on it; SIGKILL after grace.
            command.terminate_group(record.pid, grace=grace)
            killed.append(record.pid)
        path.unlink(missing_ok=True)
        remove_home(Path(record.home))
    return killed
