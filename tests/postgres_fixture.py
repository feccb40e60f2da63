"""A real, throwaway PostgreSQL server for the tests that need one.

Debian's ``postgresql`` package (``scripts/test`` and ``.ci/run`` install it
when missing, as root) puts its programs in ``/usr/lib/postgresql/<major>/bin``
and nothing on ``PATH``. The fixture makes a cluster with ``initdb`` in a
temporary directory, starts ``postgres`` on a free loopback port with its unix
socket in that directory, yields the server and stops it by its PID at the end
(SIGINT, PostgreSQL's "fast" shutdown, what ``pg_ctl stop -m fast`` sends;
https://www.postgresql.org/docs/15/server-shutdown.html).

PostgreSQL refuses to run as root ("root" execution of the PostgreSQL server
is not permitted). As root, initdb and the server run as the package's
``postgres`` user: ``subprocess`` switches user in the child itself (``user=``),
so the PID we hold is the postmaster's, with no ``runuser``/``su`` in between.
The cluster directory is made by us and handed to that user (mode 0700, as
initdb requires). As any other user, they run as that user.

Host connections need the password (scram-sha-256), so URLs in tests carry a
secret as real ones do; the unix socket is trusted (the fixture's own
``createdb``-like statements go through psycopg over TCP anyway).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

SERVICE_USER = "postgres"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding initdb and postgres."""
    root = Path("/usr/lib/postgresql")
    majors = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").is_file() and (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return majors[-1] if majors else None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    socket_dir: Path
    log: Path

    def url(self, database: str = "postgres", driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its ``postgresql://`` URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            # An identifier, not a value: quoted by psycopg's sql module.
            from psycopg import sql

            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def prefect_server_environment(database: str, auth: str, home: Path) -> dict[str, str]:
    """A Prefect server on ``database`` (a ``postgresql://`` URL) behind basic
    auth ``auth``, as deployments/docker-compose.yml gives its server: this
    process's environment without its PREFECT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=database.replace(
            "postgresql://", "postgresql+asyncpg://", 1
        ),
        PREFECT_SERVER_API_AUTH_STRING=auth,
        PREFECT_API_AUTH_STRING=auth,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def _run_as(user: str | None) -> dict[str, Any]:
    """The ``subprocess`` options that run a child as ``user`` (None: as we are)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _service_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pytest.fail(
            f"running as root, PostgreSQL needs a non-root user; {SERVICE_USER!r} (made by "
            "Debian's postgresql package) does not exist: run scripts/test"
        )
    return SERVICE_USER


def _wait_until_ready(bin_dir: Path, server: PostgresServer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    argv = [str(bin_dir / "pg_isready"), "-q", "-h", server.host, "-p", str(server.port)]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"postgres exited with {proc.returncode}: {server.log.read_text()[-2000:]}"
            )
        if subprocess.run(argv, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"postgres did not accept connections within {START_TIMEOUT}s")


def stop_postgres(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown by PID (SIGINT), SIGKILL only if it does not end in time."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own for the session, started on first use."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (scripts/test installs Debian's postgresql)")
    with running_postgres(bin_dir) as server:
        yield server


@contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresServer]:
    """A throwaway cluster on a free port, stopped and deleted on exit."""
    user = _service_user()
    # Not under pytest's tmp_path: that is 0700 root's, closed to the postgres user.
    root = Path(tempfile.mkdtemp(prefix="cicd-postgres-"))
    data, sockets = root / "data", root / "sockets"
    for path in (data, sockets):
        path.mkdir(mode=0o700)
    password = secrets.token_urlsafe(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n", encoding="utf-8")
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (root, data, sockets, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    log = root / "postgres.log"
    as_user = _run_as(user)
    superuser = "cicd"
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            "--pgdata",
            str(data),
            "--username",
            superuser,
            "--pwfile",
            str(pwfile),
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        **as_user,
    )
    port = free_port()
    server = PostgresServer("127.0.0.1", port, superuser, password, sockets, log)
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                # Throwaway data: durability costs time and buys nothing here.
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_user,
        )
    try:
        _wait_until_ready(bin_dir, server, proc)
        yield server
    finally:
        stop_postgres(proc)
        shutil.rmtree(root, ignore_errors=True)
