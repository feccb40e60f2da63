"""What every service backend shares: the endpoint a test job connects to,
the protocols a backend implements, backend selection and the health check.

Like pre-commit's ``languages/`` folder: ``neo4j_process`` (a JVM on this
machine) and ``neo4j_docker`` (the ``neo4j:5.26`` image) implement the same
two protocols, and callers only ever see :class:`ServiceEndpoint`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cicd.config import render_template
from cicd.errors import ConfigError, InfrastructureError

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

# Neo4j's only initial admin user; the neo4j image rejects any other name in
# NEO4J_AUTH, and `set-initial-password` only sets this one.
NEO4J_ADMIN_USER = "neo4j"
# The database a test suite uses; probing it (not just the socket) proves the
# default database is online, which happens after Bolt starts listening.
HEALTH_DATABASE = "neo4j"
POLL_SECONDS = 0.3
# Per-probe connect timeout; a healthy local server answers in milliseconds.
PROBE_TIMEOUT_SECONDS = 3.0
LOG_TAIL_LINES = 50

logger = logging.getLogger("cicd.services")


@dataclass(frozen=True)
class ServiceEndpoint:
    """Where a started service listens and how to log in."""

    name: str
    host: str
    port: int
    http_port: int | None
    user: str
    password: str

    @property
    def uri(self) -> str:
        return f"bolt://{self.host}:{self.port}"

    def placeholders(self) -> dict[str, str]:
        """Values for ``cicd.config.render_template`` (the ``export`` templates)."""
        return {
            "uri": self.uri,
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": str(self.port),
            "http_port": "" if self.http_port is None else str(self.http_port),
        }

    def env(self, export: dict[str, str]) -> dict[str, str]:
        """The variables a test job gets: each ``export`` template filled in."""
        values = self.placeholders()
        return {name: render_template(template, values) for name, template in export.items()}


class RunningService(Protocol):
    """A started, healthy service. ``stop`` is idempotent."""

    @property
    def endpoint(self) -> ServiceEndpoint: ...

    @property
    def ident(self) -> str:
        """The server's PID (process backend) or container id (docker backend)."""
        ...

    def stop(self) -> None: ...

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str: ...


class ServiceBackend(Protocol):
    @property
    def name(self) -> str: ...

    def available(self) -> bool: ...

    def start(self, name: str, config: ServiceConfig, run_dir: Path) -> RunningService:
        """Start the service and return once it is healthy.

        Raises ``InfrastructureError`` (with the server's log tail) when the
        server exits or the health deadline passes; nothing is left running then.
        """
        ...


def check_user(name: str, config: ServiceConfig) -> None:
    """Both backends can only set the password of Neo4j's built-in admin user."""
    if config.user != NEO4J_ADMIN_USER:
        raise ConfigError(
            "cicd.yaml",
            [
                f"field 'services.{name}.user': Neo4j 5 can only set the initial password of "
                f"user {NEO4J_ADMIN_USER!r} (like NEO4J_AUTH=neo4j/<password>), got {config.user!r}"
            ],
        )


def select_backend(config: ServiceConfig) -> ServiceBackend:
    """The backend ``config.backend`` asks for; ``auto`` prefers a Docker engine that answers."""
    # Imported here: each backend module imports this one.
    from tasks.services.neo4j_docker import Neo4jDockerBackend
    from tasks.services.neo4j_process import Neo4jProcessBackend

    if config.backend == "process":
        return Neo4jProcessBackend()
    docker = Neo4jDockerBackend()
    if config.backend == "docker":
        if not docker.available():
            raise InfrastructureError(
                "service backend 'docker' was requested but no Docker engine answers "
                f"(DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}); "
                "use backend: process or auto"
            )
        return docker
    return docker if docker.available() else Neo4jProcessBackend()


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


class CredentialsRejected(InfrastructureError):
    """The server answered but refused the configured user/password."""


def probe_bolt(endpoint: ServiceEndpoint, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Run ``RETURN 1`` on database ``neo4j``; raises if the server is not ready.

    A plain session, not ``execute_query``: the latter retries with growing
    back-off (seen adding ~9 s to the measured start), which hides readiness.
    """
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError

    try:
        with GraphDatabase.driver(
            endpoint.uri,
            auth=(endpoint.user, endpoint.password),
            connection_timeout=timeout,
            connection_acquisition_timeout=timeout,
        ) as driver, driver.session(database=HEALTH_DATABASE) as session:
            record = session.run("RETURN 1 AS ok").single(strict=True)
    except AuthError as exc:
        raise CredentialsRejected(
            f"{endpoint.name}: the server at {endpoint.uri} rejected user {endpoint.user!r}: {exc}"
        ) from exc
    if record["ok"] != 1:
        raise InfrastructureError(f"{endpoint.name}: RETURN 1 answered {record['ok']!r}")


def wait_until_healthy(
    endpoint: ServiceEndpoint,
    *,
    timeout: float,
    exited: Callable[[], str | None],
    log_tail: Callable[[], str],
    poll: float = POLL_SECONDS,
) -> float:
    """Poll :func:`probe_bolt` until it succeeds; return the seconds waited.

    ``exited`` returns why the server is gone (or ``None`` while it runs), so a
    crashed server fails in one poll instead of at the deadline.
    """
    start = time.monotonic()
    deadline = start + timeout
    last_error: BaseException | None = None
    while True:
        gone = exited()
        if gone is not None:
            raise InfrastructureError(
                f"{endpoint.name}: the server stopped before it was healthy ({gone}).\n"
                f"--- server log (last lines) ---\n{log_tail()}"
            )
        try:
            probe_bolt(endpoint)
            return time.monotonic() - start
        except CredentialsRejected as exc:
            raise InfrastructureError(
                f"{exc}\n--- server log (last lines) ---\n{log_tail()}"
            ) from exc
        except Exception as exc:  # ServiceUnavailable, DatabaseUnavailable, OSError, ...
            last_error = exc
        if time.monotonic() >= deadline:
            raise InfrastructureError(
                f"{endpoint.name}: not healthy after {timeout:.0f}s "
                f"(last probe: {type(last_error).__name__}: {last_error}).\n"
                f"--- server log (last lines) ---\n{log_tail()}"
            )
        time.sleep(poll)


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
