"""Facts about this machine that every service backend reads: free ports,
process identity from ``/proc`` and the tail of a log file.

Process identity is a PID plus its start time: a PID the kernel recycled
has a different start time, so a leftover record never names a stranger.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from cicd.errors import InfrastructureError


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports; all sockets stay bound until all are
    chosen so the kernel cannot hand out the same port twice."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class PortInUse(InfrastructureError):
    """A service's fixed port is held by a program that is not one of this run's servers."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now.

    SO_REUSEADDR as the JVM's server sockets have on Linux: a port whose last
    connections linger in TIME_WAIT (a server that just stopped) is free, one
    with a listener (on this address or on 0.0.0.0) is not; see socket(7).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_ports_free(service: str, ports: Iterable[int], host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUse` naming the service and the port when one is taken.

    Called before any JVM or container starts, so a taken port costs nothing
    and leaves nothing behind.
    """
    for port in ports:
        if not port_is_free(port, host):
            raise PortInUse(
                f"service {service!r} needs port {port} (services.{service}.port or "
                f"http_port in cicd.yaml), but {host}:{port} is already in use by another "
                f"program; `ss -ltnp 'sport = :{port}'` shows which, or drop the fixed port "
                "to get a free one"
            )


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; ``None`` if gone or a zombie.

    Field 22 of ``/proc/<pid>/stat``, see proc_pid_stat(5):
    https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(pid: int, start_time: int | None) -> bool:
    """``pid`` runs and, when ``start_time`` is known, is still the same process."""
    current = process_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def leads_own_group(pid: int) -> bool:
    """``pid`` is the leader of its process group (started with a new session)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def tail_lines(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            # A log line is rarely longer than 1 KiB; read just enough.
            handle.seek(max(0, size - lines * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])
