"""A ``cicd run`` SIGKILLed mid-job, for the fault test and the benchmark.

What the killed run owned is read from its claims (``cicd.ownership``) before
the kill: PIDs, process groups, listening ports and paths, never found by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cicd import ownership

BIN = Path(sys.executable).parent
FRAMEWORK_WITH_NEO4J = """import time
from typing import Any

import pytest

pytestmark = pytest.mark.neo4j


def test_uses_the_database_for_a_while(neo4j_driver: Any) -> None:
    neo4j_driver.execute_query("CREATE (:Busy)", database_="neo4j")
    time.sleep(300)
"""


def listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` listens on: its socket inodes matched in /proc/net/tcp{,6}."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def port_holders(port: int) -> set[int]:
    """PIDs that hold a socket listening on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders = set()
    if not inodes:
        return holders
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = list(Path(f"/proc/{name}/fd").iterdir())
            if any(os.readlink(fd) in inodes for fd in fds):
                holders.add(int(name))
        except OSError:
            continue
    return holders


@dataclass
class Owned:
    """What one owner's claims name, as seen just before it was killed."""

    owner: int
    kinds: set[str] = field(default_factory=set)
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> start time
    ports: set[int] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    notes: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, owner: int) -> Owned:
        owned = cls(owner)
        for _, record in ownership.records():
            if record is None or record.owner_pid != owner:
                continue
            owned.kinds.add(record.kind)
            for ref in record.processes:
                owned.processes[ref.pid] = ref.start_time
                owned.ports |= listening_ports(ref.pid)
            owned.paths |= {p for p in record.paths if "*" not in p}
            owned.notes |= set(record.notes)
        return owned

    def live_processes(self) -> list[int]:
        """Recorded processes (and members of their groups) still running."""
        live = [p for p, start in self.processes.items() if _same(p, start)]
        for name in os.listdir("/proc"):
            pid = int(name) if name.isdigit() else 0
            in_a_group = pid and pid not in live and _pgid(pid) in self.processes
            if in_a_group and ownership.start_time(pid) is not None:
                live.append(pid)
        return live

    def leftovers(self) -> dict[str, object]:
        live = self.live_processes()
        return {
            "processes": live,
            # Held by a process of the run; a free port another program took since is not.
            "ports": sorted(p for p in self.ports if port_holders(p) & set(live)),
            "paths": sorted(p for p in self.paths if Path(p).exists()),
            "records": [r.token for _, r in ownership.records() if r and r.owner_pid == self.owner],
        }

    def kill_leftovers(self) -> None:
        """Only if a test failed: SIGKILL recorded groups that are still the same."""
        for pid, start in self.processes.items():
            if _same(pid, start):
                os.killpg(pid, signal.SIGKILL)


def _same(pid: int, start: int | None) -> bool:
    return start is not None and ownership.start_time(pid) == start


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def cli_env(prefect_home: Path) -> dict[str, str]:
    """The embedded default: no PREFECT_API_URL, so `cicd run` uses (or starts) the local server."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)
    return env


def start_run(repo: Path, ref: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", ref],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def wait_for_neo4j(proc: subprocess.Popen[bytes], timeout: float) -> Owned:
    """Until the run's Neo4j server listens (the framework job runs its tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        owned = Owned.of(proc.pid)
        if "neo4j" in owned.kinds and len(owned.ports) >= 2:  # Bolt and HTTP
            return owned
        time.sleep(0.25)
    raise AssertionError(f"no Neo4j of run {proc.pid} listened within {timeout:.0f}s")
